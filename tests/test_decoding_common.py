"""The shared decoding pieces (``decoding/common.py``) against hand-written tensors, and contrastive search
against a from-scratch rebuild (full forward passes of the plain HF model, no KV cache)."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from conftest import left_pad, tiny_config
from multiexit import AutoMultiExitModel
from multiexit.decoding import common
from multiexit.decoding.contrastive_search import contrastive_search
from multiexit.model.config import MultiExitConfiguration

INF = float("inf")
PAD = 1
VOCAB = 48


# ---------------------------------------------------------------------------------------------------------------
# suppress_eos, presence_mask, apply_repetition_penalty: expected tensors written out by hand
# ---------------------------------------------------------------------------------------------------------------


def test_suppress_eos_several_ids_and_ids_outside_the_vocabulary():
    scores = torch.tensor([[0.5, 3.0, -1.0, 2.0, 0.0],
                           [-INF, -INF, 4.0, -INF, 1.5]])
    # ids 0 and 4 sit at the vocabulary's edges; 5 (= V) and 9 lie outside it and are ignored
    out = common.suppress_eos(scores, torch.tensor([4, 5, 0, 9]))
    assert out.tolist() == [[-INF, 3.0, -1.0, 2.0, -INF],
                            [-INF, -INF, 4.0, -INF, -INF]]
    assert scores[0, 0] == 0.5  # the input is not modified in place
    assert common.suppress_eos(scores, None) is scores


def test_suppress_eos_fallback_picks_the_best_non_eos_token():
    scores = torch.tensor([[-INF, -INF, 2.0, -INF],   # only EOS (2) finite: rescued
                           [0.25, -INF, -INF, 0.5],  # EOS 3 removed, token 0 stays: not rescued
                           [-INF, -INF, -INF, 7.0],  # only EOS (3) finite: rescued
                           [1.0, -INF, 5.0, -INF]])  # EOS is the argmax, another token stays: unchanged but EOS
    fallback = torch.tensor([[-0.1, -3.0, -0.01, -2.0],  # EOS 2 is the fallback's argmax: next best is id 0
                             [-1.0, -0.5, -2.0, -3.0],
                             [-4.0, -0.2, -9.0, -0.1],   # EOS 3 is the argmax: next best is id 1
                             [-1.0, -1.0, -1.0, -1.0]])
    out = common.suppress_eos(scores, torch.tensor([2, 3]), fallback=fallback)
    assert out.tolist() == [[0.0, -INF, -INF, -INF],
                            [0.25, -INF, -INF, -INF],
                            [-INF, 0.0, -INF, -INF],
                            [1.0, -INF, -INF, -INF]]
    # a row that was all -inf before gets the fallback's best non-EOS token too
    out = common.suppress_eos(torch.full((1, 4), -INF), torch.tensor([0]), fallback=torch.tensor([[5.0, 1.0, 3.0, 2.0]]))
    assert out.tolist() == [[-INF, -INF, 0.0, -INF]]


def test_presence_mask_counts_only_valid_positions_and_clamps_pad_ids():
    ids = torch.tensor([[0, 5, 5, 2, -7],
                        [47, 3, 48, 100, 46]])
    valid = torch.tensor([[1, 1, 1, 0, 0],   # id 2 is at a pad position; -7 too (clamped, never counted)
                          [1, 0, 0, 0, 1]])  # 48 and 100 (outside the vocabulary) are pad positions
    out = common.presence_mask(ids, valid, VOCAB)
    expected = torch.zeros(2, VOCAB, dtype=torch.bool)
    expected[0, [0, 5]] = True
    expected[1, [47, 46]] = True
    assert out.shape == (2, VOCAB) and out.dtype == torch.bool
    assert torch.equal(out, expected)


def test_apply_repetition_penalty_as_ctrl():
    scores = torch.tensor([[2.0, -2.0, 0.0, 4.0, -1.0]])
    present = torch.tensor([[True, True, True, False, False]])
    assert common.apply_repetition_penalty(scores, present, 2.0).tolist() == [[1.0, -4.0, 0.0, 4.0, -1.0]]
    assert common.apply_repetition_penalty(scores, present, 0.5).tolist() == [[4.0, -1.0, 0.0, 4.0, -1.0]]
    assert common.apply_repetition_penalty(scores, present, 1.0).tolist() == scores.tolist()


def test_check_inputs_names_each_bad_value():
    ids = torch.tensor([[5, 6, 7], [1, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    common.check_inputs(ids, mask, 0)  # valid: nothing raised, for any count of new tokens from 0
    common.check_inputs(ids, None, 3, 3)
    cases = [
        ((ids[0], mask, 2), r"^input_ids must have shape \(batch, prompt_length>0\), got \(3,\)$"),
        ((ids[:, :0], mask[:, :0], 2), r"^input_ids must have shape \(batch, prompt_length>0\), got \(2, 0\)$"),
        ((ids, mask[:, 1:], 2), r"^attention_mask shape \(2, 2\) differs from input_ids \(2, 3\)$"),
        ((ids, mask.flip(1), 2), r"^inputs must be left-padded: the last position of every row must be a real token$"),
        ((ids, mask, -1), r"^max_new_tokens must be an integer >= 0, got -1$"),
        ((ids, mask, True), r"^max_new_tokens must be an integer >= 0, got True$"),
        ((ids, mask, 2.0), r"^max_new_tokens must be an integer >= 0, got 2\.0$"),
        ((ids, mask, 2, -1), r"^min_new_tokens must be an integer >= 0, got -1$"),
        ((ids, mask, 2, False), r"^min_new_tokens must be an integer >= 0, got False$"),
        ((ids, mask, 2, 1.0), r"^min_new_tokens must be an integer >= 0, got 1\.0$"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            common.check_inputs(*args)


def test_eos_ids_is_eos_pad_value_and_stack_new_tokens():
    assert common.eos_ids(None, "cpu") is None and common.eos_ids([], "cpu") is None
    assert common.eos_ids(7, "cpu").tolist() == [7] and common.eos_ids((7, 2), "cpu").tolist() == [7, 2]
    assert common.eos_ids([torch.tensor(3)], "cpu").dtype == torch.long
    tokens = torch.tensor([4, 7, 2, 9])
    assert common.is_eos(tokens, common.eos_ids([7, 2], "cpu")).tolist() == [False, True, True, False]
    assert common.is_eos(tokens, None).tolist() == [False] * 4
    assert common.pad_value(5, common.eos_ids([7, 2], "cpu")) == 5
    assert common.pad_value(0, common.eos_ids([7, 2], "cpu")) == 0  # a pad id of 0 is a pad id
    assert common.pad_value(None, common.eos_ids([7, 2], "cpu")) == 7  # no pad id: the first EOS id, as HF
    assert common.pad_value(None, None) == 0
    assert common.stack_new_tokens([torch.tensor([1, 2]), torch.tensor([3, 4])], 2, "cpu").tolist() == [[1, 3], [2, 4]]
    empty = common.stack_new_tokens(iter([]), 3, "cpu")
    assert empty.shape == (3, 0) and empty.dtype == torch.long


# ---------------------------------------------------------------------------------------------------------------
# contrastive search: the project's batched, cached loop against a per-prompt rebuild
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    """(plain HF llama, the same weights as a multi-exit model whose active output is an early exit)."""
    torch.manual_seed(11)
    config = tiny_config("llama", vocab_size=VOCAB, layers=2)
    config.initializer_range = 0.3  # peaked next-token distributions: the probability term matters
    plain = T.AutoModelForCausalLM.from_config(config).eval()
    multi = AutoMultiExitModel.from_model(plain, MultiExitConfiguration(lm_head_layer_indices=[1])).eval()
    multi.set_multi_exit_config(MultiExitConfiguration(use_original_head=False, output_layer_index=1))
    return plain, multi


def rebuild(model, prompt, steps, k, alpha, eos=(), min_new=0):
    """SimCTG's rule, one prompt, full forward passes: argmax over the top-k of (1-a) p(v) - a max_j cos(h_v, h_j)."""
    seq = list(prompt)
    out = []
    for step in range(steps):
        with torch.no_grad():
            run = model(input_ids=torch.tensor([seq]), output_hidden_states=True)
        logits = run.logits[0, -1].clone()
        if step < min_new:
            for e in eos:
                logits[e] = -INF
        probs = torch.softmax(logits, dim=0)
        order = sorted(range(len(probs)), key=lambda v: -float(probs[v]))[:k]
        history = run.hidden_states[-1][0]  # every position so far, generated tokens included
        best, best_score = None, None
        for v in order:
            with torch.no_grad():
                h = model(input_ids=torch.tensor([seq + [v]]), output_hidden_states=True).hidden_states[-1][0, -1]
            sims = [float(torch.dot(h, c) / (h.norm() * c.norm())) for c in history]
            score = (1 - alpha) * float(probs[v]) - alpha * max(sims)
            if best_score is None or score > best_score:
                best, best_score = v, score
        out.append(best)
        seq.append(best)
        if best in eos:
            break
    return out



