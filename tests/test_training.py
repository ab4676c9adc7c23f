"""Exit-head training: losses fall, init modes, frozen body, checkpoints, kill-and-resume, task mode, KL."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from multiexit.model.config import MultiExitConfiguration, VocabularyProjectionMode
from multiexit.model.modeling import AutoMultiExitModel
from multiexit.inputs.corpora import (
    collate_chunks,
    collate_task,
    encode_task_examples,
    load_token_chunks,
    read_local_documents,
    NAMED_LOCAL,
)
from multiexit.stages.train_heads import (
    ExitObjective,
    HeadTrainingSettings,
    evaluate_exits,
    exit_logits,
    heldout_batches,
    parse_exits,
    prepare_model_for_training,
    train_exits,
    trainable_parameters,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_heads.py"


def _char_tokenizer():
    """A 128-token BPE tokenizer trained on a slice of the gensim Lee corpus (real English, tiny vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = read_local_documents(NAMED_LOCAL["lee_background"]())[:60]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=128, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], limit_alphabet=60,
                                  show_progress=False)
    backend.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random GPT-2 (4 layers, vocab 128) with a matching tokenizer, saved as a plain HF folder."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "gpt2"
    AutoModelForCausalLM.from_config(tiny_config("gpt2")).save_pretrained(path)
    _char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chunks(tiny_dir):
    from transformers import AutoTokenizer

    return load_token_chunks("lee_background", AutoTokenizer.from_pretrained(tiny_dir), seq_len=32,
                             train_tokens=32 * 96, eval_tokens=32 * 16, seed=0)


def _base_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("name_to_")}


@pytest.mark.parametrize("init", ["random", "warm"])
def test_every_exit_loss_falls_and_base_is_untouched(tiny_dir, chunks, init):
    config = HeadTrainingSettings(exits=[1, 2, 3], init=init, learning_rate=2e-2, max_steps=24, batch_size=4, seed=0)
    model = prepare_model_for_training(str(tiny_dir), config)
    assert sorted(trainable_parameters(model)) == [f"name_to_lm_exit_head.lm_head_{l}.weight" for l in (1, 2, 3)]
    if init == "warm":
        for l in (1, 2, 3):
            assert torch.equal(model.name_to_lm_exit_head[f"lm_head_{l}"].weight, model.lm_head.weight)
            assert model.name_to_lm_exit_head[f"lm_head_{l}"].weight.data_ptr() != model.lm_head.weight.data_ptr()
    base_before = _base_state(model)
    batches = heldout_batches(chunks.heldout, 8)
    before = evaluate_exits(model, batches, [1, 2, 3])
    if init == "warm":  # a warm-started head is exactly the logit lens
        lens = evaluate_exits(model, batches, [1, 2, 3], VocabularyProjectionMode.SHARED_PROJECTION_DIRECT)
        assert all(abs(before[k]["cross_entropy"] - lens[k]["cross_entropy"]) < 1e-6 for k in lens)
    result = train_exits(model, list(chunks.train), config, collate_chunks, log=lambda *_: None)
    after = evaluate_exits(model, batches, [1, 2, 3])
    for exit_ in ("1", "2", "3"):
        assert after[exit_]["cross_entropy"] < before[exit_]["cross_entropy"] - 0.05, (exit_, before, after)
        first = sum(h["exit_losses"][exit_] for h in result.history[:4]) / 4
        last = sum(h["exit_losses"][exit_] for h in result.history[-4:]) / 4
        assert last < first
    assert result.steps == 24 and len(result.history) == 24
    assert result.tokens == 24 * 4 * 31  # label tokens: seq_len - 1 per chunk
    for name, value in _base_state(model).items():
        assert torch.equal(value, base_before[name]), f"frozen base weight {name} changed"


