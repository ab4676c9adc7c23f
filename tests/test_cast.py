"""Cast matrices: least squares recovers planted maps; fitted casts save, load and decode in CAST mode."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from multiexit.stages.fit_cast import LinearFitStats, add_cast_matrices, fit_cast_matrices, fit_linear_map, sample_positions
from multiexit.model.config import MultiExitConfiguration
from multiexit.model.modeling import AutoMultiExitModel


def test_streaming_least_squares_recovers_a_planted_map():
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(12, 20, generator=g)
    x = torch.randn(4000, 20, generator=g)
    y = x @ w_true.T + 0.01 * torch.randn(4000, 12, generator=g)
    stats = LinearFitStats(20, 12)
    stats.update(x[:1500], y[:1500])  # streamed in two pieces
    stats.update(x[1500:], y[1500:])
    b = stats.solve()
    assert torch.allclose(b.T.float(), w_true, atol=2e-3)
    assert stats.r2(b) > 0.9999
    w_direct, r2 = fit_linear_map(x, y)
    assert torch.allclose(w_direct, b.T, atol=1e-8) and abs(r2 - stats.r2(b)) < 1e-10
    # R^2 by sufficient statistics equals the direct formula
    resid = y.double() - x.double() @ b
    direct = 1 - (resid ** 2).sum() / ((y.double() - y.double().mean(0)) ** 2).sum()
    assert abs(float(direct) - stats.r2(b)) < 1e-9
    # an unrelated target is not explained
    assert fit_linear_map(x, torch.randn(4000, 12, generator=g))[1] < 0.02


def test_sample_positions_is_seeded_distinct_and_skips_the_first():
    a = sample_positions(10, 16, 100, seed=1)
    assert a.keys() == sample_positions(10, 16, 100, seed=1).keys()
    pairs = [(c, int(p)) for c, ps in a.items() for p in ps]
    assert len(pairs) == len(set(pairs)) == 100 and min(p for _, p in pairs) >= 1
    with pytest.raises(ValueError, match="num_positions"):
        sample_positions(2, 4, 100, seed=0)


@pytest.fixture(scope="module")
def planted_model():
    """Tiny GPT-2 whose last block adds nothing to the residual stream: top state = final norm(layer-3 state)."""
    torch.manual_seed(0)
    model = AutoMultiExitModel.from_config(tiny_config("gpt2"))
    with torch.no_grad():
        block = model.transformer.h[3]
        for p in (block.attn.c_proj.weight, block.attn.c_proj.bias, block.mlp.c_proj.weight, block.mlp.c_proj.bias):
            p.zero_()
        model.transformer.ln_f.weight.uniform_(0.5, 1.5)  # a non-trivial final norm
        model.transformer.ln_f.bias.normal_(0, 0.1)
    return model


def test_cast_fit_recovers_the_planted_identity_and_saves(planted_model, tmp_path):
    chunks = torch.randint(3, 128, (48, 24), generator=torch.Generator().manual_seed(1))
    result = fit_cast_matrices(planted_model, chunks, [1, 3], num_positions=600, heldout_positions=200, progress=False)
    m3 = result.metrics["layers"]["3"]
    assert m3["r2_fit"] > 0.999999 and m3["r2_heldout"] > 0.999999
    assert m3["positions_fit"] == 600 and m3["positions_heldout"] == 200
    m1 = result.metrics["layers"]["1"]
    assert m1["r2_heldout"] < m3["r2_heldout"] and m1["r2_heldout"] >= m1["r2_identity_heldout"] - 1e-6
    # the fitted W_3 maps every final-normed layer-3 state onto the top state
    ids = chunks[:4]
    with torch.no_grad(), planted_model.capture_layers([3]) as captured:
        top = planted_model.base_model(input_ids=ids).last_hidden_state
    x = planted_model.final_transform(captured[3])
    assert torch.allclose(x @ result.weights[3].T, top, atol=1e-4)

    add_cast_matrices(planted_model, result.weights)
    planted_model.save_pretrained(tmp_path / "cast")
    config = json.loads((tmp_path / "cast" / "config.json").read_text())
    assert config["cast_layer_indices"] == [1, 3]
    loaded = AutoMultiExitModel.from_pretrained(
        tmp_path / "cast",
        MultiExitConfiguration(vocab_projection_mode="SHARED_PROJECTION_CAST_OUTPUTS", use_original_head=False,
                               output_layer_index=1),
    )
    assert torch.equal(loaded.name_to_cast_matrix["cast_1"].weight, result.weights[1])
    with torch.no_grad(), loaded.capture_layers([1]) as captured:
        logits = loaded(input_ids=ids).logits
    expected = loaded.lm_head(loaded.final_transform(captured[1]) @ result.weights[1].T)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_fit_cast_cli_adds_casts_to_a_checkpoint_with_heads(tmp_path):
    """scripts/fit_cast.py on a multi-exit checkpoint: heads kept, casts added, ACD in CAST mode runs."""
    import importlib.util
    from pathlib import Path

    from multiexit.decoding.registry import generate, parse_decoding
    from multiexit.inputs.models import gpt2_tokenizer

    torch.manual_seed(0)
    source = tmp_path / "heads"
    model = AutoMultiExitModel.from_config(tiny_config("gpt2", vocab_size=50257),
                                           MultiExitConfiguration(lm_head_layer_indices=[2, 3]))
    model.save_pretrained(source)
    gpt2_tokenizer().save_pretrained(source)
    script = Path(__file__).resolve().parents[1] / "scripts" / "fit_cast.py"
    spec = importlib.util.spec_from_file_location("fit_cast", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "heads_cast"
    args = ["--model", str(source), "--layers", "1,2", "--output-dir", str(out), "--seq-len", "32",
            "--num-positions", "300", "--heldout-positions", "100", "--eval-tokens", "64", "--metrics", str(tmp_path / "cast.json")]
    assert module.main(args) == 0
    metrics = json.loads((tmp_path / "cast.json").read_text())
    assert set(metrics["layers"]) == {"1", "2"}
    assert all(0 < v["r2_heldout"] <= 1 for v in metrics["layers"].values())
    assert (out / "cast_fit.json").is_file()
    for layer in ("1", "2"):  # held-out LM scores through the cast and through the logit lens
        assert metrics["heldout_lm"][layer]["cast"]["tokens"] == 62
        assert metrics["heldout_lm"][layer]["logit_lens"]["cross_entropy"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["lm_head_layer_indices"] == [2, 3] and config["vocab_projection_mode"] == "LAYER_SPECIFIC_PROJECTION"
    assert config["cast_layer_indices"] == [1, 2]
    loaded = AutoMultiExitModel.from_pretrained(out)
    assert loaded.exit_head_layers == [2, 3] and loaded.cast_layers == [1, 2]
    assert torch.equal(loaded.name_to_lm_exit_head["lm_head_2"].weight, model.name_to_lm_exit_head["lm_head_2"].weight)
    ids = torch.tensor([[464, 3331, 531, 319]])
    setting = parse_decoding("acd", {"upper": 4, "lower": 1, "vocab_projection_mode": "SHARED_PROJECTION_CAST_OUTPUTS"})
    new = generate(loaded, setting, ids, torch.ones_like(ids), 4, eos_token_id=None, pad_token_id=50256)
    assert new.shape == (1, 4)
    assert module.main([*args[:-2], "--layers", "4"]) == 2  # the top layer needs no cast
