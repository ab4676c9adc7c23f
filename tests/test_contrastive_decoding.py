"""Contrastive decoding (beam search, truncated amateurs, derived settings) against independent rebuilds.

The beam reference below is written from the module docstring and docs/baselines.md: one prompt at a time, no KV
cache, every step a full forward of a plain HF model; score(v) = log p_expert(v) - log p_amateur(v)/T-softmax on
{p_expert >= alpha * max p_expert}, summed along a beam; a finished beam keeps its score and is extended with pad;
EOS is barred while fewer than min_new_tokens tokens exist (a row whose candidates are all EOS takes the expert's
most probable other token at score 0); the search stops when every beam has finished or at max_new_tokens.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ending_steps, left_pad, tiny_config
from multiexit import AutoMultiExitModel
from multiexit.decoding import contrastive_decoding as cd

PAD = 0
ALPHA, TEMPERATURE, BEAMS = 0.1, 0.5, 3


def tiny(family="llama", seed=0, layers=4, vocab=128, scale=1.0):
    torch.manual_seed(seed)
    model = AutoMultiExitModel.from_config(tiny_config(family, vocab_size=vocab, layers=layers)).eval()
    with torch.no_grad():  # sharper logits than the random init: plausible sets of a few dozen tokens, not all 128
        model.get_output_embeddings().weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(expert model, expert folder, amateur folder) of tiny random llamas sharing a vocabulary."""
    expert = tiny(seed=0, layers=4, scale=5.0)
    expert_dir = tmp_path_factory.mktemp("cd_expert")
    expert.save_pretrained(expert_dir)
    amateur_dir = tmp_path_factory.mktemp("cd_amateur")
    tiny(seed=1, layers=1, scale=5.0).save_pretrained(amateur_dir)
    return expert, str(expert_dir), str(amateur_dir)


@pytest.fixture(scope="module")
def plain(pair):
    _, expert_dir, amateur_dir = pair
    load = lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()  # noqa: E731
    return load(expert_dir), load(amateur_dir)


PROMPTS = [[5, 17, 99, 42, 7], [64, 3, 120]]



def params(pair, beams=BEAMS):
    return {"amateur": pair[2], "alpha": ALPHA, "amateur_temperature": TEMPERATURE, "amateur_context": "last_token",
            "num_beams": beams}


def project(pair, rows, new, eos=None, min_new=0, beams=BEAMS):
    ids, mask = left_pad(rows, PAD)
    with torch.no_grad():
        return cd.contrastive_decoding(pair[0], ids, mask, new, params(pair, beams), eos_token_id=eos, pad_token_id=PAD,
                                       min_new_tokens=min_new)


def last_logprobs(model, seq, temperature=1.0):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0, -1].double()
    return torch.log_softmax(logits / temperature, dim=-1).tolist()


def ref_candidates(plain, prompt, generated, eos, ban_eos):
    """{token: CD score} of one unfinished beam, from full forward passes."""
    expert, amateur = plain
    e = last_logprobs(expert, prompt + generated)
    a = last_logprobs(amateur, prompt[-1:] + generated, TEMPERATURE)
    top = max(e)
    out = {v: e[v] - a[v] for v in range(len(e)) if e[v] >= top + math.log(ALPHA)}
    if ban_eos:
        out = {v: s for v, s in out.items() if v not in eos}
        if not out:
            other = max((v for v in range(len(e)) if v not in eos), key=lambda v: e[v])
            out = {other: 0.0}
    return out


def ref_beam(plain, prompt, new, eos=(), min_new=0, beams=BEAMS):
    live = [(0.0, [], False)]  # (summed score, tokens, finished)
    for step in range(new):
        pool = []
        for score, tokens, done in live:
            if done:
                pool.append((score, tokens + [PAD], True))
                continue
            for v, s in ref_candidates(plain, prompt, tokens, eos, step < min_new).items():
                pool.append((score + s, tokens + [v], v in eos))
        pool.sort(key=lambda c: -c[0])
        # the rebuild holds only finite candidates: the beam tests keep more than `beams` (greedy may have one)
        assert len(pool) > beams or beams == 1 == len(pool), "too few candidates"
        gaps = [pool[i][0] - pool[i + 1][0] for i in range(min(beams, len(pool) - 1))]
        assert min(gaps, default=1.0) > 1e-4, "near tie: pick another prompt"
        live = pool[:beams]
        if all(done for _, _, done in live):
            break
    return max(live, key=lambda c: c[0])[1]


