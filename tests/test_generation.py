"""Generation runs: rows and sidecar, batching = single prompts, seeding, shards, resume, OOM splitting, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import multiexit.stages.generate as generation
from multiexit.inputs.prompts import Prompt
from multiexit.stages.generate import (
    finish_row,
    generate_rows,
    make_run,
    merge_shards,
    meta_path,
    read_jsonl,
    run_generation,
    shard_bounds,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir):
    """A tiny random Llama with SmolLM2's tokenizer (fast; real tokenizer, random weights)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from conftest import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = tiny_config("llama", vocab_size=len(tokenizer), layers=4)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    assert isinstance(config, LlamaConfig)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    return generation.load_generation_model(tiny_model_dir, torch.device("cpu"), torch.float32)


DATASET = {"name": "gensim-lee", "num_prompts": 6, "prompt_tokens": 16, "min_reference_tokens": 32}


def _prompts_of_different_lengths(tokenizer, n=4):
    text = "Hundreds of people have been forced to vacate their homes in the Southern Highlands of New South Wales as strong winds pushed a bushfire."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [Prompt(f"p{i}", tokenizer.decode(ids[: 6 + 3 * i]), "ref", tuple(ids[: 6 + 3 * i])) for i in range(n)]


def test_rows_and_sidecar(tmp_path, tiny_model_dir):
    run = make_run(tiny_model_dir, "top_p", {"top_p": 0.9}, DATASET, max_new_tokens=5, batch_size=4, seed=1)
    out = run_generation(run, tmp_path / "run.jsonl", progress=False)
    rows = read_jsonl(out)
    assert len(rows) == 6
    for row in rows:
        assert list(row) == ["id", "prompt", "reference", "generation", "n_new_tokens", "stop_reason"]
        assert row["id"].startswith("gensim-lee/")
        assert 0 <= row["n_new_tokens"] <= 5 and row["stop_reason"] in ("eos", "length")
        assert (row["stop_reason"] == "length") == (row["n_new_tokens"] == 5)
    meta = json.loads(meta_path(out).read_text())
    assert meta["settings"]["decoding"] == {"method": "top_p", "params": {"top_p": 0.9, "temperature": 1.0}}
    assert meta["settings"]["seed"] == 1 and meta["settings"]["dataset"]["num_prompts"] == 6
    assert meta["new_tokens"] == sum(r["n_new_tokens"] for r in rows)
    assert meta["tokens_per_second"] > 0
    assert {"torch", "transformers", "multiexit", "python"} <= set(meta["versions"])
    assert not (tmp_path / "run.jsonl.shards").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl", "run.meta.json"]


def test_finish_row_cuts_at_first_eos(gpt2_tokenizer):
    prompt = Prompt("x", "p", "r", (1,))
    ids = gpt2_tokenizer(" the cat sat")["input_ids"]
    row = finish_row(prompt, ids + [50256, 50256, 50256], [50256], gpt2_tokenizer)
    assert row["generation"] == " the cat sat" and row["n_new_tokens"] == 3 and row["stop_reason"] == "eos"
    row = finish_row(prompt, ids, [50256], gpt2_tokenizer)
    assert row["stop_reason"] == "length" and row["n_new_tokens"] == 3
    row = finish_row(prompt, [50256, 11, 12], [50256], gpt2_tokenizer)
    assert row["generation"] == "" and row["n_new_tokens"] == 0 and row["stop_reason"] == "eos"


@pytest.mark.parametrize("method, params", [("greedy", {}), ("beam", {"num_beams": 2}),
                                             ("acd", {"lower": 2, "vocab_projection_mode": "shared_projection_direct"})])
def test_batched_equals_single_tiny(tiny_loaded, method, params):
    model, tokenizer = tiny_loaded
    prompts = _prompts_of_different_lengths(tokenizer)
    setting = make_run("x", method, params, {"name": "gensim-lee"}).setting
    batched, _ = generate_rows(model, tokenizer, setting, prompts, max_new_tokens=6, batch_size=4, seed=0, progress=False)
    single, _ = generate_rows(model, tokenizer, setting, prompts, max_new_tokens=6, batch_size=1, seed=0, progress=False)
    assert [r["generation"] for r in batched] == [r["generation"] for r in single]


