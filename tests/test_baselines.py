"""Decoding baselines (contrastive search, contrastive decoding, DoLa) on tiny random models."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from conftest import ending_steps, left_pad, sharpen, tiny_config
from multiexit import AutoMultiExitModel, MultiExitConfiguration
from multiexit.decoding.registry import derived_settings, last_run_info
from multiexit.decoding.common import multi_exit_output
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



def run(model, method, params, rows, eos=None, new=NEW):
    ids, mask = left_pad(rows, PAD)
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
    ids, mask = left_pad(rows, PAD)
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
    # the target's choice varies over the steps (asserted below), so a batch-averaged divergence, which mixes in
    # the neighbours' divergences, could change it
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


def test_dola_divergence_values_by_hand():
    """0.5 * (KL(M || q_N) + KL(M || q_j)) averaged over the vocabulary, M = (q_N + q_j) / 2, written out with
    Python floats; a token impossible under both (M = 0) adds nothing."""
    q_final = [0.5, 0.3, 0.2, 0.0]
    q_layers = [[0.1, 0.1, 0.8, 0.0], [0.4, 0.4, 0.2, 0.0]]
    expected = []
    for q_j in q_layers:
        m = [(a + b) / 2 for a, b in zip(q_final, q_j)]
        kl = lambda q: sum(mi * (math.log(mi) - math.log(qi)) for mi, qi in zip(m, q) if mi > 0) / len(m)
        expected.append(0.5 * (kl(q_final) + kl(q_j)))
    log = lambda rows: torch.tensor(rows, dtype=torch.float64).log()
    got = dola.divergence(log([q_final]), log([q_layers]))
    assert got.shape == (1, 2) and torch.allclose(got[0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    assert bool(torch.isfinite(got).all())


def test_dola_relative_top_1_keeps_only_the_top_token_and_the_last_run_starts_empty(monkeypatch):
    final = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]])
    premature = torch.tensor([[[3.0, 0.0, 1.0]], [[0.0, 1.0, 2.0]]])
    scores, _ = dola.dola_scores(final, premature, 1.0)
    assert torch.isfinite(scores).tolist() == [[False, True, False], [False, False, True]]
    monkeypatch.setattr(dola, "_LAST_CHOICES", [])  # no DoLa call yet in this process
    assert dola.last_run_choices() is None and dola.last_run_layer_counts() == {}


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
    # the message names both widths and both paths (a model built in memory has the path '')
    message = ("contrastive_decoding: the amateur's vocabulary (96 outputs, '') differs from the expert's "
               "(128 outputs, ''); the amateur must share the expert's tokenizer")
    with pytest.raises(ValueError) as error:
        cd.check_tokenizers(expert, tiny_model("llama", seed=1, layers=2, vocab=96))
    assert str(error.value) == message


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
    for a, b in [("hello", "world"), ("cat", "dog"), ("red", "blue")]:  # three swapped pairs and one token more
        vocab[a], vocab[b] = vocab[b], vocab[a]
    tokenizer_json["added_tokens"].append({"id": len(gpt2_tokenizer), "content": "<|zz|>", "single_word": False,
                                           "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (tmp_path / "swapped" / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    changed = sorted(["hello", "world", "cat", "dog", "red", "blue", "<|zz|>"])  # tokens the two maps disagree on
    with pytest.raises(ValueError, match="tokenizer") as error:
        generate(expert_model, parse_decoding("contrastive_decoding", {"amateur": swapped}), ids, torch.ones_like(ids), 3,
                 eos_token_id=None, pad_token_id=PAD)
    assert f"map 7 token(s) differently (e.g. {changed[:5]}); the amateur must share" in str(error.value)
    # the pair is checked once and remembered: a second expert with the swapped map is still checked against `same`
    swapped_expert = AutoMultiExitModel.from_pretrained(swapped).eval()
    with pytest.raises(ValueError, match="map 7 token"):
        cd.check_tokenizers(swapped_expert, cd.load_amateur(same, torch.device("cpu"), torch.float32))


def test_contrastive_decoding_checks_a_pair_of_tokenizers_once(expert_dir, amateur_dir, monkeypatch):
    loads = []
    monkeypatch.setattr(cd, "_load_vocab", lambda folder: loads.append(folder))
    expert_model = AutoMultiExitModel.from_pretrained(expert_dir)
    amateur = AutoMultiExitModel.from_pretrained(amateur_dir)
    for _ in range(3):
        cd.check_tokenizers(expert_model, amateur)
    assert loads == [expert_dir, amateur_dir]


def test_truncated_amateur_shares_the_tokenizer(expert_dir, tmp_path):
    folder = cd.truncate_model(expert_dir, 2, tmp_path / "first2")
    amateur = AutoMultiExitModel.from_pretrained(str(folder))
    assert amateur.config.num_hidden_layers == 2
    full = AutoMultiExitModel.from_pretrained(expert_dir)
    assert torch.equal(amateur.model.layers[1].mlp.up_proj.weight, full.model.layers[1].mlp.up_proj.weight)
    with pytest.raises(ValueError, match="num_layers"):
        cd.truncate_model(expert_dir, 6, tmp_path / "too_many")


# ---------------------------------------------------------------------------------------------------------------
# Independent rebuilds of the reference math (HF transformers 4.4x DoLa, Su et al.'s contrastive search, Li et al.'s
# contrastive decoding): one sequence at a time through a plain HF model, with HF's own KV cache as HF's generate
# uses it (``Prefix``); the next-token choice is written out by hand from the references.
# The bug variants (``bug=...``) are the planted bugs of issue 13: each rebuild returns, next to its own token,
# the token a buggy implementation would pick on the same prefix, so a test can show the bug changes a step.
# ---------------------------------------------------------------------------------------------------------------

import copy
from pathlib import Path

from transformers import AutoModelForCausalLM

from multiexit.decoding import common
from multiexit.decoding import contrastive_search as cs


def plain_hf(folder):
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


class Prefix:
    """One sequence in a plain HF model with HF's own KV cache: ``push`` tokens, ``forward`` reads the last position.

    ``finals`` keeps the final-layer hidden state of every position fed so far (prompt and generated tokens)."""

    def __init__(self, model, tokens):
        self.model, self.cache, self.pending, self.finals = model, None, list(tokens), []

    def push(self, token):
        self.pending.append(int(token))

    def forward(self):
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([self.pending]), cache=self.cache, use_cache=True,
                             output_hidden_states=True)
        self.cache, self.pending = out.cache, []
        self.finals.append(out.hidden_states[-1][0])
        return out.logits[0, -1].float(), [h[0, -1] for h in out.hidden_states]

    def final_hidden_after(self, tokens):
        """The final-layer hidden state one token further on, for each of ``tokens`` (one row each), leaving this
        prefix as it is."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(tokens))
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor(tokens).view(-1, 1), cache=cache, use_cache=True,
                             output_hidden_states=True)
        return out.hidden_states[-1][:, -1]