def test_beam_search_equals_rebuild_on_a_batch(pair, plain):
    """Two left-padded prompts, three beams, no EOS: each row equals the plain beam search of its own prompt."""
    out = project(pair, PROMPTS, 4)
    assert out.dtype == torch.long and out.shape == (2, 4)
    for row, prompt in zip(out.tolist(), PROMPTS):
        assert row == ref_beam(plain, prompt, 4)


def test_beam_search_with_eos_stops_when_all_beams_end(pair, plain):
    """Many ids are EOS: beams finish at different steps and are padded; EOS is barred for the first two steps; a
    batch runs until every beam of every row has ended, a lone prompt whose beams all end stops early."""
    eos = list(range(3, 105))
    expected = [ref_beam(plain, prompt, 6, eos=set(eos), min_new=2) for prompt in PROMPTS]
    assert len(expected[0]) < 6 and len(expected[1]) == 6  # the first prompt's beams all end early, not the second's
    out = project(pair, PROMPTS, 6, eos=eos, min_new=2)
    assert out.dtype == torch.long and out.shape == (2, 6)
    for row, want in zip(out.tolist(), expected):
        assert row == want + [PAD] * (6 - len(want))
        assert not set(row[:2]) & set(eos)
    alone = project(pair, PROMPTS[:1], 6, eos=eos, min_new=2)
    assert alone.tolist() == [expected[0]]


def test_greedy_equals_rebuild_and_stops_when_every_row_has_ended(pair, plain):
    """num_beams=1: each row is the rebuild's one-beam search; a finished row is padded while the other runs on, and
    the batch stops at the step where its last row ends."""
    free = project(pair, PROMPTS, 6, beams=1).tolist()
    assert free == [ref_beam(plain, prompt, 6, beams=1) for prompt in PROMPTS]
    a, b = free
    s0, s1 = ending_steps(a, b)  # EOS ids first seen at step s0 of row 0, s1 > s0 of row 1
    assert s1 < 5
    assert project(pair, PROMPTS, 6, eos=[a[s0]], beams=1).tolist() == [a[:s0 + 1] + [PAD] * (5 - s0), b]
    both = project(pair, PROMPTS, 6, eos=[a[s0], b[s1]], beams=1).tolist()
    assert both == [a[:s0 + 1] + [PAD] * (s1 - s0), b[:s1 + 1]]
    # no pad id: a finished row repeats the first EOS id
    ids, mask = left_pad(PROMPTS, PAD)
    with torch.no_grad():
        out = cd.contrastive_decoding(pair[0], ids, mask, 6, params(pair, 1), eos_token_id=[a[s0], b[s1]], pad_token_id=None)
    assert out.tolist() == [a[:s0 + 1] + [a[s0]] * (s1 - s0), b[:s1 + 1]]


def test_contrastive_decoding_checks_its_inputs_and_reads_the_experts_original_head(pair):
    from multiexit import MultiExitConfiguration
    from multiexit.decoding.common import multi_exit_output

    expert = pair[0]
    ids, mask = left_pad(PROMPTS, PAD)

    def decode(ids, mask, new=2, min_new=0):
        with torch.no_grad():
            return cd.contrastive_decoding(expert, ids, mask, new, params(pair, 1), eos_token_id=None, pad_token_id=PAD,
                                           min_new_tokens=min_new)

    for bad_mask, message in [(mask[:, 1:], "attention_mask shape"), (mask.flip(1), "left-padded")]:
        with pytest.raises(ValueError, match=message):
            decode(ids, bad_mask)
    with pytest.raises(ValueError, match="min_new_tokens"):
        decode(ids, mask, min_new=-1)
    alone = torch.tensor([PROMPTS[0]])
    assert torch.equal(decode(alone, None, 4), decode(alone, torch.ones_like(alone), 4))  # no mask: every token is real
    # an expert left reading an exit still answers with its original head
    expected = decode(ids, mask, 4)
    with torch.no_grad():
        head = expert(input_ids=ids, attention_mask=mask).logits
    with multi_exit_output(expert, MultiExitConfiguration(use_original_head=False, output_layer_index=2,
                                                          vocab_projection_mode="shared_projection_direct")):
        with torch.no_grad():
            assert not torch.allclose(expert(input_ids=ids, attention_mask=mask).logits, head)  # the exit differs
        assert torch.equal(decode(ids, mask, 4), expected)