@pytest.mark.slow
@pytest.mark.parametrize("method, params", [("greedy", {}), ("acd", {"lower": 12, "vocab_projection_mode": "shared_projection_direct"})])
def test_batched_equals_single_smollm2(smollm2_dir, method, params):
    torch.set_num_threads(1)
    model, tokenizer = generation.load_generation_model(str(smollm2_dir), torch.device("cpu"), torch.float32)
    prompts = _prompts_of_different_lengths(tokenizer, 3)
    setting = make_run("x", method, params, {"name": "gensim-lee"}).setting
    batched, _ = generate_rows(model, tokenizer, setting, prompts, max_new_tokens=8, batch_size=3, seed=0, progress=False)
    single, _ = generate_rows(model, tokenizer, setting, prompts, max_new_tokens=8, batch_size=1, seed=0, progress=False)
    assert [r["generation"] for r in batched] == [r["generation"] for r in single]
    assert all(r["n_new_tokens"] > 0 for r in batched)


def test_sampling_is_seeded(tmp_path, tiny_model_dir, tiny_loaded):
    def run(seed, name):
        r = make_run(tiny_model_dir, "temperature", {"temperature": 1.5}, DATASET, max_new_tokens=6, batch_size=3, seed=seed)
        return [x["generation"] for x in read_jsonl(run_generation(r, tmp_path / name, progress=False, model_and_tokenizer=tiny_loaded))]

    assert run(5, "a.jsonl") == run(5, "b.jsonl")
    assert run(5, "a.jsonl") != run(6, "c.jsonl")


def test_shard_bounds_cover_everything_once():
    for n, k in [(10, 3), (7, 7), (64, 5)]:
        spans = [shard_bounds(n, k, i) for i in range(k)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert max(e - s for s, e in spans) - min(e - s for s, e in spans) <= 1
    with pytest.raises(ValueError, match="shard must be in 0..2"):
        shard_bounds(10, 3, 3)


def _dying_after(calls_before_death: int, real):
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls_before_death + 1:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    return dying


def test_resume_after_interruption_gives_the_same_file(tmp_path, tiny_model_dir, tiny_loaded, monkeypatch):
    def make():  # 6 prompts in 3 batches of 2, sampled: the resumed run must restore the random state
        return make_run(tiny_model_dir, "top_k", {"top_k": 20}, DATASET, max_new_tokens=5, batch_size=2, seed=7)

    reference = run_generation(make(), tmp_path / "full" / "run.jsonl", progress=False, model_and_tokenizer=tiny_loaded)
    assert not generation.checkpoint_path(reference).exists()

    real = generation._generate_batch
    out = tmp_path / "resumed" / "run.jsonl"
    monkeypatch.setattr(generation, "_generate_batch", _dying_after(1, real))
    with pytest.raises(KeyboardInterrupt):
        run_generation(make(), out, progress=False, model_and_tokenizer=tiny_loaded)
    assert not out.exists() and not meta_path(out).exists()
    saved = json.loads(generation.checkpoint_path(out).read_text())
    assert len(saved["rows"]) == 2

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "_generate_batch", counting)
    run_generation(make(), out, progress=False, model_and_tokenizer=tiny_loaded)
    assert counted["n"] == 2  # batches 2 and 3 only
    assert out.read_bytes() == reference.read_bytes()
    assert json.loads(meta_path(out).read_text())["n_prompts"] == 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.jsonl", "run.meta.json"]


def test_a_checkpoint_of_other_settings_is_discarded(tmp_path, tiny_model_dir, tiny_loaded, monkeypatch, capsys):
    out = tmp_path / "run.jsonl"
    first = make_run(tiny_model_dir, "greedy", {}, DATASET, max_new_tokens=3, batch_size=2)
    real = generation._generate_batch
    monkeypatch.setattr(generation, "_generate_batch", _dying_after(1, real))
    with pytest.raises(KeyboardInterrupt):
        run_generation(first, out, progress=False, model_and_tokenizer=tiny_loaded)
    assert generation.checkpoint_path(out).is_file()
    monkeypatch.setattr(generation, "_generate_batch", real)
    other = make_run(tiny_model_dir, "greedy", {}, DATASET, max_new_tokens=4, batch_size=2)
    run_generation(other, out, progress=False, model_and_tokenizer=tiny_loaded)
    assert "is from other settings" in capsys.readouterr().err
    fresh = run_generation(other, tmp_path / "fresh.jsonl", progress=False, model_and_tokenizer=tiny_loaded)
    assert out.read_bytes() == fresh.read_bytes()
    assert not generation.checkpoint_path(out).exists()