def ref_penalise(scores, seen, penalty):
    scores = scores.clone()
    for t in set(seen):
        scores[t] = scores[t] / penalty if scores[t] > 0 else scores[t] * penalty
    return scores


def ref_layer_logprobs(model, hiddens, layers, norm_early):
    """log_softmax(lm_head(h_l)) per candidate layer (HF: the bare head); ``norm_early``: the final norm first."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        hidden = torch.stack([hiddens[layer] for layer in layers])  # one row per layer: the head reads its weight once
        hidden = model.model.norm(hidden) if norm_early else hidden
        logprobs = torch.log_softmax(head(hidden).float(), -1)
    return dict(zip(layers, logprobs))


def ref_dola_decide(final_logits, layer_logprobs, seq, relative_top, penalty, eos=None, ban_eos=False):
    """One DoLa step as HF 4.4x computes it: returns (token, chosen layer)."""
    final = torch.log_softmax(final_logits, -1)
    best_layer, best_div = None, None
    for layer, logp in layer_logprobs.items():  # ascending: a strict '>' keeps the lower layer on ties
        mix = 0.5 * (final.exp() + logp.exp())
        # F.kl_div(input=log q, target=M) = M * (log M - log q): KL(M || q), mean over the vocabulary
        kl_final = torch.where(mix > 0, mix * (mix.log() - final), torch.zeros_like(mix)).sum() / mix.numel()
        kl_layer = torch.where(mix > 0, mix * (mix.log() - logp), torch.zeros_like(mix)).sum() / mix.numel()
        div = 0.5 * (kl_final + kl_layer)
        if best_div is None or div > best_div:
            best_layer, best_div = layer, div
    scores = torch.full_like(final, float("-inf"))
    keep = final >= final.max() + math.log(relative_top)
    scores[keep] = final[keep] - layer_logprobs[best_layer][keep]
    if penalty != 1.0:
        scores = ref_penalise(scores, seq, penalty)
    if ban_eos:
        scores[eos] = float("-inf")
    return int(scores.argmax()), best_layer


def ref_dola(model, prompt, steps, layers, relative_top=0.1, penalty=1.2, final_norm=False, eos=None, min_new=0):
    """Greedy DoLa for one prompt; returns tokens, chosen layers and, per planted bug, the steps it changes."""
    seq, tokens, chosen = list(prompt), [], []
    changed = {"no_penalty": [], "final_norm_inverted": []}
    prefix = Prefix(model, prompt)
    for step in range(steps):
        final_logits, hiddens = prefix.forward()
        right = ref_layer_logprobs(model, hiddens, sorted(layers), final_norm)
        inverted = ref_layer_logprobs(model, hiddens, sorted(layers), not final_norm)
        ban = eos is not None and step < min_new
        token, layer = ref_dola_decide(final_logits, right, seq, relative_top, penalty, eos, ban)
        if ref_dola_decide(final_logits, right, seq, relative_top, 1.0, eos, ban)[0] != token:
            changed["no_penalty"].append(step)
        if ref_dola_decide(final_logits, inverted, seq, relative_top, penalty, eos, ban)[0] != token:
            changed["final_norm_inverted"].append(step)
        tokens.append(token)
        chosen.append(layer)
        seq.append(token)
        prefix.push(token)
        if token == eos:
            break
    return tokens, chosen, changed


def news_prompts(tokenizer, count=4, length=32):
    """The first ``count`` articles of gensim's Lee corpus, first ``length`` tokens (read here, not via multiexit)."""
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return [tokenizer(line).input_ids[:length] for line in lines[:count]]