def run_cs(model, rows, steps, k, alpha, eos=None, pad=PAD, min_new=0):
    ids, mask = left_pad(rows, PAD)
    with torch.inference_mode():
        return contrastive_search(model, ids, mask, steps, {"top_k": k, "penalty_alpha": alpha}, eos_token_id=eos,
                                  pad_token_id=pad, min_new_tokens=min_new)


ROWS = [[5, 9, 17, 30], [40, 3, 22, 8, 13, 27, 6], [19, 2]]


def test_original_head_switches_a_multi_exit_model_and_passes_a_plain_one_through(models):
    plain, multi = models
    with common.original_head(plain) as model:  # a plain causal LM has only its own head
        assert model is plain
    ids = torch.tensor([[5, 9, 14]])
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
        with common.original_head(multi) as model:
            assert model is multi and multi.multi_exit_config.use_original_head
            assert torch.allclose(multi(input_ids=ids).logits, expected, atol=1e-6)
    assert multi.multi_exit_config.output_layer_index == 1 and not multi.multi_exit_config.use_original_head  # restored


@pytest.mark.parametrize("k,alpha", [(2, 0.6), (3, 0.3), (4, 0.8)])
def test_contrastive_search_equals_rebuild(models, k, alpha):
    plain, multi = models
    steps = 6
    out = run_cs(multi, ROWS, steps, k, alpha)
    assert out.shape == (len(ROWS), steps)
    for i, row in enumerate(ROWS):
        assert out[i].tolist() == rebuild(plain, row, steps, k, alpha), (i, k, alpha)


