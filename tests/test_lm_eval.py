"""lm-eval integration: the multi_exit model scores the configured output at every position.

A tiny random GPT-2 (real GPT-2 tokenizer, built offline) keeps most tests fast; one slow test
checks parity with lm-eval's stock ``hf`` model on SmolLM2-135M.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multiexit import AutoMultiExitModel, MultiExitConfiguration, calculate_contrasted_logits
from multiexit.model.config import VocabularyProjectionMode
from multiexit.stages.lm_eval import (
    LOCAL_TASK_KINDS,
    MultiExitLM,
    build_lambada_examples,
    default_sources,
    parse_task_spec,
    run_lm_eval,
    write_jsonl,
    write_task_yaml,
)

from lm_eval.api.instance import Instance

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = "Firefighters said the blaze near Goulburn had forced the closure of the"
CONTINUATION = " Hume Highway for most of the afternoon"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, gpt2_tokenizer):
    """A 4-layer GPT-2 (hidden 32, GPT-2 vocabulary) with trained-head exits at layers 2 and 4."""
    from transformers import GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=256, vocab_size=50257,
                        bos_token_id=50256, eos_token_id=50256, initializer_range=0.2)
    model = AutoMultiExitModel.from_config(config, MultiExitConfiguration(lm_head_layer_indices=[2, 4]))
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lambada_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lambada") / "lambada_local.jsonl"
    return write_jsonl(build_lambada_examples(num_examples=16), path)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """The first articles of gensim's lee.cor cut to 50 words, plus one Latin-1 line (not UTF-8)."""
    lines = default_sources()[1].read_bytes().splitlines()[:5]
    body = b"\n".join(b" ".join(line.split(b" ")[:50]) for line in lines)
    path = tmp_path_factory.mktemp("text") / "news.txt"
    path.write_bytes(body + b"\n\nThe bridge will cost \xa35 million, the council said.\n")
    return path


def make_lm(path, **settings) -> MultiExitLM:
    return MultiExitLM(pretrained=str(path), device="cpu", batch_size=settings.pop("batch_size", 1),
                       dtype="float32", **settings)


# ---------------------------------------------------------------- hand computation from the library
def hand_logprobs(model, ids: torch.Tensor, setting: dict) -> torch.Tensor:
    """Log-probs [seq, vocab] of the configured output, built from the library's pieces."""
    mode = VocabularyProjectionMode.parse(setting.get("vocab_projection_mode", "LAYER_SPECIFIC_PROJECTION"))
    top = model.num_exit_layers

    with torch.no_grad(), model.capture_layers(range(1, top)) as captured:
        last = model.base_model(input_ids=ids[None]).last_hidden_state

    def exit_logits(layer):
        if layer == "original":
            return model.original_head_logits(last)
        if layer == top:
            return model.project_exit(layer, last, mode)
        return model.project_exit(layer, model.final_transform(captured[layer]), mode)

    with torch.no_grad():
        if "contrast_layer_indices" in setting:
            upper, lower = setting["contrast_layer_indices"]
            logits = calculate_contrasted_logits(exit_logits(upper), exit_logits(lower),
                                                 alpha=setting.get("contrast_alpha", 0.1),
                                                 minimum_candidates=setting.get("contrast_minimum_candidates", 1))
        else:
            logits = exit_logits(setting["output_layer_index"])
    return torch.log_softmax(logits.float(), dim=-1)[0]


def per_token_from_lm_eval(lm, context: str, continuation_ids: list[int]) -> list[float]:
    """Per-token log-probs through lm-eval's loglikelihood: differences of growing-prefix sums."""
    prefixes = [lm.tok_decode(continuation_ids[: k + 1]) for k in range(len(continuation_ids))]
    requests = [Instance("loglikelihood", {}, (context, prefix), i) for i, prefix in enumerate(prefixes)]
    sums = [total for total, _greedy in lm.loglikelihood(requests, disable_tqdm=True)]
    return [sums[0]] + [b - a for a, b in zip(sums, sums[1:])]


SETTINGS = {
    "trained exit 2": dict(output_layer_index=2),
    "logit lens exit 1": dict(vocab_projection_mode="SHARED_PROJECTION_DIRECT", output_layer_index=1),
    "ACD original;2": dict(contrast_layer_indices=("original", 2), contrast_alpha=0.1),
    # every token in the head set, so each continuation token's ACD log-prob differs from the expert's
    "ACD 4;1 logit lens, all tokens contrasted": dict(
        vocab_projection_mode="SHARED_PROJECTION_DIRECT", contrast_layer_indices=(4, 1), contrast_alpha=0.2,
        contrast_minimum_candidates=50257),
}