def test_separate_shard_jobs_merge_to_the_single_run(tmp_path, tiny_model_dir, tiny_loaded):
    whole_run = make_run(tiny_model_dir, "greedy", {}, DATASET, max_new_tokens=4, batch_size=2)
    whole = run_generation(whole_run, tmp_path / "whole.jsonl", progress=False, model_and_tokenizer=tiny_loaded)
    run = make_run(tiny_model_dir, "greedy", {}, DATASET, max_new_tokens=4, batch_size=2, num_shards=2)
    with pytest.raises(ValueError, match="this run has 2 shards"):
        run_generation(run, tmp_path / "all.jsonl", progress=False, model_and_tokenizer=tiny_loaded)
    parts = [run_generation(run, tmp_path / f"s{i}.jsonl", shard=i, progress=False, model_and_tokenizer=tiny_loaded) for i in (1, 0)]
    merged = merge_shards(parts, tmp_path / "merged.jsonl")
    assert merged.read_bytes() == whole.read_bytes()
    assert json.loads(meta_path(merged).read_text())["shards"] == [0, 1]
    with pytest.raises(ValueError, match="expected shards 0..1 exactly once"):
        merge_shards(parts[:1], tmp_path / "bad.jsonl")


def _raise_oom_above(rows_that_fit: int, real):
    """A stand-in for running out of GPU memory: batches larger than ``rows_that_fit`` raise torch's OOM error."""
    calls = []

    def forward(model, setting, input_ids, *args):
        calls.append(input_ids.shape[0])
        if input_ids.shape[0] > rows_that_fit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, setting, input_ids, *args)

    return forward, calls


@pytest.mark.parametrize("method, params", [("greedy", {}), ("acd", {"lower": 2, "vocab_projection_mode": "shared_projection_direct"}),
                                             ("top_k", {"top_k": 20})])
def test_a_batch_that_runs_out_of_memory_is_split(tmp_path, tiny_model_dir, tiny_loaded, monkeypatch, method, params):
    run = make_run(tiny_model_dir, method, params, {**DATASET, "num_prompts": 5}, max_new_tokens=6, batch_size=5, seed=2)
    unsplit = run_generation(run, tmp_path / "unsplit.jsonl", progress=False, model_and_tokenizer=tiny_loaded)
    forward, calls = _raise_oom_above(2, generation._generate_batch)
    monkeypatch.setattr(generation, "_generate_batch", forward)
    split = run_generation(run, tmp_path / "split.jsonl", progress=False, model_and_tokenizer=tiny_loaded)
    assert calls == [5, 3, 2, 1, 2]  # 5 -> 3 + 2, 3 -> 2 + 1
    meta = json.loads(meta_path(split).read_text())
    assert meta["shard_timings"][0]["oom_splits"] == [5, 3]
    if method != "top_k":  # deterministic: the unsplit batch's tokens
        assert split.read_bytes() == unsplit.read_bytes()
    else:  # sampled: the same as a run at the split sizes would draw, all rows present
        assert [r["id"] for r in read_jsonl(split)] == [r["id"] for r in read_jsonl(unsplit)]
    forward, calls = _raise_oom_above(0, generation._generate_batch)
    monkeypatch.setattr(generation, "_generate_batch", forward)
    with pytest.raises(torch.OutOfMemoryError):
        run_generation(run, tmp_path / "never.jsonl", progress=False, model_and_tokenizer=tiny_loaded)
    assert calls == [5, 3, 2, 1]  # a single row that does not fit is the job's error


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="nucleus", params={}), "unknown decoding method 'nucleus'; valid methods:"),
        (dict(method="top_p", params={"p": 0.9}), "unknown parameter(s) ['p']; valid parameters: temperature, top_p"),
        (dict(method="acd", params={}), "missing required parameter(s) ['lower']"),
        (dict(method="top_p", params={"top_p": 1.5}), "top_p must be in"),
        (dict(method="greedy", params={}, dataset={"name": "wikitext"}), "unknown name 'wikitext'"),
        (dict(method="greedy", params={}, max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (dict(method="greedy", params={}, batch_size=0), "batch_size must be a positive integer"),
    ],
)
def test_bad_settings_are_named_errors(kwargs, message):
    kwargs = {"dataset": {"name": "gensim-lee"}, **kwargs}
    with pytest.raises(ValueError) as err:
        make_run("unused-model", kwargs.pop("method"), kwargs.pop("params"), kwargs.pop("dataset"), **kwargs)
    assert message in str(err.value)


def test_output_must_be_jsonl(tmp_path, tiny_loaded):
    run = make_run("m", "greedy", {}, DATASET)
    with pytest.raises(ValueError, match="must end in .jsonl"):
        run_generation(run, tmp_path / "out.json", model_and_tokenizer=tiny_loaded)