def test_contrastive_search_eos_padding_early_stop_and_min_new(models):
    plain, multi = models
    steps, k, alpha = 7, 3, 0.6
    free = rebuild(plain, ROWS[0], steps, k, alpha)
    at = next(j for j in range(1, steps) if free[j] not in free[:j])  # first new token after step 0
    eos = free[at]
    expected = [rebuild(plain, row, steps, k, alpha, eos=[eos]) for row in ROWS]
    width = max(map(len, expected))
    for pad, filler in ((PAD, PAD), (None, eos)):  # no pad id: finished rows are filled with EOS
        out = run_cs(multi, ROWS, steps, k, alpha, eos=eos, pad=pad)
        assert out.shape == (len(ROWS), width)
        for i, tokens in enumerate(expected):
            assert out[i].tolist() == tokens + [filler] * (width - len(tokens)), (pad, i)
    # one prompt that ends: the loop stops at its EOS
    single = run_cs(multi, ROWS[:1], steps, k, alpha, eos=eos)
    assert single.tolist() == [free[: at + 1]] and at + 1 < steps
    # min_new_tokens = at: EOS is allowed again at step `at`, so the row still ends there
    assert run_cs(multi, ROWS[:1], steps, k, alpha, eos=eos, min_new=at).tolist() == [free[: at + 1]]
    later = rebuild(plain, ROWS[0], steps, k, alpha, eos=[eos], min_new=at + 1)
    assert run_cs(multi, ROWS[:1], steps, k, alpha, eos=eos, min_new=at + 1)[0, : len(later)].tolist() == later
    assert later[at] != eos


