"""Contrastive search (Su et al., 2022, "A Contrastive Framework for Neural Text Generation").

At each step the ``top_k`` most probable next tokens are candidates. Each candidate is fed to
the model once (the batch's KV cache is repeated ``top_k`` times for that), which gives its
last-layer hidden state h_v. The chosen token maximises

    (1 - penalty_alpha) * p(v | x)  -  penalty_alpha * max_j cos(h_v, h_j)

where h_j are the last-layer hidden states of every earlier real (non-pad) position of the
sequence, prompt included. ``penalty_alpha = 0`` is greedy search. Ties go to the more
probable candidate. The last-layer hidden state is the model's final (normed) hidden state,
as in the reference implementation. While fewer than ``min_new_tokens`` tokens have been
generated, EOS gets probability 0 before the top-k (HF's logits processors act there too).
"""

from __future__ import annotations

from multiexit._lazy import LazyModule
from multiexit.decoding.registry import DecodingMethod, all_checks, check_range, register_method
from multiexit.decoding.common import (
    CachedBatch,
    check_inputs,
    eos_ids,
    is_eos,
    original_head,
    pad_value,
    stack_new_tokens,
    suppress_eos,
)

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")

DEFAULTS = {"top_k": 5, "penalty_alpha": 0.6}


def contrastive_search(model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id, pad_token_id,
                       min_new_tokens=0):
    check_inputs(input_ids, attention_mask, max_new_tokens, min_new_tokens)
    k = int(params["top_k"])
    alpha = float(params["penalty_alpha"])
    rows = input_ids.shape[0]
    device = input_ids.device
    eos = eos_ids(eos_token_id, device)
    pad = pad_value(pad_token_id, eos)
    new_tokens: list[torch.Tensor] = []
    with original_head(model):
        state = CachedBatch(model, input_ids, attention_mask)
        out = state.prefill(hidden_states=True)
        logits = out.logits[:, -1].float()
        context = out.hidden_states[-1].float()  # (rows, T, D): final hidden state of every prompt position
        context_valid = state.mask.bool()
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        k = min(k, logits.shape[-1])
        for _ in range(max_new_tokens):
            if len(new_tokens) < min_new_tokens:  # as HF: EOS removed before the softmax and the top-k
                logits = suppress_eos(logits, eos)
            probs = torch.softmax(logits, dim=-1)
            top_probs, top_ids = probs.topk(k, dim=-1)  # (rows, k), most probable first
            state.repeat_rows(k)
            out = state.step(top_ids.reshape(-1), hidden_states=True)
            candidate_hidden = out.hidden_states[-1][:, -1].float().view(rows, k, -1)
            similarity = torch.einsum(
                "bkd,btd->bkt", F.normalize(candidate_hidden, dim=-1), F.normalize(context, dim=-1)
            )
            similarity = similarity.masked_fill(~context_valid[:, None, :], float("-inf"))
            penalty = similarity.max(dim=-1).values
            score = (1.0 - alpha) * top_probs - alpha * penalty
            best = score.argmax(dim=-1)  # first maximum: the more probable candidate on ties
            chosen_rows = torch.arange(rows, device=device) * k + best
            state.select_rows(chosen_rows)
            token = top_ids.gather(1, best[:, None]).squeeze(1)
            token = torch.where(finished, torch.full_like(token, pad), token)
            new_tokens.append(token)
            finished = finished | is_eos(token, eos)
            if bool(finished.all()):
                break
            logits = out.logits[chosen_rows, -1].float()
            context = torch.cat([context, candidate_hidden[torch.arange(rows, device=device), best][:, None]], dim=1)
            context_valid = torch.cat([context_valid, torch.ones(rows, 1, dtype=torch.bool, device=device)], dim=1)
    return stack_new_tokens(new_tokens, rows, device)


register_method(
    DecodingMethod(
        "contrastive_search",
        dict(DEFAULTS),
        contrastive_search,
        "contrastive search (Su et al. 2022): top_k candidates scored by (1-penalty_alpha)*p - penalty_alpha*max cosine similarity",
        validate=all_checks(check_range("top_k", 1, 10**6, integer=True), check_range("penalty_alpha", 0.0, 1.0)),
        label="contrastive-search-k{top_k}-a{penalty_alpha}",
        derived=lambda model, params: {"hidden_state": "final layer (normed)",
                                       "similarity": "cosine, max over earlier real positions"},
    )
)
