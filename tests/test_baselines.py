"""Decoding baselines (contrastive search, contrastive decoding, DoLa) on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from multiexit import AutoMultiExitModel
from multiexit.decoding.registry import derived_settings, last_run_info
from multiexit.decoding import contrastive_decoding as cd
from multiexit.decoding import dola
from multiexit.decoding.registry import generate, parse_decoding, seed_everything

PAD, EOS = 0, 2
NEW = 8


def tiny_model(family="llama", seed=0, layers=6, vocab=128):
    torch.manual_seed(seed)
    return AutoMultiExitModel.from_config(tiny_config(family, vocab_size=vocab, layers=layers)).eval()


def saved(model, folder):
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def expert():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def expert_dir(expert, tmp_path_factory):
    return saved(expert, tmp_path_factory.mktemp("expert"))


@pytest.fixture(scope="module")
def amateur_dir(tmp_path_factory):
    return saved(tiny_model("llama", seed=1, layers=2), tmp_path_factory.mktemp("amateur"))


def prompts(lengths=(5, 8, 3), seed=0, vocab=128):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def left_pad(rows):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def run(model, method, params, rows, eos=None, new=NEW):
    ids, mask = left_pad(rows)
    seed_everything(0)
    return generate(model, parse_decoding(method, params), ids, mask, new, eos_token_id=eos, pad_token_id=PAD)


def padded(tokens, width):
    out = torch.full((width,), PAD, dtype=torch.long)
    out[: tokens.shape[-1]] = tokens.reshape(-1)
    return out


def assert_batch_matches_single(model, method, params, rows, eos=None):
    batch = run(model, method, params, rows, eos)
    assert batch.shape[0] == len(rows) and 0 < batch.shape[1] <= NEW
    for i, row in enumerate(rows):
        single = run(model, method, params, [row], eos)
        assert torch.equal(batch[i], padded(single[0], batch.shape[1])), (method, i, batch[i], single[0])
    return batch


def assert_pads_after_eos(tokens, eos):
    for row in tokens.tolist():
        if eos in row:
            assert all(t == PAD for t in row[row.index(eos) + 1:])


METHOD_CASES = [
    ("contrastive_search", {"top_k": 4, "penalty_alpha": 0.6}),
    ("dola", {"layers": "low"}),
    ("dola", {"layers": [0, 1, 2, 3, 4, 5], "repetition_penalty": 1.0, "final_norm": True}),
    ("contrastive_decoding", {"num_beams": 1}),
    pytest.param("contrastive_decoding", {"num_beams": 3, "amateur_context": "full", "amateur_temperature": 1.0},
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("method,params", METHOD_CASES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_batch_equals_single_prompt(expert, amateur_dir, method, params):
    if method == "contrastive_decoding":
        params = {**params, "amateur": amateur_dir}
    rows = prompts()
    free = assert_batch_matches_single(expert, method, params, rows)
    assert free.shape == (3, NEW)
    # an EOS that the first prompt produces mid-way: that row ends there and gets pad, the others go on
    eos = int(free[0, 3])
    if eos == PAD:
        pytest.skip("the chosen EOS equals the pad id")
    stopped = assert_batch_matches_single(expert, method, params, rows, eos=eos)
    assert_pads_after_eos(stopped, eos)
    if params.get("num_beams", 1) == 1:  # greedy-style loops: row 0 is the free run cut at its EOS
        first = stopped[0].tolist()
        assert first[: first.index(eos) + 1] == free[0, : first.index(eos) + 1].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_other_families_batched(family):
    # gemma3: sliding-window cache layers are repeated and selected too (window 8 < prompt + new tokens)
    model = tiny_model(family, seed=3, layers=4)
    rows = prompts((4, 7))
    assert_batch_matches_single(model, "contrastive_search", {"top_k": 3, "penalty_alpha": 0.5}, rows)
    assert_batch_matches_single(model, "dola", {"layers": [0, 1, 2, 3]}, rows)


def test_contrastive_search_alpha_zero_is_greedy(expert):
    rows = prompts((6, 4, 9), seed=1)
    assert torch.equal(run(expert, "contrastive_search", {"penalty_alpha": 0.0, "top_k": 5}, rows), run(expert, "greedy", {}, rows))


def test_contrastive_search_penalty_changes_output(expert):
    rows = prompts((6, 4, 9), seed=1)
    greedy = run(expert, "greedy", {}, rows, new=20)
    contrastive = run(expert, "contrastive_search", {"penalty_alpha": 0.9, "top_k": 8}, rows, new=20)
    assert not torch.equal(greedy, contrastive)


def test_contrastive_decoding_alpha_one_is_expert_greedy(expert, amateur_dir):
    rows = prompts((6, 4, 9), seed=2)
    greedy = run(expert, "greedy", {}, rows)
    for beams in (1, 3):
        out = run(expert, "contrastive_decoding", {"amateur": amateur_dir, "alpha": 1.0, "num_beams": beams}, rows)
        assert torch.equal(out, greedy), beams


def test_contrastive_decoding_differs_from_greedy_with_a_real_amateur(expert, amateur_dir):
    rows = prompts((6, 4, 9), seed=2)
    out = run(expert, "contrastive_decoding", {"amateur": amateur_dir, "alpha": 0.01, "amateur_temperature": 1.0}, rows)
    assert not torch.equal(out, run(expert, "greedy", {}, rows))


def test_contrastive_decoding_identical_amateur_ties_resolve_to_expert_greedy(expert, expert_dir):
    rows = prompts((6, 4, 9), seed=4)
    params = {"amateur": expert_dir, "amateur_context": "full", "amateur_temperature": 1.0, "alpha": 0.01}
    # every plausible token scores exactly 0 (a tie); the tie goes to the expert's most probable token
    ids, mask = left_pad(rows)
    logits = expert(input_ids=ids, attention_mask=mask).logits[:, -1].detach()
    score, expert_logprobs = cd.contrastive_scores(logits, logits.clone(), 0.01, 1.0)
    finite = torch.isfinite(score)
    assert bool((finite.sum(-1) > 1).all()) and bool((score[finite] == 0).all())
    assert torch.equal(cd._pick(score, expert_logprobs), logits.argmax(-1))
    first = run(expert, "contrastive_decoding", params, rows)
    assert torch.equal(first, run(expert, "contrastive_decoding", params, rows))
    assert torch.equal(first, run(expert, "greedy", {}, rows))


def test_dola_choice_independent_of_batch_neighbours(expert):
    target, *others = prompts((5, 9, 3, 7, 4), seed=5)
    # with these candidates the target (alone) switches from layer 2 to 3 while its neighbours stay on 2,
    # so a batch-averaged divergence would change the target's choices
    params = {"layers": [2, 3, 4, 5], "repetition_penalty": 1.0}
    results = []
    for neighbours in ([], others[:2], others[2:], others):
        out = run(expert, "dola", params, [*neighbours, target])
        results.append((out[-1], dola.last_run_choices()[-1]))
    alone_tokens, alone_choices = results[0]
    assert alone_choices.shape == (NEW,)
    for tokens, choices in results[1:]:
        assert torch.equal(tokens, alone_tokens)
        assert torch.equal(choices, alone_choices)
    # the choice is made per row: in the full batch, rows do not all pick the same layers
    run(expert, "dola", params, [*others, target])
    all_choices = dola.last_run_choices()
    assert len({tuple(row.tolist()) for row in all_choices}) > 1
    assert len(set(alone_choices.tolist())) > 1
    counts = last_run_info({"method": "dola", "params": params})["premature_layer_counts"]
    assert sum(counts.values()) == all_choices.numel()


def test_dola_choice_is_per_row():
    final = torch.tensor([[4.0, 3.0, 0.0, -5.0], [0.0, 3.0, 4.0, -5.0]])
    premature = torch.stack([final[[0, 0]], final[[1, 1]]], dim=1)  # candidate 0 = row 0's final, candidate 1 = row 1's
    _, choice = dola.dola_scores(final, premature, 0.1)
    assert choice.tolist() == [1, 0]  # each row picks the candidate that diverges from ITS final distribution


def test_dola_buckets():
    assert dola.candidate_layers("low", 30) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert dola.candidate_layers("high", 30) == [15, 17, 19, 21, 23, 25, 27, 29]
    assert dola.candidate_layers("low", 48) == list(range(0, 20, 2))
    assert dola.candidate_layers("high", 48) == list(range(28, 48, 2))
    assert dola.candidate_layers("3;1", 6) == [1, 3]
    with pytest.raises(ValueError, match="layers"):
        dola.candidate_layers([6], 6)


def test_dola_scores_follow_the_rule():
    final = torch.tensor([[4.0, 3.0, 0.0, -5.0]])
    premature = torch.stack([torch.tensor([[4.0, 3.0, 0.0, -5.0]]), torch.tensor([[0.0, 3.0, 4.0, -5.0]])], dim=1)
    scores, choice = dola.dola_scores(final, premature, 0.1)
    assert choice.tolist() == [1]  # the identical layer has divergence 0
    lf, lp = torch.log_softmax(final, -1), torch.log_softmax(premature[:, 1], -1)
    keep = lf >= lf.max() + torch.log(torch.tensor(0.1))
    assert torch.allclose(scores[keep], (lf - lp)[keep]) and bool(torch.isinf(scores[~keep]).all())


def test_derived_settings_report_resolved_values(expert, amateur_dir):
    info = derived_settings(expert, parse_decoding("dola", {"layers": "high"}))
    assert info == {"num_layers": 6, "mature_layer": 6, "candidate_layers": [3, 5], "early_layers_final_norm": False}
    info = derived_settings(expert, parse_decoding("contrastive_decoding", {"amateur": amateur_dir}))
    assert info["amateur_num_layers"] == 2 and info["amateur_path"] == amateur_dir
    assert derived_settings(expert, parse_decoding("greedy")) == {}


@pytest.mark.parametrize(
    "method,params,name",
    [
        ("contrastive_search", {"top_k": 0}, "top_k"),
        ("contrastive_search", {"penalty_alpha": 1.5}, "penalty_alpha"),
        ("contrastive_search", {"k": 5}, "k"),
        ("dola", {"layers": "middle"}, "layers"),
        ("dola", {"layers": [-1, 2]}, "layers"),
        ("dola", {"relative_top": 0.0}, "relative_top"),
        ("dola", {"repetition_penalty": "x"}, "repetition_penalty"),
        ("dola", {"final_norm": "yes"}, "final_norm"),
        ("contrastive_decoding", {}, "amateur"),
        ("contrastive_decoding", {"amateur": "/nonexistent/folder"}, "amateur"),
        ("contrastive_decoding", {"amateur": "package:nope"}, "amateur"),
        ("contrastive_decoding", {"amateur": "package:smollm2-135m", "alpha": 0}, "alpha"),
        ("contrastive_decoding", {"amateur": "package:smollm2-135m", "amateur_context": "prompt"}, "amateur_context"),
        ("contrastive_decoding", {"amateur": "package:smollm2-135m", "num_beams": 0}, "num_beams"),
        ("contrastive_decoding", {"amateur": "package:smollm2-135m", "amateur_temperature": -1}, "amateur_temperature"),
    ],
)
def test_invalid_parameters_are_named(method, params, name):
    with pytest.raises(ValueError, match=name):
        parse_decoding(method, params)


def test_dola_layer_outside_model_is_named(expert):
    with pytest.raises(ValueError, match="layers"):
        run(expert, "dola", {"layers": [2, 6]}, prompts())


def test_contrastive_decoding_rejects_a_different_vocabulary(expert, tmp_path):
    other = saved(tiny_model("llama", seed=1, layers=2, vocab=96), tmp_path / "small_vocab")
    with pytest.raises(ValueError, match="tokenizer"):
        run(expert, "contrastive_decoding", {"amateur": other}, prompts())


def test_contrastive_decoding_rejects_a_different_token_mapping(gpt2_tokenizer, tmp_path):
    expert_model = tiny_model("gpt2", seed=0, layers=2, vocab=len(gpt2_tokenizer))
    expert_path = saved(expert_model, tmp_path / "expert")
    gpt2_tokenizer.save_pretrained(expert_path)
    expert_model = AutoMultiExitModel.from_pretrained(expert_path).eval()
    same = saved(tiny_model("gpt2", seed=1, layers=1, vocab=len(gpt2_tokenizer)), tmp_path / "same")
    gpt2_tokenizer.save_pretrained(same)
    ids = gpt2_tokenizer(["The news today"], return_tensors="pt").input_ids
    params = {"amateur": same}
    out = generate(expert_model, parse_decoding("contrastive_decoding", params), ids, torch.ones_like(ids), 3,
                   eos_token_id=None, pad_token_id=PAD)
    assert out.shape == (1, 3)
    swapped = saved(tiny_model("gpt2", seed=1, layers=1, vocab=len(gpt2_tokenizer)), tmp_path / "swapped")
    gpt2_tokenizer.save_pretrained(swapped)
    tokenizer_json = json.loads((tmp_path / "swapped" / "tokenizer.json").read_text())
    vocab = tokenizer_json["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
    (tmp_path / "swapped" / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    with pytest.raises(ValueError, match="tokenizer"):
        generate(expert_model, parse_decoding("contrastive_decoding", {"amateur": swapped}), ids, torch.ones_like(ids), 3,
                 eos_token_id=None, pad_token_id=PAD)


def test_truncated_amateur_shares_the_tokenizer(expert_dir, tmp_path):
    folder = cd.truncate_model(expert_dir, 2, tmp_path / "first2")
    amateur = AutoMultiExitModel.from_pretrained(str(folder))
    assert amateur.config.num_hidden_layers == 2
    full = AutoMultiExitModel.from_pretrained(expert_dir)
    assert torch.equal(amateur.model.layers[1].mlp.up_proj.weight, full.model.layers[1].mlp.up_proj.weight)
    with pytest.raises(ValueError, match="num_layers"):
        cd.truncate_model(expert_dir, 6, tmp_path / "too_many")