def test_contrastive_search_zero_new_tokens_and_invalid_inputs(models):
    _, multi = models
    out = run_cs(multi, ROWS, 0, 3, 0.6)
    assert out.shape == (3, 0) and out.dtype == torch.long
    ids, mask = left_pad(ROWS, PAD)
    params = {"top_k": 3, "penalty_alpha": 0.6}
    right_padded = mask.flip(1)
    with pytest.raises(ValueError, match="left-padded"):
        contrastive_search(multi, ids, right_padded, 2, params, eos_token_id=None, pad_token_id=PAD)
    with pytest.raises(ValueError, match="max_new_tokens"):
        contrastive_search(multi, ids, mask, -1, params, eos_token_id=None, pad_token_id=PAD)
    with pytest.raises(ValueError, match="min_new_tokens"):
        contrastive_search(multi, ids, mask, 2, params, eos_token_id=None, pad_token_id=PAD, min_new_tokens=-1)


# ---------------------------------------------------------------------------------------------------------------
# CachedBatch: prefill and one token per step against full forward passes of the plain HF model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "gpt_neo", "opt", "llama", "gemma3"])
def test_cached_batch_equals_full_forward_passes_and_keeps_a_sliding_window(family):
    """Each call's logits equal the last position of a full forward pass (no cache) of the plain model over the
    left-padded sequence so far, with HF generate's positions (counted from each row's first real token; GPT-2, OPT
    and GPT-Neo embed absolute positions, so a shift by the padding would change them); only the last position's
    logits come back, hidden states only when asked; a float mask works like a long one; and a sliding-window
    layer's cache keeps only its window, as the cache HF generate builds from the model's config does."""
    torch.manual_seed(0)
    config = tiny_config(family, vocab_size=VOCAB)
    if family == "gemma3":  # both kinds of layer (4 layers would all be sliding by default)
        config.layer_types = ["sliding_attention", "full_attention"] * 2
    plain = T.AutoModelForCausalLM.from_config(config).eval()
    rows = [[5, 9, 3, 7, 11, 4, 8, 20, 6, 13], [12, 17, 6]]  # 10 tokens: past gemma3's sliding window of 8
    ids, mask = left_pad(rows, PAD)
    steps = [torch.tensor([21, 30]), torch.tensor([[22], [31]]), torch.tensor([23, 32])]  # (rows,) and (rows, 1)

    def reference(seq, seq_mask):
        positions = seq_mask.cumsum(-1) - 1
        positions.masked_fill_(seq_mask == 0, 1)  # HF generate's positions; pad positions are masked anyway
        out = plain(input_ids=seq, attention_mask=seq_mask, position_ids=positions, output_hidden_states=True)
        return out.logits[:, -1], out.hidden_states[-1][:, -1]

    with torch.no_grad():
        batch = common.CachedBatch(plain, ids, mask.float())
        outputs = [batch.prefill()]
        outputs += [batch.step(token, hidden_states=True) if i == 1 else batch.step(token) for i, token in enumerate(steps)]
        seq, seq_mask = ids, mask
        for i, out in enumerate(outputs):
            if i:
                seq = torch.cat([seq, steps[i - 1].reshape(-1, 1)], dim=1)
                seq_mask = torch.cat([seq_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            logits, last_hidden = reference(seq, seq_mask)
            assert out.logits.shape == (2, 1, VOCAB)
            torch.testing.assert_close(out.logits[:, -1], logits, rtol=1e-4, atol=1e-5)
            if i == 2:
                assert len(out.hidden_states) == config.num_hidden_layers + 1
                torch.testing.assert_close(out.hidden_states[-1][:, -1], last_hidden, rtol=1e-4, atol=1e-5)
            else:
                assert out.hidden_states is None
    assert torch.equal(batch.mask, seq_mask) and batch.mask.dtype == torch.long
    if family == "gemma3":
        kinds = config.layer_types
        assert "sliding_attention" in kinds and "full_attention" in kinds
        for kind, layer in zip(kinds, batch.cache.layers):
            assert layer.keys.shape[-2] == (config.sliding_window - 1 if kind == "sliding_attention" else seq.shape[1])