def as_model_args(setting: dict) -> dict:
    return {k: (";".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in setting.items()}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_multi_token_continuation_matches_hand_computation(tiny_dir, name):
    setting = SETTINGS[name]
    lm = make_lm(tiny_dir, use_original_head="False", **as_model_args(setting))
    context_ids = lm.tok_encode(CONTEXT)
    continuation_ids = lm.tok_encode(CONTINUATION)
    assert len(continuation_ids) >= 5
    assert lm.tok_encode(CONTEXT + CONTINUATION) == context_ids + continuation_ids

    got = per_token_from_lm_eval(lm, CONTEXT, continuation_ids)
    ids = torch.tensor(context_ids + continuation_ids)
    logprobs = hand_logprobs(lm.model, ids, setting)
    positions = range(len(context_ids) - 1, len(ids) - 1)
    expected = [logprobs[p, ids[p + 1]].item() for p in positions]
    assert got == pytest.approx(expected, abs=2e-4)

    # the configured output differs from the original head at the earlier positions, so a wrapper
    # that applied it only at the last position would fail the check above (for the realistic ACD
    # setting the targets may lie outside the head set, where ACD keeps the expert's probability,
    # so there the whole distributions are compared)
    with torch.no_grad():
        original = torch.log_softmax(lm.model.original_head_logits(
            lm.model.base_model(input_ids=ids[None]).last_hidden_state).float(), dim=-1)[0]
    earlier = list(positions)[:-1]
    if name == "ACD original;2":
        assert max((original[p] - logprobs[p]).abs().max().item() for p in earlier) > 1e-2
    else:
        assert max(abs(original[p, ids[p + 1]].item() - logprobs[p, ids[p + 1]].item()) for p in earlier) > 1e-2


def test_rolling_loglikelihood_matches_hand_computation(tiny_dir):
    setting = SETTINGS["ACD original;2"]
    lm = make_lm(tiny_dir, use_original_head=False, **as_model_args(setting))
    text = CONTEXT + CONTINUATION
    [got] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ids = torch.tensor([lm.prefix_token_id] + lm.tok_encode(text))
    logprobs = hand_logprobs(lm.model, ids, setting)
    expected = sum(logprobs[p, ids[p + 1]].item() for p in range(len(ids) - 1))
    assert got == pytest.approx(expected, abs=1e-3)


def test_generate_until_follows_the_configured_exit(tiny_dir):
    setting = SETTINGS["logit lens exit 1"]
    lm = make_lm(tiny_dir, use_original_head=False, **as_model_args(setting))
    request = Instance("generate_until", {}, (CONTEXT, {"until": ["<never>"], "max_gen_toks": 6, "do_sample": False}), 0)
    [got] = lm.generate_until([request], disable_tqdm=True)
    ids = lm.tok_encode(CONTEXT)
    new = []
    for _ in range(6):  # greedy by hand: full forward, argmax of the exit's log-probs at the last position
        token = int(hand_logprobs(lm.model, torch.tensor(ids + new), setting)[-1].argmax())
        new.append(token)
    assert got == lm.tok_decode(new)


# ---------------------------------------------------------------- whole runs through lm-eval
def _metrics(results: dict) -> dict:
    return {task: {k: v for k, v in values.items() if "," in k and "stderr" not in k}
            for task, values in results["results"].items()}


def test_original_head_equals_stock_hf_model(tiny_dir, lambada_file, text_file, tmp_path):
    tasks = [f"lambada_local:{lambada_file}", f"text_perplexity_local:{text_file}"]
    kwargs = dict(batch_size=4, limit=8, bootstrap_iters=0)
    ours = run_lm_eval(f"pretrained={tiny_dir},use_original_head=True", tasks, tmp_path / "ours.json", **kwargs)
    stock = run_lm_eval(f"pretrained={tiny_dir}", tasks, tmp_path / "stock.json", model="hf", **kwargs)
    assert _metrics(ours) == _metrics(stock)
    assert set(_metrics(ours)["lambada_local"]) == {"acc,none", "perplexity,none"}
    assert set(_metrics(ours)["text_perplexity_local"]) == {"word_perplexity,none", "byte_perplexity,none",
                                                            "bits_per_byte,none"}
    written = json.loads((tmp_path / "ours.json").read_text())
    assert _metrics(written) == _metrics(ours)
    assert written["config"]["model"] == "multi_exit"
    assert written["config"]["multi_exit_config"]["use_original_head"] is True


def test_batch_size_does_not_change_results(tiny_dir, lambada_file, text_file, tmp_path):
    tasks = [f"lambada_local:{lambada_file}", f"text_perplexity_local:{text_file}"]  
    lm = make_lm(tiny_dir, use_original_head=False, contrast_layer_indices="original;2")
    one = run_lm_eval({}, tasks, None, model=lm, limit=8, bootstrap_iters=0)
    assert lm.batch_size == 1
    lm.batch_size_per_gpu = 8
    eight = run_lm_eval({}, tasks, tmp_path / "eight.json", model=lm, limit=8, bootstrap_iters=0,
                        log_samples=True)
    assert lm.batch_size == 8
    # identical up to float rounding: padded batches change matmul shapes, and lm-eval's stock
    # ``hf`` model shows the same ~1e-7 relative jitter between batch sizes
    for task, metrics in _metrics(one).items():
        for metric, value in metrics.items():
            if metric.startswith("acc"):
                assert eight["results"][task][metric] == value, (task, metric)
            else:
                assert eight["results"][task][metric] == pytest.approx(value, rel=1e-5), (task, metric)
    samples = [json.loads(line) for line in (tmp_path / "eight.samples.jsonl").read_text().splitlines()]
    assert {row["task"] for row in samples} == {"lambada_local", "text_perplexity_local"}
    assert len(samples) == 8 + 6


@pytest.mark.parametrize("args, named", [
    ("output_layer_index=9,use_original_head=False", "output_layer_index"),
    ("contrast_layer_indice='original;2',use_original_head=False", "contrast_layer_indice"),
    ("use_original_head=maybe", "use_original_head"),
    ("use_original_head=False,contrast_layer_indices='original;2',contrast_alpha=2", "contrast_alpha"),
    ("output_layer_index=2", "output_layer_index"),  # needs use_original_head=False
    ("use_original_head=False,output_layer_index=3", "output_layer_index"),  # no trained head at 3
    ("use_original_head=False,vocab_projection_mode=lens,output_layer_index=3", "vocab_projection_mode"),
])
def test_bad_model_args_are_named(tiny_dir, args, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        MultiExitLM.create_from_arg_string(f"pretrained={tiny_dir},{args}", {"device": "cpu"})


def test_task_specs_and_duplicate_names(lambada_file, tmp_path):
    assert parse_task_spec("lambada_openai") == "lambada_openai"
    config = parse_task_spec(f"mine=lambada_local:{lambada_file}")
    assert config["task"] == "mine" and config["dataset_kwargs"]["data_files"]["test"] == str(lambada_file)
    assert config["output_type"] == "loglikelihood"
    with pytest.raises(ValueError, match="lambada_nope"):
        parse_task_spec(f"lambada_nope:{lambada_file}")
    with pytest.raises(ValueError, match="not found"):
        parse_task_spec(f"lambada_local:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(ValueError, match="more than once"):
        run_lm_eval("pretrained=x", [f"lambada_local:{lambada_file}"] * 2, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()
    yaml_path = write_task_yaml("text_perplexity_local", lambada_file, tmp_path / "tasks", "ppl")
    text = yaml_path.read_text()
    assert str(LOCAL_TASK_KINDS["text_perplexity_local"]) in text and "encoding_errors" in text


def test_lambada_builder_uses_real_text():
    rows = build_lambada_examples()
    assert len(rows) >= 300
    assert rows == build_lambada_examples()  # deterministic
    for row in rows:
        words = row["text"].split(" ")
        target = words[-1]
        assert target.isalpha() and len(target) >= 3
        assert target.lower()[:5] in {re.sub(r"[^a-z]", "", w.lower())[:5] for w in words[:-1]}
        assert 60 <= len(words) - 1 <= 160
    sample = build_lambada_examples(num_examples=50, seed=7)
    assert len(sample) == 50 and set(r["text"] for r in sample) <= set(r["text"] for r in rows)
    with pytest.raises(ValueError, match="num_examples"):
        build_lambada_examples(num_examples=100000)


def test_script_writes_exact_paths(tiny_dir, lambada_file, tmp_path):
    out = tmp_path / "nested" / "acd.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "lm_eval_run.py"), "--model-args",
           f"pretrained={tiny_dir},use_original_head=False,contrast_layer_indices=original;2",
           "--tasks", f"lambada_local:{lambada_file}", "--output", str(out), "--limit", "3",
           "--bootstrap-iters", "0", "--log-samples", "--threads", "1"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    assert sorted(p.name for p in out.parent.iterdir()) == ["acd.json", "acd.samples.jsonl"]
    results = json.loads(out.read_text())
    assert results["results"]["lambada_local"]["sample_len"] == 3


@pytest.mark.slow
def test_module_cli_is_lm_eval_with_our_model(tiny_dir, lambada_file, tmp_path):
    tasks_dir = tmp_path / "tasks"
    write_task_yaml("lambada_local", lambada_file, tasks_dir)
    cmd = [sys.executable, "-m", "multiexit.lm_eval", "run", "--model", "multi_exit_gpt", "--model_args",
           f"pretrained={tiny_dir},use_original_head=False,output_layer_index=2", "--include_path", str(tasks_dir),
           "--tasks", "lambada_local", "--device", "cpu", "--limit", "3", "--output_path", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lambada_local" in done.stdout and "perplexity" in done.stdout
    [written] = list((tmp_path / "out").rglob("results_*.json"))
    assert json.loads(written.read_text())["results"]["lambada_local"]["sample_len"] == 3


@pytest.mark.slow
def test_smollm2_original_head_equals_stock_hf(smollm2_dir, lambada_file, tmp_path):
    tasks = [f"lambada_local:{lambada_file}"]
    kwargs = dict(batch_size=4, limit=8, bootstrap_iters=0)
    ours = run_lm_eval(f"pretrained={smollm2_dir},dtype=float32,use_original_head=True", tasks,
                       tmp_path / "ours.json", **kwargs)
    stock = run_lm_eval(f"pretrained={smollm2_dir},dtype=float32", tasks, tmp_path / "stock.json", model="hf",
                        **kwargs)
    assert _metrics(ours) == _metrics(stock)
    assert _metrics(ours)["lambada_local"]["acc,none"] > 0  # a real model gets some targets right