def test_cast_init_folds_the_least_squares_cast_into_the_original_head(tiny_dir, chunks):
    """init='cast': head_l = W_head @ A_l, A_l the least-squares map norm(h_l) -> h_top, computed here by hand
    from the plain HF model's hidden states; the top-layer exit gets the original head."""
    from transformers import AutoModelForCausalLM

    data = chunks.train[:12]
    config = HeadTrainingSettings(exits=[2, 4], init="cast", cast_positions=10**6)  # capped: every usable position
    model = prepare_model_for_training(str(tiny_dir), config, cast_chunks=data)
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        out = plain(input_ids=data, output_hidden_states=True)
        x = plain.transformer.ln_f(out.hidden_states[2])[:, 1:].reshape(-1, 32).double()  # position 0 never sampled
        y = out.hidden_states[4][:, 1:].reshape(-1, 32).double()  # the last entry is already final-normed
        cast = torch.linalg.lstsq(x, y, driver="gelsd").solution.T
        expected = x @ (plain.lm_head.weight.double() @ cast).T  # logits of the folded head on the fitted states
        got = model.name_to_lm_exit_head["lm_head_2"](x.float()).double()
    # a fresh LayerNorm's output is centred (rank 31 of 32), so the maps agree on the states, not as matrices;
    # the stage solves the float64 normal equations of float32 states, lstsq here the states themselves
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()
    assert torch.equal(model.name_to_lm_exit_head["lm_head_4"].weight, plain.lm_head.weight)
    with pytest.raises(ValueError, match="cast"):
        prepare_model_for_training(str(tiny_dir), config)
    # max_steps=0: no optimizer step, the heads stay the cast fold (a training-free exit)
    before = model.name_to_lm_exit_head["lm_head_2"].weight.detach().clone()
    zero = HeadTrainingSettings(exits=[2, 4], init="cast", max_steps=0, batch_size=4)
    result = train_exits(model, list(chunks.train), zero, collate_chunks, log=lambda *_: None)
    assert result.steps == 0 and result.history == []
    assert torch.equal(model.name_to_lm_exit_head["lm_head_2"].weight, before)


def test_objective_matches_core_forward_loss(tiny_dir, chunks):
    config = HeadTrainingSettings(exits=[1, 3], init="random")
    model = prepare_model_for_training(str(tiny_dir), config)
    batch = collate_chunks(list(chunks.train[:4]))
    total, per_exit = ExitObjective(model, [1, 3])(batch["input_ids"], batch["attention_mask"], batch["labels"])
    out = model(**batch)
    assert torch.allclose(total, out.loss)
    assert torch.allclose(per_exit, torch.stack([out.exit_losses[1], out.exit_losses[3]]))


