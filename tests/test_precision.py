"""Half precision on the CPU: dtype resolution, every decoding method, the lm-eval adapter and head training in bfloat16.

The GPU runs the pipeline in bfloat16 (``dtype: auto``); these tests run the same code paths in
bfloat16 on the CPU, where the usual failures show up too: a float32 head meeting a bf16 hidden
state, a softmax or log-space difference taken in bf16, an argmax over NaNs.
"""

from __future__ import annotations

import json

import pytest
import torch

from multiexit import AutoMultiExitModel, MultiExitConfiguration
from multiexit.inputs.models import check_dtype_name, dtype_name, load_model, resolve_device, resolve_dtype
from multiexit.stages.generate import generate_rows, make_run, meta_path, run_generation

DATASET = {"name": "gensim-lee", "num_prompts": 8, "prompt_tokens": 16, "min_reference_tokens": 32}

# every family of decoding method, with parameters valid for the tiny model (4 layers, trained heads at 2 and 4)
METHODS = {
    "greedy": {},
    "beam": {"num_beams": 3},
    "top_k": {"top_k": 20},
    "top_p": {"top_p": 0.9},
    "typical": {"typical_p": 0.9},
    "temperature": {"temperature": 0.8},
    "exit": {"layer": 2},
    "acd": {"upper": "original", "lower": 2},
    "dola": {},
    "contrastive_search": {"top_k": 4, "penalty_alpha": 0.6},
    "contrastive_decoding": {"amateur": None},  # filled in with the model itself below
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    """A tiny random Llama (4 layers, hidden 64) with SmolLM2's tokenizer and trained-head exits at layers 2 and 4.

    Its weights are drawn wider than usual (std 0.1) so that its next-token distributions are peaked
    enough for greedy decoding to mean something when precision is compared.
    """
    from transformers import AutoTokenizer

    from conftest import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = tiny_config("llama", vocab_size=len(tokenizer), layers=4)
    config.hidden_size, config.intermediate_size, config.initializer_range = 64, 128, 0.1
    config.eos_token_id, config.pad_token_id, config.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    torch.manual_seed(0)
    model = AutoMultiExitModel.from_config(config, MultiExitConfiguration(lm_head_layer_indices=[2, 4]))
    folder = tmp_path_factory.mktemp("tiny_llama_exits")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return {dtype: load_model(tiny_dir, device="cpu", dtype=dtype) for dtype in ("float32", "bfloat16")}


def _params(method: str, tiny_dir: str) -> dict:
    params = dict(METHODS[method])
    if method == "contrastive_decoding":
        params["amateur"] = tiny_dir
    return params


def test_dtype_and_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") == torch.float32
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert [resolve_dtype(name, "cpu") for name in ("float32", "bfloat16", "float16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16 and dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, float16; got 'fp16'"):
        check_dtype_name("fp16")
    with pytest.raises(ValueError, match="device:"):
        resolve_device("gpu")


def test_the_loader_puts_every_weight_in_the_dtype(tiny_dir, loaded):
    model, tokenizer = loaded["bfloat16"]
    assert tokenizer is not None and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.name_to_lm_exit_head["lm_head_2"].weight.dtype == torch.bfloat16
    plain, none = load_model(tiny_dir, device="cpu", dtype="float32", multi_exit=False, tokenizer=False)
    assert none is None and not hasattr(plain, "name_to_lm_exit_head")


def test_a_float32_head_reads_a_bf16_hidden_state(loaded):
    """Heads kept in float32 (as training may keep them) on a bf16 body: the projection matches dtypes."""
    model, _ = loaded["bfloat16"]
    head = model.name_to_lm_exit_head["lm_head_2"]
    head.float()
    try:
        model.set_multi_exit_config(MultiExitConfiguration(use_original_head=False, output_layer_index=2))
        ids = torch.tensor([[5, 17, 300, 41]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    finally:
        head.to(torch.bfloat16)
        model.set_multi_exit_config(MultiExitConfiguration())


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_generates_in_bfloat16(tmp_path, tiny_dir, loaded, method):
    run = make_run(tiny_dir, method, _params(method, tiny_dir), {**DATASET, "num_prompts": 3}, max_new_tokens=5,
                   batch_size=3, dtype="bfloat16")
    out = run_generation(run, tmp_path / f"{method}.jsonl", device="cpu", progress=False, model_and_tokenizer=loaded["bfloat16"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(0 <= r["n_new_tokens"] <= 5 for r in rows)
    assert sum(r["n_new_tokens"] for r in rows) > 0, method
    meta = json.loads(meta_path(out).read_text())
    assert meta["torch_dtype"] == "bfloat16" and meta["settings"]["dtype"] == "bfloat16" and meta["device"] == "cpu"


# Greedy tokens of the same prompts in bfloat16 and float32: the tiny model's top two logits are
# sometimes closer than bf16's rounding, and after the first difference a row goes its own way, so
# agreement is counted per prompt (all 8 new tokens equal). Measured on this model (torch 2.13 CPU):
# greedy 7 of 8 prompts, ACD 6 of 8 (its contrast of two exits amplifies rounding); the test asks
# for one prompt fewer.
@pytest.mark.parametrize("method, params, minimum", [("greedy", {}, 6), ("acd", {"upper": "original", "lower": 2}, 5)])
def test_bfloat16_gives_the_float32_tokens_for_most_prompts(tiny_dir, loaded, method, params, minimum):
    from multiexit.inputs.prompts import load_prompts

    run = make_run(tiny_dir, method, params, DATASET)
    prompts = load_prompts(run.dataset, loaded["float32"][1])
    assert len(prompts) == 8
    generations = {}
    for dtype, (model, tokenizer) in loaded.items():
        rows, _ = generate_rows(model, tokenizer, run.setting, prompts, max_new_tokens=8, batch_size=4, seed=0, progress=False)
        generations[dtype] = [r["generation"] for r in rows]
    same = sum(a == b for a, b in zip(generations["float32"], generations["bfloat16"]))
    print(f"{method}: bf16 == fp32 for {same}/8 prompts")
    assert same >= minimum, (same, generations)


def test_lm_eval_loglikelihood_in_bfloat16(tiny_dir):
    from lm_eval.api.instance import Instance

    from multiexit.stages.lm_eval import MultiExitLM

    context, continuation = "Firefighters said the blaze near Goulburn had", " forced the closure of the highway"
    scores = {}
    for dtype in ("float32", "bfloat16"):
        lm = MultiExitLM(pretrained=tiny_dir, device="cpu", batch_size=2, dtype=dtype, use_original_head=False,
                         contrast_layer_indices="original;2", contrast_alpha=0.1)
        assert lm.model.dtype == getattr(torch, dtype)
        requests = [Instance("loglikelihood", {}, (context, continuation), 0), Instance("loglikelihood", {}, (context, " the"), 1)]
        scores[dtype] = [total for total, _greedy in lm.loglikelihood(requests, disable_tqdm=True)]
    assert all(torch.isfinite(torch.tensor(scores["bfloat16"])))
    # bf16 keeps ~3 significant digits: the sums of ~7 log-probs agree to a few percent
    assert scores["bfloat16"] == pytest.approx(scores["float32"], rel=0.05, abs=0.5)


def test_a_head_training_step_in_bf16_autocast_lowers_the_loss(tiny_dir):
    from multiexit.inputs.corpora import collate_chunks, load_token_chunks
    from multiexit.stages.train_heads import ExitObjective, HeadTrainingSettings, prepare_model_for_training

    config = HeadTrainingSettings(exits=[2, 4], init="random", learning_rate=1e-2, batch_size=4, seed=0)
    model = prepare_model_for_training(tiny_dir, config)
    from transformers import AutoTokenizer

    chunks = load_token_chunks("lee_background", AutoTokenizer.from_pretrained(tiny_dir), seq_len=32,
                               train_tokens=32 * 8, eval_tokens=32 * 4, seed=0)
    batch = collate_chunks(list(chunks.train[:4]))
    objective = ExitObjective(model, [2, 4])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # master weights stay float32
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)

    def loss() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, _ = objective(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return total

    before = loss()
    assert before.dtype == torch.float32 and torch.isfinite(before)
    for _ in range(3):
        optimizer.zero_grad()
        step = loss()
        step.backward()
        assert all(torch.isfinite(p.grad).all() for p in trainable)
        optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after < before - 0.05, (before.item(), after.item())