def tiny_folder(tmp_path_factory, name, tied, layers=12, seed=7):
    cfg = tiny_config("llama", layers=layers)
    cfg.tie_word_embeddings = tied
    torch.manual_seed(seed)
    model = sharpen(AutoMultiExitModel.from_config(cfg).eval())
    return saved(model, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_pair(request, tmp_path_factory):
    folder = tiny_folder(tmp_path_factory, "tied" if request.param else "untied", request.param)
    return request.param, AutoMultiExitModel.from_pretrained(folder).eval(), plain_hf(folder)


def project_dola(model, rows, steps, params, eos=None, min_new=0):
    ids, mask = left_pad(rows, PAD)
    setting = parse_decoding("dola", params)
    with torch.inference_mode():
        out = dola.dola(model, ids, mask, steps, dict(setting.params), eos_token_id=eos, pad_token_id=PAD,
                        min_new_tokens=min_new)
    return out, dola.last_run_choices()


def test_dola_buckets_as_hf():
    # HF 4.4x: tied embeddings skip layer 0 (start 2; 1 for N = 2); N > 40 uses 20-layer windows
    assert dola.candidate_layers("low", 30, tied_embeddings=True) == [2, 4, 6, 8, 10, 12, 14]  # SmolLM2-135M
    assert dola.candidate_layers("high", 30, tied_embeddings=True) == [15, 17, 19, 21, 23, 25, 27, 29]
    assert dola.candidate_layers("low", 24, tied_embeddings=True) == [2, 4, 6, 8, 10]  # gpt2-medium
    assert dola.candidate_layers("high", 24, tied_embeddings=True) == [12, 14, 16, 18, 20, 22]
    assert dola.candidate_layers("low", 12, tied_embeddings=True) == [2, 4]  # gpt-neo-125m
    assert dola.candidate_layers("low", 32, tied_embeddings=False) == [0, 2, 4, 6, 8, 10, 12, 14]  # LLaMA-7B
    assert dola.candidate_layers("low", 48, tied_embeddings=True) == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert dola.candidate_layers("low", 48, tied_embeddings=False) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert dola.candidate_layers("high", 48, tied_embeddings=True) == [28, 30, 32, 34, 36, 38, 40, 42, 44, 46]
    assert dola.candidate_layers("low", 4, tied_embeddings=True) == [2]  # start == N // 2
    assert dola.candidate_layers("low", 2, tied_embeddings=True) == [1]
    with pytest.raises(ValueError, match="empty"):
        dola.candidate_layers("low", 3, tied_embeddings=True)  # range(2, 1, 2)
    assert dola.candidate_layers([0, 3], 6, tied_embeddings=True) == [0, 3]  # an explicit list is taken as given
    assert dola.candidate_layers("low", 1, tied_embeddings=True) == [0]  # N < 2: HF starts at 0
    assert [dola.first_candidate_layer(n, True) for n in (1, 2, 3)] == [0, 1, 2]
    # the windows start above 40 layers: N = 40 halves, N = 41 takes the last 20
    assert dola.candidate_layers("high", 40) == list(range(20, 40, 2))
    assert dola.candidate_layers("high", 41) == list(range(21, 41, 2))
    assert dola.candidate_layers("low", 41) == list(range(0, 20, 2))


def test_dola_settings_at_their_bounds():
    for bucket in ("low", " LOW ", "High"):
        assert parse_decoding("dola", {"layers": bucket}).params["layers"] == bucket  # resolved against the model later
    for key, good, bad in [("relative_top", 1.0, 1.5), ("relative_top", 1e-6, 0.0), ("repetition_penalty", 100.0, 0.0),
                           ("repetition_penalty", 1e-6, 100.5)]:
        assert parse_decoding("dola", {key: good}).params[key] == good
        with pytest.raises(ValueError, match=rf"{key} must be in \(0\.0, "):
            parse_decoding("dola", {key: bad})


def test_dola_layer_lists_as_text_and_their_errors():
    # the forms a config or a CLI gives: brackets or parentheses, ',' or ';', spaces; sorted
    for text in ("[4, 2]", "(2;4)", " 4,2 ", "[2;4]"):
        assert dola.candidate_layers(text, 6) == [2, 4], text
    with pytest.raises(ValueError, match=r"outside 0\.\.5"):
        dola.candidate_layers("-1, 2", 6)  # a negative index is read as one, then refused
    with pytest.raises(ValueError, match=r"negative layer indices \[-1\]"):
        parse_decoding("dola", {"layers": "-1;2"})
    for spec, message in [(3.5, "expected 'low', 'high' or a list of layer indices, got 3.5"),
                          ([True, 2], "expected layer indices, got True"),
                          ("[2, x]", "expected 'low', 'high' or a list of layer indices, got '\\[2, x\\]'"),
                          ("X2, 4", "got 'X2, 4'"),  # a stray letter at either end is not stripped away
                          ("[2, 4X]", "got '\\[2, 4X\\]'"),
                          ("[]", "the candidate list is empty"),
                          ([2, 2], "duplicate layers")]:
        with pytest.raises(ValueError, match=message):
            dola.candidate_layers(spec, 6)


def test_dola_counts_layer_0_and_reports_final_norm():
    """Layer 0 (the embeddings' output) is a candidate like any other: its choices are counted."""
    model = tiny_model("llama", seed=0)
    setting = parse_decoding("dola", {"layers": [0], "final_norm": True})
    assert derived_settings(model, setting)["early_layers_final_norm"] is True
    rows = prompts((4, 6))
    out = run(model, "dola", {"layers": [0]}, rows)
    assert last_run_info(parse_decoding("dola", {"layers": [0]}))["premature_layer_counts"] == {0: out.numel()}


@pytest.mark.parametrize("bucket", ["low", "high", "all"])
def test_dola_equals_rebuild_on_tiny_models(tiny_pair, bucket):
    tied, model, reference = tiny_pair
    layers = list(range(12)) if bucket == "all" else dola.model_candidate_layers(model, bucket)
    assert (layers[0] == 2) == (tied and bucket == "low")
    params = {"layers": layers if bucket == "all" else bucket}
    rows = prompts((5, 9, 3), seed=11)
    out, choices = project_dola(model, rows, 12, params)
    for i, row in enumerate(rows):
        tokens, chosen, _ = ref_dola(reference, row, 12, layers)
        assert out[i].tolist() == tokens, (i, out[i].tolist(), tokens)
        assert choices[i].tolist() == chosen, (i, choices[i].tolist(), chosen)
    if bucket == "all":  # the choice is not stuck on one candidate
        assert len(set(choices.flatten().tolist())) > 1


def test_dola_equals_rebuild_with_final_norm_and_penalty_2(tiny_pair):
    """The early layers read through the final norm (``final_norm: true``), and a penalty of 2, as the rebuild."""
    _, model, reference = tiny_pair
    layers = list(range(12))
    rows = prompts((5, 9), seed=11)
    outputs = {}
    for final_norm, penalty in [(True, 1.2), (False, 2.0), (False, 1.2)]:
        out, choices = project_dola(model, rows, 8, {"layers": layers, "final_norm": final_norm, "repetition_penalty": penalty})
        for i, row in enumerate(rows):
            tokens, chosen, _ = ref_dola(reference, row, 8, layers, penalty=penalty, final_norm=final_norm)
            assert out[i].tolist() == tokens and choices[i].tolist() == chosen, (final_norm, penalty, i)
        outputs[final_norm, penalty] = (out.tolist(), choices.tolist())
    assert len({repr(v) for v in outputs.values()}) == 3  # each setting changes the run


def test_dola_checks_its_inputs_and_reads_the_original_head(tiny_pair):
    _, model, _ = tiny_pair
    ids, mask = left_pad(prompts((5, 3)), PAD)
    with pytest.raises(ValueError, match="attention_mask shape"):
        dola.dola(model, ids, mask[:, 1:], 4, dict(parse_decoding("dola").params), eos_token_id=None, pad_token_id=PAD)
    with pytest.raises(ValueError, match="min_new_tokens"):
        dola.dola(model, ids, mask, 4, dict(parse_decoding("dola").params), eos_token_id=None, pad_token_id=PAD,
                  min_new_tokens=-1)
    # no mask: every token is real
    alone, params = torch.tensor([[5, 6, 7]]), dict(parse_decoding("dola").params)
    with torch.inference_mode():
        unmasked = dola.dola(model, alone, None, 4, params, eos_token_id=None, pad_token_id=PAD)
        assert torch.equal(unmasked, dola.dola(model, alone, torch.ones_like(alone), 4, params, eos_token_id=None,
                                               pad_token_id=PAD))
    # a model left reading an exit still contrasts its original head (the mature layer) with the candidates
    expected = project_dola(model, [[5, 6, 7]], 6, {"layers": "high"})[0]
    with multi_exit_output(model, MultiExitConfiguration(use_original_head=False, output_layer_index=2,
                                                       vocab_projection_mode="shared_projection_direct")):
        assert torch.equal(project_dola(model, [[5, 6, 7]], 6, {"layers": "high"})[0], expected)


def test_dola_falls_back_to_the_models_best_other_token_when_only_eos_is_plausible(tiny_pair):
    """relative_top near 1 keeps only the top final token; when that is EOS and min_new_tokens bars it, the row
    takes the non-EOS token the final layer finds most probable (our choice, docs/baselines.md)."""
    _, model, reference = tiny_pair
    row = prompts((6,), seed=3)[0]
    logits, _ = Prefix(reference, row).forward()
    eos, runner_up = logits.topk(2).indices.tolist()
    out, _ = project_dola(model, [row], 1, {"layers": "high", "relative_top": 0.999}, eos=eos, min_new=1)
    assert out[0].tolist() == [runner_up]


def test_dola_finished_rows_take_the_pad_id_and_no_layer_and_the_run_stops_when_every_row_has(tiny_pair):
    """After EOS a row gets the pad id (EOS's own id when no pad id is given) and the layer marker -1; the run
    stops at the step where the last row finishes; no step leaves an empty (rows, 0) result."""
    _, model, _ = tiny_pair
    rows = prompts((5, 9), seed=3)
    free, free_choices = project_dola(model, rows, 8, {"layers": "high"})
    # EOS ids that end row 0 at step s0 and row 1 at a later step s1 < 7, appearing nowhere earlier in either row
    a, b = free[0].tolist(), free[1].tolist()
    s0, s1 = ending_steps(a, b)
    first, second, rest0 = a[s0], b[s1], 7 - s0
    assert s1 < 7
    out, choices = project_dola(model, rows, 8, {"layers": "high"}, eos=first)
    assert out.shape == (2, 8)
    assert out[0].tolist() == a[:s0 + 1] + [PAD] * rest0 and torch.equal(out[1], free[1])
    assert choices[0].tolist() == free_choices[0, :s0 + 1].tolist() + [-1] * rest0
    assert torch.equal(choices[1], free_choices[1])
    counted = Counter(free_choices[0, :s0 + 1].tolist() + free_choices[1].tolist())
    assert last_run_info(parse_decoding("dola", {"layers": "high"}))["premature_layer_counts"] == dict(sorted(counted.items()))
    # both rows finish: the run stops at step s1 instead of running to 8
    out, choices = project_dola(model, rows, 8, {"layers": "high"}, eos=[first, second])
    assert out.tolist() == [a[:s0 + 1] + [PAD] * (s1 - s0), b[:s1 + 1]]
    assert choices.tolist() == [free_choices[0, :s0 + 1].tolist() + [-1] * (s1 - s0), free_choices[1, :s1 + 1].tolist()]
    # no pad id: a finished row repeats the (first) EOS id, as HF pads with it
    ids, mask = left_pad(rows, PAD)
    with torch.inference_mode():
        out = dola.dola(model, ids, mask, 8, dict(parse_decoding("dola", {"layers": "high"}).params),
                        eos_token_id=[first, second], pad_token_id=None)
    assert out.tolist() == [a[:s0 + 1] + [first] * (s1 - s0), b[:s1 + 1]]
    # no step at all: an empty result per row, and an empty record of choices
    out, choices = project_dola(model, rows, 0, {"layers": "high"})
    assert out.shape == (2, 0) and choices.shape == (2, 0)


def test_dola_reads_tied_embeddings_from_the_config_or_else_its_text_config():
    """HF's test is ``config.tie_word_embeddings``; a composite model's config without it defers to its text config."""
    from types import SimpleNamespace

    def model(top, text):
        text_config = SimpleNamespace() if text is None else SimpleNamespace(tie_word_embeddings=text)
        config = SimpleNamespace(get_text_config=lambda: text_config)
        if top is not None:
            config.tie_word_embeddings = top
        return SimpleNamespace(config=config)

    assert dola.has_tied_embeddings(model(True, False)) is True  # the model's own setting wins
    assert dola.has_tied_embeddings(model(False, True)) is False
    assert dola.has_tied_embeddings(model(None, True)) is True  # a composite config: its text config decides
    assert dola.has_tied_embeddings(model(None, False)) is False
    assert dola.has_tied_embeddings(model(None, None)) is False  # neither says: untied


def test_dola_counts_the_blocks_the_model_has_not_its_configs_number():
    """N is the number of blocks the model runs (a model cut to 3 of its config's 6 blocks has N = 3)."""
    model = tiny_model("llama", seed=0, layers=6)
    model.model.layers = model.model.layers[:3]
    derived = derived_settings(model, parse_decoding("dola", {"layers": "high"}))
    assert derived["num_layers"] == derived["mature_layer"] == 3 and derived["candidate_layers"] == [1]
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        dola.model_candidate_layers(model, [4])


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    model = AutoMultiExitModel.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    return model, plain_hf(smollm2_dir), news_prompts(tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("bucket", ["low", "high"])
def test_dola_equals_rebuild_on_smollm2(smollm2_pair, bucket):
    model, reference, rows = smollm2_pair
    steps = 20
    layers = dola.model_candidate_layers(model, bucket)
    assert layers[0] == (2 if bucket == "low" else 15)  # tied embeddings: layer 0 is skipped
    batch, batch_choices = project_dola(model, rows, steps, {"layers": bucket})
    changed = {"no_penalty": 0, "final_norm_inverted": 0}
    for i, row in enumerate(rows):
        single, single_choices = project_dola(model, [row], steps, {"layers": bucket})
        assert torch.equal(batch[i], single[0]) and torch.equal(batch_choices[i], single_choices[0]), i
        tokens, chosen, bugs = ref_dola(reference, row, steps, layers)
        assert batch[i].tolist() == tokens, (i, batch[i].tolist(), tokens)
        assert batch_choices[i].tolist() == chosen, (i, batch_choices[i].tolist(), chosen)
        for name, where in bugs.items():
            changed[name] += len(where)
    # the planted bugs (issue 13) would change at least one step of these runs: skipping the repetition
    # penalty, or reading early layers with the final norm
    assert changed["no_penalty"] > 0 and changed["final_norm_inverted"] > 0, changed
    # the divergence separates the candidates: more than one premature layer is chosen
    assert len(set(batch_choices.flatten().tolist())) > 1


def ref_contrastive_search(model, prompt, steps, k, alpha, eos=None, min_new=0):
    """Contrastive search for one prompt (Su et al. 2022); also the steps a prompt-only similarity context changes."""
    tokens, changed = [], []
    prefix = Prefix(model, prompt)
    for step in range(steps):
        logits = prefix.forward()[0]
        if eos is not None and step < min_new:
            logits[eos] = float("-inf")
        top_p, top_v = torch.softmax(logits, -1).topk(k)
        context = torch.cat(prefix.finals)  # final hidden state of every position so far (prompt + generated)
        candidates = prefix.final_hidden_after(top_v.tolist())

        def pick(ctx):
            cos = (candidates @ ctx.T) / (candidates.norm(dim=-1)[:, None] * ctx.norm(dim=-1)[None, :])
            score = (1 - alpha) * top_p - alpha * cos.max(dim=-1).values
            return int(top_v[int(score.argmax())])

        token = pick(context)
        if pick(context[: len(prompt)]) != token:
            changed.append(step)
        tokens.append(token)
        prefix.push(token)
        if token == eos:
            break
    return tokens, changed


def ref_contrastive_decoding(expert, amateur, prompt, steps, alpha, temperature, context="last_token", eos=None, min_new=0):
    """Greedy CD for one prompt (Li et al. 2023); also the steps that ignoring the temperature / the context change."""
    tokens = []
    changed = {"temperature_ignored": [], "context_ignored": []}
    # the amateur reads the whole sequence ("full") or only what follows the prompt's last token ("last_token")
    runs = {"expert": Prefix(expert, prompt), "full": Prefix(amateur, prompt), "last_token": Prefix(amateur, prompt[-1:])}
    other_context = "full" if context == "last_token" else "last_token"
    for step in range(steps):
        logits = {name: run.forward()[0] for name, run in runs.items()}
        expert_lp = torch.log_softmax(logits.pop("expert"), -1)
        amateur_logits = logits

        def pick(amateur_context, temp):
            amateur_lp = torch.log_softmax(amateur_logits[amateur_context] / temp, -1)
            plausible = expert_lp >= expert_lp.max() + math.log(alpha)
            score = torch.where(plausible, expert_lp - amateur_lp, torch.tensor(float("-inf")))
            if eos is not None and step < min_new:
                score[eos] = float("-inf")
            tied = (score == score.max()).nonzero().flatten().tolist()  # ascending ids
            return max(tied, key=lambda t: (float(expert_lp[t]), -t))

        token = pick(context, temperature)
        if pick(context, 1.0) != token:
            changed["temperature_ignored"].append(step)
        if pick(other_context, temperature) != token:
            changed["context_ignored"].append(step)
        tokens.append(token)
        for run in runs.values():
            run.push(token)
        if token == eos:
            break
    return tokens, changed


@pytest.fixture(scope="module")
def smollm2_amateur_dir(smollm2_dir, tmp_path_factory):
    return str(cd.truncate_model(str(smollm2_dir), 6, tmp_path_factory.mktemp("smollm2_first6")))


@pytest.mark.slow
def test_contrastive_search_equals_rebuild_on_smollm2(smollm2_pair):
    model, reference, rows = smollm2_pair
    rows, steps = rows[:2], 12
    ids, mask = left_pad(rows, PAD)
    out = generate(model, parse_decoding("contrastive_search", {"top_k": 5, "penalty_alpha": 0.6}), ids, mask, steps,
                   eos_token_id=None, pad_token_id=PAD)
    changed = 0
    for i, row in enumerate(rows):
        tokens, where = ref_contrastive_search(reference, row, steps, 5, 0.6)
        assert out[i].tolist() == tokens, (i, out[i].tolist(), tokens)
        changed += len(where)
    # planted bug: a similarity context that never receives the generated tokens would change a step
    assert changed > 0


@pytest.mark.slow
def test_contrastive_decoding_equals_rebuild_on_smollm2(smollm2_pair, smollm2_amateur_dir):
    model, reference, rows = smollm2_pair
    amateur = plain_hf(smollm2_amateur_dir)
    rows, steps = rows[:2], 12
    ids, mask = left_pad(rows, PAD)
    changed = {"temperature_ignored": 0, "context_ignored": 0}
    for context in ("last_token", "full"):
        params = {"amateur": smollm2_amateur_dir, "alpha": 0.1, "amateur_temperature": 0.5, "amateur_context": context}
        out = generate(model, parse_decoding("contrastive_decoding", params), ids, mask, steps, eos_token_id=None,
                       pad_token_id=PAD)
        for i, row in enumerate(rows):
            tokens, where = ref_contrastive_decoding(reference, amateur, row, steps, 0.1, 0.5, context)
            assert out[i].tolist() == tokens, (context, i, out[i].tolist(), tokens)
            for name in changed:
                changed[name] += len(where[name])
    # planted bug: ignoring amateur_context would change a step. (Ignoring amateur_temperature changed no step
    # here: 2 prompts x 12 steps, both contexts, measured {'temperature_ignored': 0, 'context_ignored': 2}; the
    # tiny-model test_min_new_tokens[contrastive_decoding] catches that bug.)
    assert changed["context_ignored"] > 0, changed


# ---------------------------------------------------------------------------------------------------------------
# min_new_tokens: EOS is suppressed until that many tokens exist (the CD protocol generates exactly the requested
# number); each loop against its rebuild on the tiny expert, with an EOS the free run produces at step 1.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expert_reference(expert_dir):
    return plain_hf(expert_dir)


def run_min_new(model, method, params, rows, eos, min_new):
    ids, mask = left_pad(rows, PAD)
    setting = parse_decoding(method, params)
    function = {"dola": dola.dola, "contrastive_search": cs.contrastive_search,
                "contrastive_decoding": cd.contrastive_decoding}[method]
    with torch.inference_mode():
        return function(model, ids, mask, NEW, dict(setting.params), eos_token_id=eos, pad_token_id=PAD,
                        min_new_tokens=min_new)


MIN_NEW_CASES = [
    ("dola", {"layers": [1, 2, 3, 4, 5]}),
    ("contrastive_search", {"top_k": 4, "penalty_alpha": 0.6}),
    ("contrastive_decoding", {"alpha": 0.1, "amateur_temperature": 0.5}),
]


@pytest.mark.parametrize("method,params", MIN_NEW_CASES, ids=[c[0] for c in MIN_NEW_CASES])
def test_min_new_tokens(expert, expert_reference, amateur_dir, method, params):
    if method == "contrastive_decoding":
        params = {**params, "amateur": amateur_dir}
    rows = prompts((5, 8), seed=3)
    free = run_min_new(expert, method, params, rows, None, 0)
    first = free[0].tolist()
    at = next(j for j in range(1, NEW) if first[j] not in first[:j])  # the free run's first new token after step 0
    eos = first[at]
    stopped = run_min_new(expert, method, params, rows, eos, 0)
    assert stopped[0, at] == eos and (stopped.shape[1] == at + 1 or bool((stopped[0, at + 1:] == PAD).all()))
    for min_new in (at + 2, NEW):
        out = run_min_new(expert, method, params, rows, eos, min_new)
        assert out.shape[1] >= min_new and not bool((out[:, :min_new] == eos).any())
        for i, row in enumerate(rows):
            if method == "dola":
                expected = ref_dola(expert_reference, row, NEW, params["layers"], eos=eos, min_new=min_new)[0]
            elif method == "contrastive_search":
                expected = ref_contrastive_search(expert_reference, row, NEW, 4, 0.6, eos=eos, min_new=min_new)[0]
            else:
                expected = ref_contrastive_decoding(expert_reference, plain_hf(amateur_dir), row, NEW, 0.1, 0.5,
                                                    eos=eos, min_new=min_new)[0]
            assert padded(out[i, : len(expected)], len(expected)).tolist() == expected, (min_new, i)
            assert bool((out[i, len(expected):] == PAD).all())
    beams = None
    if method == "contrastive_decoding":  # beam search: no beam may end before min_new tokens
        beams = run_min_new(expert, method, {**params, "num_beams": 3}, rows, eos, NEW)
        assert beams.shape == (2, NEW) and not bool((beams == eos).any())


def test_suppress_eos_rescues_a_row_whose_only_candidate_is_eos():
    scores = torch.tensor([[float("-inf"), 1.0, float("-inf"), -2.0], [float("-inf"), float("-inf"), 0.5, float("-inf")]])
    model_logprobs = torch.tensor([[-3.0, -1.0, -0.5, -2.0], [-2.0, -0.7, -0.1, -5.0]])
    out = common.suppress_eos(scores, torch.tensor([2]), fallback=model_logprobs)
    assert out[0].tolist() == [float("-inf"), 1.0, float("-inf"), -2.0]  # EOS was not a candidate: unchanged
    # row 1 had only EOS: the model's most probable other token (id 1) is the only candidate
    assert out[1].tolist() == [float("-inf"), 0.0, float("-inf"), float("-inf")]
    assert torch.equal(common.suppress_eos(scores, None), scores)