def test_exit_logits_rebuilt_from_the_plain_model(tiny_dir, chunks):
    """exit_logits against the plain HF model's hidden states, final norm and head, under a mask with a hole
    (mutants that survived `make mutation`: the mask dropped, the projection mode ignored, 'final' by default)."""
    from transformers import AutoModelForCausalLM

    from multiexit.model.modeling import head_name

    model = prepare_model_for_training(str(tiny_dir), HeadTrainingSettings(exits=[1, 3], init="random")).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    ids = collate_chunks(list(chunks.train[:2]))["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, 2:5] = 0
    lens = VocabularyProjectionMode.SHARED_PROJECTION_DIRECT
    with torch.no_grad():
        hidden = plain(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        specific = exit_logits(model, ids, mask, [1, 3])
        shared = exit_logits(model, ids, mask, [1, 3], mode=lens)
        unmasked = exit_logits(model, ids, torch.ones_like(ids), [1, 3])
    assert set(specific) == {1, 3} and set(shared) == {1, 3}  # 'final' only when asked for
    for layer in (1, 3):
        normed = plain.transformer.ln_f(hidden[layer])
        head = model.name_to_lm_exit_head[head_name(layer)].weight
        assert torch.allclose(specific[layer], normed @ head.T, atol=1e-5), layer
        assert torch.allclose(shared[layer], plain.lm_head(normed), atol=1e-5), layer
        # the hole changes row 1 after it, and nothing before it
        assert not torch.allclose(specific[layer][1, 5:], unmasked[layer][1, 5:], atol=1e-4)
        assert torch.allclose(specific[layer][0], unmasked[layer][0], atol=1e-6)


def test_kl_objective_is_kl_from_the_final_layer_to_the_exit(tiny_dir, chunks):
    """objective='kl' = token-mean KL(final-layer distribution || exit distribution), written out here with
    torch's kl_div on the plain HF model's own logits and hidden states (reversing the KL fails this)."""
    from transformers import AutoModelForCausalLM

    config = HeadTrainingSettings(exits=[1, 2], objective="kl", init="random", seed=4)
    model = prepare_model_for_training(str(tiny_dir), config)
    with torch.no_grad():  # peaked exits against a near-uniform random final layer: the two KL directions differ
        for layer in (1, 2):
            model.name_to_lm_exit_head[f"lm_head_{layer}"].weight.mul_(50.0)
    batch = collate_chunks(list(chunks.train[:3]))
    batch["labels"][0, 10:] = -100  # some positions do not count
    _, per_exit = ExitObjective(model, [1, 2], "kl")(batch["input_ids"], batch["attention_mask"], batch["labels"])
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        out = plain(input_ids=batch["input_ids"], output_hidden_states=True)
        counted = batch["labels"][:, 1:] != -100  # position t predicts token t+1
        teacher = torch.log_softmax(out.logits[:, :-1][counted], dim=-1)
        for i, layer in enumerate([1, 2]):
            head = model.name_to_lm_exit_head[f"lm_head_{layer}"].weight
            student = torch.log_softmax((plain.transformer.ln_f(out.hidden_states[layer]) @ head.T)[:, :-1][counted], dim=-1)
            expected = torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="none").sum(-1).mean()
            assert torch.allclose(per_exit[i], expected, rtol=1e-5, atol=1e-5), (layer, per_exit[i], expected)
            reverse = torch.nn.functional.kl_div(teacher, student, log_target=True, reduction="none").sum(-1).mean()
            assert not torch.allclose(expected, reverse, rtol=0.05)  # the test can tell the two directions apart


def test_kl_objective_trains_towards_final_layer(tiny_dir, chunks):
    config = HeadTrainingSettings(exits=[1, 2], objective="kl", init="random", learning_rate=2e-2, max_steps=16, batch_size=4)
    model = prepare_model_for_training(str(tiny_dir), config)
    result = train_exits(model, list(chunks.train), config, collate_chunks, log=lambda *_: None)
    for exit_ in ("1", "2"):
        assert result.history[-1]["exit_losses"][exit_] < result.history[0]["exit_losses"][exit_]
        assert all(h["exit_losses"][exit_] >= -1e-6 for h in result.history)  # a KL divergence


def test_original_head_finetuning_unties_and_keeps_embeddings(tiny_dir, chunks, tmp_path):
    from multiexit.stages.train_heads import save_trained_model

    config = HeadTrainingSettings(exits=[2, "original"], init="warm", learning_rate=1e-2, max_steps=6, batch_size=4)
    model = prepare_model_for_training(str(tiny_dir), config)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    head = model.lm_head.weight.detach().clone()
    assert "lm_head.weight" in trainable_parameters(model)
    result = train_exits(model, list(chunks.train), config, collate_chunks, log=lambda *_: None)
    assert set(result.history[0]["exit_losses"]) == {"2", "original"}
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    assert not torch.equal(model.lm_head.weight, head)
    save_trained_model(model, tmp_path / "ckpt")
    loaded = AutoMultiExitModel.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(loaded.get_input_embeddings().weight, embeddings)


def test_task_mode_leaves_prompt_tokens_out_of_the_loss(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    examples = [{"prompt": "The bank said on Monday that", "target": " profits rose"},
                {"prompt": "Police", "target": " arrested two men in Sydney"}]
    encoded = encode_task_examples(examples, tokenizer, max_len=64)
    for example, item in zip(examples, encoded):
        n_prompt = len(tokenizer(example["prompt"], add_special_tokens=False)["input_ids"])
        assert item["labels"][:n_prompt] == [-100] * n_prompt
        assert all(t != -100 for t in item["labels"][n_prompt:])
        assert item["labels"][-1] == tokenizer.eos_token_id
    batch = collate_task(encoded, tokenizer.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()

    model = prepare_model_for_training(str(tiny_dir), HeadTrainingSettings(exits=[2], init="random"))
    loss, _ = ExitObjective(model, [2])(batch["input_ids"], batch["attention_mask"], batch["labels"])
    logits = exit_logits(model, batch["input_ids"], batch["attention_mask"], [2])[2]
    target = batch["labels"][:, 1:]
    mask = target != -100
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][mask], target[mask])
    assert torch.allclose(loss, manual, atol=1e-6)
    everything = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), batch["input_ids"][:, 1:].reshape(-1))
    assert not torch.allclose(loss, everything, atol=1e-3)
    # changing a target token changes the loss; the prompt tokens only matter as context
    targets_only = batch["labels"].clone()
    targets_only[0, -1] = -100
    loss2, _ = ExitObjective(model, [2])(batch["input_ids"], batch["attention_mask"], targets_only)
    assert not torch.allclose(loss, loss2)