def test_beam_finished_beam_keeps_its_score_while_others_run_on(pair, plain):
    """A beam that ends early stays in the beam set at its own score (pad costs nothing) while unfinished beams are
    still extended; here the winner ends at step 3 and is padded once before all beams have ended."""
    eos = list(range(3, 80))
    expected = ref_beam(plain, PROMPTS[0], 6, eos=set(eos), min_new=1)
    assert len(expected) < 6 and expected[-1] == PAD
    assert project(pair, PROMPTS[:1], 6, eos=eos, min_new=1).tolist() == [expected]


@pytest.mark.parametrize("beams", [BEAMS, 1])  # 1: the greedy path
def test_beam_min_new_tokens_falls_back_to_expert_best_non_eos(pair, plain, beams):
    """All plausible tokens of the first step are EOS: with min_new_tokens=1 the single new token is the expert's most
    probable non-EOS token (score 0), for every row."""
    expert, _ = plain
    for prompt in PROMPTS:
        e = last_logprobs(expert, prompt)
        eos = [v for v in range(len(e)) if e[v] >= max(e) + math.log(ALPHA)]
        fallback = max((v for v in range(len(e)) if v not in eos), key=lambda v: e[v])
        out = project(pair, [prompt], 1, eos=eos, min_new=1, beams=beams)
        assert out.tolist() == [[fallback]]
        free = project(pair, [prompt], 1, eos=eos, min_new=0, beams=beams)  # without min_new_tokens an EOS is allowed
        assert free.tolist()[0][0] in eos


@pytest.mark.parametrize("beams", [BEAMS, 1])  # 1: the greedy path
def test_beam_zero_new_tokens_is_an_empty_long_tensor(pair, beams):
    out = project(pair, PROMPTS, 0, beams=beams)
    assert out.dtype == torch.long and tuple(out.shape) == (2, 0)


@pytest.mark.parametrize("beams", [BEAMS, 1])  # 1: the greedy path
def test_beam_one_new_token_is_the_best_single_cd_token(pair, plain, beams):
    """One step of beam search (or of the greedy search) is the argmax of the CD score over the plausible set."""
    out = project(pair, PROMPTS, 1, beams=beams)
    for row, prompt in zip(out.tolist(), PROMPTS):
        scores = ref_candidates(plain, prompt, [], set(), False)
        assert row == [max(scores, key=scores.get)]


def test_load_amateur_keeps_one_model_per_source_device_and_dtype(pair):
    amateur_dir = pair[2]
    full = cd.load_amateur(amateur_dir, torch.device("cpu"), torch.float32)
    half = cd.load_amateur(amateur_dir, torch.device("cpu"), torch.bfloat16)
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert cd.load_amateur(amateur_dir, "cpu", torch.float32) is full  # loaded once, then reused
    assert not full.training and next(full.parameters()).device.type == "cpu"