@pytest.mark.slow
def test_cli_generates_and_rejects_bad_input(tmp_path, tiny_model_dir):
    out = tmp_path / "cli.jsonl"
    cmd = [sys.executable, str(ROOT / "scripts" / "generate.py"), "--model", tiny_model_dir, "--method", "greedy",
           "--dataset", json.dumps({**DATASET, "num_prompts": 3}), "--max-new-tokens", "3", "--batch-size", "2",
           "--threads", "1", "--no-progress", "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(out)) == 3 and meta_path(out).is_file()
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "x.jsonl")] + ["--params", '{"beams": 2}'], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown parameter(s) ['beams']" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
    helptext = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate.py"), "--help"], capture_output=True, text=True, timeout=120).stdout
    for flag in ("--model", "--method", "--params", "--dataset", "--shard", "--num-shards", "--batch-size", "--seed",
                 "--max-new-tokens", "--device", "--output", "--merge", "acd", "gensim-lee"):
        assert flag in helptext


REQUIRED_EXAMPLES = {
    "acd": {"lower": 2, "vocab_projection_mode": "shared_projection_direct"},
    "exit": {"layer": 2, "vocab_projection_mode": "shared_projection_direct"},
}


def test_every_registered_method_runs_the_same_way(tmp_path, tiny_model_dir, tiny_loaded):
    """Built-in and baseline methods (registered into multiexit.decoding.registry) go through one code path."""
    from multiexit.decoding.registry import METHODS

    examples = {**REQUIRED_EXAMPLES, "contrastive_decoding": {"amateur": tiny_model_dir}}
    dataset = {**DATASET, "num_prompts": 2}
    for name, spec in sorted(METHODS.items()):
        params = examples.get(name, {})
        if set(spec.required) - set(params):
            continue  # a method registered later whose required parameters this test cannot guess
        run = make_run(tiny_model_dir, name, params, dataset, max_new_tokens=3, batch_size=2)
        out = run_generation(run, tmp_path / f"{name}.jsonl", progress=False, model_and_tokenizer=tiny_loaded)
        rows = read_jsonl(out)
        assert len(rows) == 2 and all(r["n_new_tokens"] <= 3 for r in rows), name
        meta = json.loads(meta_path(out).read_text())
        assert meta["settings"]["decoding"] == {"method": name, "params": {**spec.defaults, **params}}, name
        if name == "dola":
            derived = meta["decoding_derived"]
            assert derived["candidate_layers"] and all(layer < derived["num_layers"] for layer in derived["candidate_layers"])
        if name == "contrastive_decoding":
            assert meta["decoding_derived"]["amateur_parameters"] > 0


@pytest.mark.parametrize("method, params", [("greedy", {}), ("top_k", {"top_k": 20})])
def test_min_new_tokens_equal_to_max_gives_full_rows(tmp_path, tiny_model_dir, tiny_loaded, method, params):
    run = make_run(tiny_model_dir, method, params, DATASET, max_new_tokens=7, min_new_tokens=7, batch_size=3, seed=3)
    rows = read_jsonl(run_generation(run, tmp_path / "run.jsonl", progress=False, model_and_tokenizer=tiny_loaded))
    assert len(rows) == DATASET["num_prompts"] and all(row["n_new_tokens"] == 7 for row in rows)
    assert json.loads(meta_path(tmp_path / "run.jsonl").read_text())["settings"]["min_new_tokens"] == 7
    with pytest.raises(ValueError, match="min_new_tokens"):
        make_run(tiny_model_dir, method, params, DATASET, max_new_tokens=7, min_new_tokens=8)


def test_a_prompt_set_file_gives_the_same_rows(tmp_path, tiny_model_dir, tiny_loaded):
    from multiexit.stages.prompts import prepare_prompt_set

    prepare_prompt_set(DATASET, tiny_loaded[1], tmp_path / "prompts.jsonl")
    settings = generation.GenerateSettings.from_dict({"method": "greedy", "dataset": DATASET, "max_new_tokens": 4,
                                                      "batch_size": 2, "prompts": str(tmp_path / "prompts.jsonl")})
    run = settings.make_run(tiny_model_dir)
    from_file = run_generation(run, tmp_path / "file.jsonl", progress=False, model_and_tokenizer=tiny_loaded,
                               prompts=settings.load_prompts())
    built = run_generation(make_run(tiny_model_dir, "greedy", {}, DATASET, max_new_tokens=4, batch_size=2), tmp_path / "built.jsonl",
                           progress=False, model_and_tokenizer=tiny_loaded)
    assert Path(from_file).read_bytes() == Path(built).read_bytes()
    meta = json.loads(meta_path(from_file).read_text())
    assert meta["settings"]["prompt_set"]["n_prompts"] == DATASET["num_prompts"] and len(meta["settings"]["prompt_set"]["sha256"]) == 64
    other = generation.GenerateSettings.from_dict({"method": "greedy", "dataset": {**DATASET, "num_prompts": 5},
                                                   "prompts": str(tmp_path / "prompts.jsonl")})
    with pytest.raises(ValueError, match="was built for"):
        other.make_run(tiny_model_dir)