def _run_cli(args, log: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as handle:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, stdout=handle, stderr=subprocess.STDOUT)


def _cli_args(tiny_dir, out: Path, extra=()):
    return ["--model", str(tiny_dir), "--exits", "1,3", "--output-dir", str(out), "--seq-len", "32", "--train-tokens", "2048",
            "--eval-tokens", "256", "--batch-size", "4", "--max-steps", "10", "--learning-rate", "1e-2", "--init", "random",
            "--checkpoint-every", "2", "--seed", "3", *extra]


def test_cli_outputs_checkpoint_that_generates_with_acd(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    import importlib.util

    spec = importlib.util.spec_from_file_location("train_heads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "trained"
    assert module.main(_cli_args(tiny_dir, out, ["--max-steps", "4", "--init", "warm"])) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_metrics.json", "loss.png",
                 "loss_history.csv", "loss_history.json"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "trained.checkpoints").exists()
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert set(metrics["after"]) == {"1", "3", "original"} and set(metrics["logit_lens"]) == {"1", "3"}
    for exit_ in ("1", "3"):
        assert set(metrics["after"][exit_]) == {"cross_entropy", "perplexity", "top1_accuracy", "tokens"}
    config = json.loads((out / "config.json").read_text())
    assert config["lm_head_layer_indices"] == [1, 3] and config["vocab_projection_mode"] == "LAYER_SPECIFIC_PROJECTION"
    assert (out / "loss_history.csv").read_text().splitlines()[0] == "step,tokens,lr,exit,loss"

    model = AutoMultiExitModel.from_pretrained(out)
    from multiexit.decoding.registry import generate, parse_decoding

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(["The bank said"], return_tensors="pt")
    new = generate(model, parse_decoding("acd", {"lower": 1}), ids["input_ids"], ids["attention_mask"], 6,
                   eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    assert new.shape == (1, 6)
    # ACD's first token is the argmax of the contrast of the original head and exit 1
    with torch.no_grad():
        model.set_multi_exit_config(MultiExitConfiguration(use_original_head=False, contrast_layer_indices="original;1"))
        first = model(**ids).logits[0, -1].argmax()
    assert int(new[0, 0]) == int(first)

    assert module.main(_cli_args(tiny_dir, tmp_path / "bad", ["--exits", "1,9"])) == 2
    assert module.main(_cli_args(tiny_dir, tmp_path / "bad", ["--data", "no_such_corpus"])) == 2


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    reference = tmp_path / "reference"
    proc = _run_cli(_cli_args(tiny_dir, reference), tmp_path / "reference.log")
    interrupted = tmp_path / "interrupted"
    checkpoints = tmp_path / "interrupted.checkpoints"
    killed = _run_cli(_cli_args(tiny_dir, interrupted, ["--throttle-seconds", "1.0"]), tmp_path / "killed.log")
    deadline = time.time() + 240
    while not (checkpoints / "step-00000004" / "state.json").exists():
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (interrupted / "model.safetensors").exists()
    assert proc.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    resumed = _run_cli(_cli_args(tiny_dir, interrupted), tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    assert "resuming from" in (tmp_path / "resumed.log").read_text()
    metrics = json.loads((interrupted / "training_metrics.json").read_text())
    assert metrics["training"]["resumed_from_step"] in (4, 6, 8)
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(interrupted / "model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    hist_a = json.loads((reference / "loss_history.json").read_text())
    hist_b = json.loads((interrupted / "loss_history.json").read_text())
    assert [h["step"] for h in hist_b] == list(range(1, 11))
    for x, y in zip(hist_a, hist_b):
        assert abs(x["loss"] - y["loss"]) < 1e-5 and x["tokens"] == y["tokens"]


def test_bad_settings_are_rejected():
    assert parse_exits("12, 6,original") == [6, 12, "original"]
    with pytest.raises(ValueError, match="exits"):
        parse_exits("6,six")
    with pytest.raises(ValueError, match="duplicates"):
        parse_exits([6, 6])
    with pytest.raises(ValueError, match="objective"):
        HeadTrainingSettings(exits=[1], objective="mse")
    with pytest.raises(ValueError, match="init"):
        HeadTrainingSettings(exits=[1], init="zeros")
    with pytest.raises(ValueError, match="original"):
        HeadTrainingSettings(exits=[1, "original"], objective="kl")
    with pytest.raises(ValueError, match="max_steps and max_tokens"):
        HeadTrainingSettings(exits=[1], max_steps=3, max_tokens=100)
    with pytest.raises(ValueError, match="corpus"):
        load_token_chunks("definitely/not/here.txt", None, 16)


def test_train_block_maps_onto_the_two_settings_classes():
    from multiexit.settings import ConfigError
    from multiexit.stages.train_heads import DataSettings, HeadTrainingSettings, train_settings

    block = {"data": "lee_background", "init": "random", "learning_rate": 1.0e-3, "max_steps": 16, "batch_size": 2,
             "seq_len": 128, "eval_tokens": 512, "eval_batch_size": 4, "checkpoint_every": 4, "cpu": True}
    training, data = train_settings(block, [24, 8, 16], "models.m.train")
    assert training.exits == (8, 16, 24) and training.learning_rate == 1e-3 and training.cpu is True
    assert (data.data, data.seq_len, data.eval_tokens, data.eval_batch_size) == ("lee_background", 128, 512, 4)
    assert DataSettings.from_dict(data.as_dict()) == data
    assert HeadTrainingSettings.from_dict(training.as_dict()) == training
    # every flag of scripts/train_heads.py that a config may set is a field of one of the two classes
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_heads_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    set_by_the_rule = {"model", "exits", "output_dir", "metrics", "loss_plot", "loss_csv", "loss_json", "checkpoint_dir",
                       "help", "spec"}
    renamed = {"unfreeze_base": "freeze_base"}
    fields = set(HeadTrainingSettings.field_names()) | set(DataSettings.field_names())
    for action in module.build_parser()._actions:
        if action.dest not in set_by_the_rule:
            assert renamed.get(action.dest, action.dest) in fields, action.dest

    cases = [({"learning_rat": 0.1}, "models.m.train.learning_rat", "unknown setting"),
             ({"learning_rate": -1}, "models.m.train.learning_rate", "> 0"),
             ({"batch_size": 0}, "models.m.train.batch_size", ">= 1"),
             ({"seq_len": "long"}, "models.m.train.seq_len", "an integer"),
             ({"init": "zeros"}, "models.m.train.init", "one of"),
             ({"task_eval_fraction": 1.0}, "models.m.train.task_eval_fraction", "< 1"),
             ({"max_steps": 3, "max_tokens": 100}, "models.m.train.max_tokens", "not max_steps and max_tokens"),
             ({"epochs": 3, "max_steps": 100}, "models.m.train.max_steps", "not epochs and max_steps"),
             ({"objective": "kl"}, "models.m.train.exits", "'original' cannot"),
             ({"head_bias": True}, "models.m.train.head_bias", "one of"),
             ({"exits": [1]}, "models.m.train.exits", "model entry"),
             ({"data": "/no/such/corpus.txt"}, "models.m.train.data", "neither a known corpus"),
             ({"data": " "}, "models.m.train.data", "empty corpus spec")]
    for block, key, text in cases:
        exits = [2, "original"] if block.get("objective") == "kl" else [2]
        with pytest.raises(ConfigError) as info:
            train_settings(block, exits, "models.m.train")
        assert info.value.key == key and text in str(info.value), (block, str(info.value))
    # with task_data the corpus is not read, so it is not checked either
    assert train_settings({"data": "/no/such/corpus.txt", "task_data": "tasks.jsonl"}, [2], "models.m.train")[1].task_data == "tasks.jsonl"
    with pytest.raises(ConfigError) as info:
        HeadTrainingSettings.from_dict({"exits": [3, 3]}, "models.m.train")
    assert info.value.key == "models.m.train.exits" and "duplicates" in str(info.value)


def test_authors_budget_and_chunking_settings(tiny_dir, tmp_path):
    """epochs = whole passes over the data; separator 'none' concatenates documents as the authors' group_texts."""
    from transformers import AutoTokenizer

    from multiexit.stages.train_heads import EpochOrder, ListDataset, plan_steps

    # 100 chunks, batch 16, 3 epochs: 300 items -> 18 whole steps (300 // 16)
    assert plan_steps(HeadTrainingSettings(exits=[1], epochs=3), 100, 511.0, 1) == 18
    assert plan_steps(HeadTrainingSettings(exits=[1]), 100, 511.0, 1) == 6
    assert plan_steps(HeadTrainingSettings(exits=[1], epochs=2, batch_size=5, grad_accum=2), 100, 511.0, 2) == 10
    order = EpochOrder(ListDataset(list(range(7))), epochs=3, seed=1)
    for epoch in range(3):
        assert sorted(order[epoch * 7 + i] for i in range(7)) == list(range(7))

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    docs = ["the bank said", "police arrested two men", "fire near the road"]
    corpus = tmp_path / "three.cor"
    corpus.write_text("\n".join(docs) + "\n")
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in read_local_documents(corpus)]
    eos = [tokenizer.eos_token_id]

    def streams(tail):  # local documents are read in a seeded shuffle: any order of the three
        return [[t for doc in order for t in doc + tail] for order in itertools.permutations(ids)]

    for separator, tail in (("none", []), ("eos", eos)):
        chunks = load_token_chunks(str(corpus), tokenizer, 2, seed=0, separator=separator)
        assert any(chunks.train.reshape(-1).tolist() == s[: len(s) // 2 * 2] for s in streams(tail)), separator


def test_cli_task_mode_counts_only_target_tokens(tiny_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_heads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = tmp_path / "task.jsonl"
    rows = [{"question": f"Question {i}: where did the fire start", "answer": f" near the road {i % 3}"} for i in range(20)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "task_model"
    args = ["--model", str(tiny_dir), "--exits", "2", "--output-dir", str(out), "--task-data", str(data),
            "--prompt-field", "question", "--target-field", "answer", "--task-eval-fraction", "0.2", "--batch-size", "4",
            "--max-steps", "4", "--learning-rate", "1e-2", "--unfreeze-base"]
    assert module.main(args) == 0
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["data"]["train_examples"] == 16 and metrics["data"]["heldout_examples"] == 4
    # 4 steps x 4 examples = one pass over the 16 training examples: exactly their target tokens count
    assert metrics["training"]["tokens"] == metrics["data"]["train_target_tokens"]
    assert metrics["after"]["2"]["tokens"] < metrics["data"]["train_target_tokens"]


def test_text_data_formats_split_and_seed(tmp_path, tiny_dir):
    import lzma

    from datasets import load_dataset
    from transformers import AutoTokenizer

    from multiexit.inputs.corpora import _blocks, buffer_shuffle

    blocks = tmp_path / "blocks.txt"
    blocks.write_text("first doc\nstill first\n\nsecond doc\n\n\nthird doc\n")
    assert read_local_documents(blocks) == ["first doc\nstill first", "second doc", "third doc"]
    lines = tmp_path / "lines.cor"
    lines.write_text("one\ntwo\nthree\n")
    assert read_local_documents(lines) == ["one", "two", "three"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "a b"}\n{"text": "c"}\n')
    assert read_local_documents(jsonl) == ["a b", "c"]
    # CC-100's format through the real `datasets` streaming text builder (xz-compressed, as on data.statmt.org)
    packed = tmp_path / "en.txt.xz"
    packed.write_bytes(lzma.compress(blocks.read_bytes()))
    stream = load_dataset("text", data_files={"train": str(packed)}, split="train", streaming=True)
    assert list(_blocks(row["text"] for row in stream)) == read_local_documents(blocks)
    shuffled = list(buffer_shuffle(map(str, range(50)), 8, seed=1))
    assert sorted(shuffled, key=int) == list(map(str, range(50))) and shuffled != list(map(str, range(50)))
    assert shuffled == list(buffer_shuffle(map(str, range(50)), 8, seed=1))

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    a = load_token_chunks("lee_background", tokenizer, 16, train_tokens=320, eval_tokens=64, seed=5)
    b = load_token_chunks("lee_background", tokenizer, 16, train_tokens=320, eval_tokens=64, seed=5)
    c = load_token_chunks("lee_background", tokenizer, 16, train_tokens=320, eval_tokens=64, seed=6)
    assert a.train.shape == (20, 16) and a.heldout.shape == (4, 16)
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout) and not torch.equal(a.train, c.train)
    short = load_token_chunks(str(lines), tokenizer, 4, seed=0)  # whole local corpus: documents joined with EOS
    assert (short.train == tokenizer.eos_token_id).sum() >= 2


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_global_batch(tiny_dir, tmp_path):
    """Data-parallel with no code change: torchrun x2 (batch 4 each) == one process with batch 8."""
    from safetensors.torch import load_file

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--model", str(tiny_dir), "--exits", "1,3", "--seq-len", "32", "--train-tokens", "4096", "--eval-tokens", "256",
              "--max-steps", "6", "--learning-rate", "1e-2", "--cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517"]
    two = subprocess.run([*torchrun, str(SCRIPT), *common, "--batch-size", "4", "--output-dir", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=400)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(SCRIPT), *common, "--batch-size", "8", "--output-dir", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=400)
    assert one.returncode == 0, one.stderr[-3000:]
    m2 = json.loads((tmp_path / "two" / "training_metrics.json").read_text())
    assert m2["training"]["num_processes"] == 2
    h2 = json.loads((tmp_path / "two" / "loss_history.json").read_text())
    h1 = json.loads((tmp_path / "one" / "loss_history.json").read_text())
    assert [h["tokens"] for h in h2] == [h["tokens"] for h in h1]
    assert [h["lr"] for h in h2] == pytest.approx([h["lr"] for h in h1])  # one scheduler step per global step
    assert [h["loss"] for h in h2] == pytest.approx([h["loss"] for h in h1], abs=1e-5)
    a, b = load_file(str(tmp_path / "two" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_every_cli_flag_is_documented():
    import importlib.util

    for script in ("train_heads.py", "fit_cast.py"):
        spec = importlib.util.spec_from_file_location(script[:-3], REPO / "scripts" / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parser = module.build_parser()
        for action in parser._actions:
            assert action.help, f"{script}: {action.option_strings} has no help text"
        assert "--output-dir" in parser.format_help()
