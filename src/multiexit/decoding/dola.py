"""DoLa: Decoding by Contrasting Layers (Chuang et al., ICLR 2024), greedy.

At every step, for every sequence separately:

1. the final layer's next-token log-probabilities ``q_N`` come from the model's own head;
2. each candidate premature layer ``j`` is read through the same output head (the "logit lens"),
   by default WITHOUT the final norm, as the original implementation does (``final_norm=True``
   applies the model's final norm first);
3. the premature layer is the candidate with the largest Jensen-Shannon divergence between
   ``softmax`` of its logits and the final distribution (mean over the vocabulary, as in the
   reference code). It is chosen per sequence: the divergence is never averaged over the batch,
   so a prompt's continuation does not depend on its batch neighbours;
4. score = log q_N - log q_j on the tokens with q_N >= relative_top * max q_N, -inf elsewhere;
5. the repetition penalty (1.2 as the authors recommend; 1.0 turns it off) rescales the scores of
   tokens already in the sequence (prompt included, padding excluded); the argmax is the next token.

Candidate layers: ``'low'``, ``'high'`` or an explicit list of layer indices in ``0..N-1``
(0 is the embedding output, ``l`` the output of block ``l``; N is the model's number of blocks).
``'low'`` = 0, 2, 4, ... below N // 2; ``'high'`` = N // 2, N // 2 + 2, ... below N; for N > 40
``'low'`` = 0, 2, ..., 18 and ``'high'`` = N - 20, N - 18, ..., N - 2 (as the reference code).
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from multiexit.decoding.registry import DecodingMethod, check_range, register_method
from multiexit.decoding.common import (
    CachedBatch,
    apply_repetition_penalty,
    check_inputs,
    eos_ids,
    is_eos,
    original_head,
    pad_value,
    presence_mask,
    stack_new_tokens,
)

DEFAULTS = {"layers": "high", "relative_top": 0.1, "repetition_penalty": 1.2, "final_norm": False}

# Premature layers chosen by the latest DoLa call in this process: (rows, steps) layer indices, -1 once a row has
# finished; see last_run_choices() and last_run_layer_counts().
_LAST_CHOICES: list[torch.Tensor] = []


def candidate_layers(spec, num_layers: int) -> list[int]:
    """Resolve ``'low'`` / ``'high'`` / a list of layers for a model with ``num_layers`` blocks."""
    if isinstance(spec, str) and spec.strip().lower() in ("low", "high"):
        bucket = spec.strip().lower()
        if num_layers > 40:
            layers = range(0, 20, 2) if bucket == "low" else range(num_layers - 20, num_layers, 2)
        else:
            layers = range(0, num_layers // 2, 2) if bucket == "low" else range(num_layers // 2, num_layers, 2)
        return list(layers)
    values = _parse_layer_list(spec)
    bad = [v for v in values if not 0 <= v < num_layers]
    if bad:
        raise ValueError(f"layers: {bad} outside 0..{num_layers - 1} (the model has {num_layers} layers; the final layer is the mature one)")
    return values


def _parse_layer_list(spec) -> list[int]:
    if isinstance(spec, str):
        text = spec.strip().strip("[]()")
        parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    elif isinstance(spec, (list, tuple)):
        parts = list(spec)
    else:
        raise ValueError(f"layers: expected 'low', 'high' or a list of layer indices, got {spec!r}")
    values = []
    for part in parts:
        if isinstance(part, bool):
            raise ValueError(f"layers: expected layer indices, got {part!r}")
        if isinstance(part, int):
            values.append(part)
        elif isinstance(part, str) and part.lstrip("-").isdigit():
            values.append(int(part))
        else:
            raise ValueError(f"layers: expected 'low', 'high' or a list of layer indices, got {spec!r}")
    if not values:
        raise ValueError(f"layers: the candidate list is empty ({spec!r})")
    if len(set(values)) != len(values):
        raise ValueError(f"layers: duplicate layers in {spec!r}")
    return sorted(values)


def _validate(params: dict) -> None:
    spec = params["layers"]
    if not (isinstance(spec, str) and spec.strip().lower() in ("low", "high")):
        bad = [v for v in _parse_layer_list(spec) if v < 0]
        if bad:
            raise ValueError(f"layers: negative layer indices {bad}")
    check_range("relative_top", 0.0, 1.0, low_open=True)(params)
    check_range("repetition_penalty", 0.0, 100.0, low_open=True)(params)
    if not isinstance(params["final_norm"], bool):
        raise ValueError(f"final_norm must be True or False, got {params['final_norm']!r}")


def _num_layers(model) -> int:
    if hasattr(model, "num_exit_layers"):
        return model.num_exit_layers
    return model.config.get_text_config().num_hidden_layers


def _head_logits(model, hidden: torch.Tensor, final_norm: bool) -> torch.Tensor:
    if final_norm:
        hidden = model.final_transform(hidden)
    return model.original_head_logits(hidden)


def jensen_shannon(final_logprobs: torch.Tensor, premature_logprobs: torch.Tensor) -> torch.Tensor:
    """JS divergence (mean over the vocabulary, as the reference code) between (rows, V) and (rows, C, V)."""
    final = final_logprobs[:, None, :]
    mixture = torch.logsumexp(torch.stack(torch.broadcast_tensors(final, premature_logprobs)), dim=0) - math.log(2.0)
    kl_final = (final.exp() * (final - mixture)).mean(-1)
    kl_premature = (premature_logprobs.exp() * (premature_logprobs - mixture)).mean(-1)
    return 0.5 * (kl_final + kl_premature)


def dola_scores(final_logits: torch.Tensor, premature_logits: torch.Tensor, relative_top: float):
    """Contrasted scores (rows, V) and the index of the chosen candidate per row, for one step.

    ``premature_logits`` is (rows, C, V). The divergence and the choice are per row.
    """
    final = torch.log_softmax(final_logits.float(), dim=-1)
    premature = torch.log_softmax(premature_logits.float(), dim=-1)
    choice = jensen_shannon(final, premature).argmax(dim=-1)  # (rows,), first maximum on ties
    base = premature[torch.arange(final.shape[0], device=final.device), choice]
    threshold = final.max(dim=-1, keepdim=True).values + math.log(relative_top)
    scores = torch.where(final >= threshold, final - base, torch.full_like(final, float("-inf")))
    return scores, choice


def dola(model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id, pad_token_id, min_new_tokens=0):
    if min_new_tokens:
        raise NotImplementedError("dola: min_new_tokens > 0 is not implemented yet")
    check_inputs(input_ids, attention_mask, max_new_tokens)
    layers = candidate_layers(params["layers"], _num_layers(model))
    relative_top = float(params["relative_top"])
    penalty = float(params["repetition_penalty"])
    final_norm = bool(params["final_norm"])
    rows = input_ids.shape[0]
    device = input_ids.device
    eos = eos_ids(eos_token_id, device)
    pad = pad_value(pad_token_id, eos)
    layer_tensor = torch.tensor(layers, device=device)
    choices: list[torch.Tensor] = []
    new_tokens: list[torch.Tensor] = []
    with original_head(model):
        state = CachedBatch(model, input_ids, attention_mask)
        out = state.prefill(hidden_states=True)
        history = input_ids
        history_valid = state.mask.bool()
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            final_logits = out.logits[:, -1]
            premature_hidden = torch.stack([out.hidden_states[layer][:, -1] for layer in layers], dim=1)
            premature_logits = _head_logits(model, premature_hidden, final_norm)
            scores, choice = dola_scores(final_logits, premature_logits, relative_top)
            if penalty != 1.0:
                present = presence_mask(history, history_valid, scores.shape[-1])
                scores = apply_repetition_penalty(scores, present, penalty)
            token = scores.argmax(dim=-1)
            token = torch.where(finished, torch.full_like(token, pad), token)
            choices.append(torch.where(finished, torch.full_like(choice, -1), layer_tensor[choice]))
            new_tokens.append(token)
            finished = finished | is_eos(token, eos)
            if bool(finished.all()) or len(new_tokens) == max_new_tokens:
                break
            history = torch.cat([history, token[:, None]], dim=1)
            history_valid = torch.cat([history_valid, torch.ones(rows, 1, dtype=torch.bool, device=device)], dim=1)
            out = state.step(token, hidden_states=True)
    _LAST_CHOICES[:] = [stack_new_tokens(choices, rows, device).cpu()]
    return stack_new_tokens(new_tokens, rows, device)


def last_run_choices() -> torch.Tensor | None:
    """(rows, steps) premature layer chosen at each step of the latest DoLa call (-1 after a row finished)."""
    return _LAST_CHOICES[0].clone() if _LAST_CHOICES else None


def last_run_layer_counts() -> dict[int, int]:
    """How often each premature layer was chosen (over unfinished rows and steps) by the latest DoLa call."""
    choices = last_run_choices()
    if choices is None:
        return {}
    counts = Counter(v for v in choices.flatten().tolist() if v >= 0)
    return dict(sorted(counts.items()))


def _derived(model, params: dict) -> dict:
    num_layers = _num_layers(model)
    return {
        "num_layers": num_layers,
        "mature_layer": num_layers,
        "candidate_layers": candidate_layers(params["layers"], num_layers),
        "early_layers_final_norm": bool(params["final_norm"]),
    }


def _after_run(params: dict) -> dict:
    return {"premature_layer_counts": last_run_layer_counts()}


register_method(
    DecodingMethod(
        "dola",
        dict(DEFAULTS),
        dola,
        "DoLa (Chuang et al. 2024): final layer minus the per-sequence max-JS premature layer among 'low'/'high'/list candidates",
        validate=_validate,
        label="dola-{layers}",
        derived=_derived,
        after_run=_after_run,
    )
)