def test_settings_are_checked_at_their_bounds_with_messages_naming_the_value(pair):
    from multiexit.decoding.registry import parse_decoding
    from multiexit.inputs.models import PACKAGED_MODELS

    _, expert_dir, _ = pair
    ok = {"amateur": expert_dir}
    prefix = "decoding method 'contrastive_decoding': "
    for source in ("", "   "):
        with pytest.raises(ValueError, match=rf"^{prefix}amateur must be a model source \(package:<name>, a folder or a Hub name\), got '{source}'$"):
            parse_decoding("contrastive_decoding", {"amateur": source})
    known = ", ".join(sorted(PACKAGED_MODELS))
    with pytest.raises(ValueError, match=rf"^{prefix}amateur: unknown packaged model 'nope'; known: {known}$"):
        parse_decoding("contrastive_decoding", {"amateur": "package:nope"})
    for source in ("./no-such-amateur", "~/no-such-amateur", "/no-such-amateur"):  # paths are checked, Hub names are not
        with pytest.raises(ValueError, match="is not a model folder"):
            parse_decoding("contrastive_decoding", {"amateur": source})
    assert parse_decoding("contrastive_decoding", {"amateur": "gpt2"}).params["amateur"] == "gpt2"
    for key, good, bad in [("alpha", 1.0, 1.5), ("amateur_temperature", 100, 0), ("amateur_temperature", 1e-3, 100.5),
                           ("num_beams", 1000, 1001), ("num_beams", 2, 2.0)]:
        assert parse_decoding("contrastive_decoding", {**ok, key: good}).params[key] == good
        with pytest.raises(ValueError, match=rf"^{prefix}{key} must be"):
            parse_decoding("contrastive_decoding", {**ok, key: bad})


# ------------------------------------------------------------------------------------------------ truncate_model


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory, gpt2_tokenizer):
    folder = tmp_path_factory.mktemp("cd_source")
    tiny("qwen2", seed=3, layers=4).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


def test_truncate_model_keeps_first_blocks_layer_types_and_tokenizer(source_dir, gpt2_tokenizer, tmp_path):
    out = cd.truncate_model(str(source_dir), 1, tmp_path / "first1")
    config = json.loads((out / "config.json").read_text())
    original = json.loads((source_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    assert len(original["layer_types"]) == 4 and config["layer_types"] == original["layer_types"][:1]
    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == gpt2_tokenizer.get_vocab()
    weights = load_file(str(out / "model.safetensors"))
    assert not any(".layers.1." in k for k in weights)
    source = load_file(str(source_dir / "model.safetensors"))
    key = next(k for k in source if ".layers.0." in k)
    assert torch.equal(weights[key], source[key])


def test_truncate_model_saves_float32_from_a_half_precision_source(tmp_path):
    source = tmp_path / "half"
    tiny("llama", seed=4, layers=3).half().save_pretrained(source)
    assert {t.dtype for t in load_file(str(source / "model.safetensors")).values()} == {torch.float16}
    out = cd.truncate_model(str(source), 2, tmp_path / "first2")
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.float32}


def test_truncate_model_reuses_a_complete_folder(pair, tmp_path):
    _, expert_dir, _ = pair
    existing = cd.truncate_model(expert_dir, 2, tmp_path / "first2")
    before = (existing / "config.json").read_text()
    # a second call must not even look at the source (which here does not exist)
    assert cd.truncate_model(str(tmp_path / "no_such_model"), 3, existing) == existing
    assert (existing / "config.json").read_text() == before


@pytest.mark.parametrize("bad", [True, 0, 4, 2.0])
def test_truncate_model_rejects_bad_layer_counts(pair, tmp_path, bad):
    _, expert_dir, _ = pair  # 4 layers: 1..3 allowed
    with pytest.raises(ValueError, match=r"1\.\.3, got"):
        cd.truncate_model(expert_dir, bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------------------------------- _derived


def test_derived_reports_amateur_size(pair, plain):
    expert, _, amateur_dir = pair
    info = cd._derived(expert, {"amateur": amateur_dir})
    _, amateur = plain
    assert info["amateur_num_layers"] == 1
    assert info["amateur_parameters"] == sum(p.numel() for p in amateur.parameters())
    assert "amateur_load_error" not in info


def test_derived_records_a_load_error(pair, tmp_path):
    expert, _, _ = pair
    broken = tmp_path / "no_weights"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(tiny_config("llama").to_dict()))
    info = cd._derived(expert, {"amateur": str(broken)})
    assert "amateur_parameters" not in info and "amateur_num_layers" not in info
    error = info["amateur_load_error"]
    assert isinstance(error, str) and error not in ("", "None")
