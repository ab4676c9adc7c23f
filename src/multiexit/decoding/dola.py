"""DoLa: Decoding by Contrasting Layers (Chuang et al., ICLR 2024), greedy, as HF transformers 4.4x computes it.

Reference: transformers 4.4x ``GenerationMixin._dola_decoding`` / ``_dola_select_contrast`` /
``_relative_top_filter`` (``generation/utils.py``; transformers 5 moved DoLa to the Hub repository
``transformers-community/dola``), which follows the authors' code (voidism/DoLa,
``dola_greedy_decode``). At every step, for every sequence separately:

1. the final layer's next-token log-probabilities ``q_N`` come from the model's own output (final
   norm, head, Gemma's soft-capping);
2. each candidate premature layer ``j`` is read through the bare output head, ``lm_head(h_j)``,
   WITHOUT the final norm (and without soft-capping), as HF and the authors do. ``final_norm=True``
   (our option) instead reads it as the model reads its top layer: final norm, head, soft-capping;
3. the premature layer is the candidate with the largest divergence
   ``0.5 * (KL(M || q_N) + KL(M || q_j))`` (mean over the vocabulary), ``M = (q_N + q_j) / 2``.
   This is what the reference computes (``F.kl_div(log q, M)`` is ``KL(M || q)``), not the paper's
   ``KL(q || M)``; the reference's direction does not saturate when ``q_j`` is nearly one-hot. The
   choice is per sequence (HF averages the divergence over the batch; ours never does, so a prompt's
   continuation does not depend on its batch neighbours); ties go to the lower layer;
4. score = log q_N - log q_j on the tokens with q_N >= relative_top * max q_N, -inf elsewhere;
5. the repetition penalty (1.2, the authors' recommendation; 1.0 turns it off) rescales the scores of
   tokens already in the sequence (prompt included, left padding excluded); EOS gets -inf while fewer
   than ``min_new_tokens`` tokens have been generated (see :func:`~multiexit.decoding.common.suppress_eos`);
   the argmax is the next token.

Candidate layers: ``'low'``, ``'high'`` or an explicit list of layer indices in ``0..N-1``
(0 is the embedding output, ``l`` the output of block ``l``; N is the model's number of blocks).
As HF: ``'low'`` = start, start + 2, ... below N // 2 and ``'high'`` = N // 2, N // 2 + 2, ... below
N; for N > 40, ``'low'`` = start, ..., 18 and ``'high'`` = N - 20, N - 18, ..., N - 2. ``start`` is 0,
except for models with tied input/output embeddings, where the embedding layer read through its own
transpose is skipped: start = 2 (N > 2), 1 (N = 2), 0 (N = 1). If ``start == N // 2``, ``'low'`` is
``[start]``.
"""

from __future__ import annotations

import math
from collections import Counter

from multiexit._lazy import LazyModule
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
    suppress_eos,
)

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")

DEFAULTS = {"layers": "high", "relative_top": 0.1, "repetition_penalty": 1.2, "final_norm": False}

# Premature layers chosen by the latest DoLa call in this process: (rows, steps) layer indices, -1 once a row has
# finished; see last_run_choices() and last_run_layer_counts().
_LAST_CHOICES: list[torch.Tensor] = []


def first_candidate_layer(num_layers: int, tied_embeddings: bool) -> int:
    """Lowest layer of the ``'low'`` bucket (HF 4.4x): 0, or 2 / 1 / 0 for tied embeddings with N > 2 / = 2 / < 2."""
    if not tied_embeddings:
        return 0
    return 2 if num_layers > 2 else (1 if num_layers == 2 else 0)


def candidate_layers(spec, num_layers: int, tied_embeddings: bool = False) -> list[int]:
    """Resolve ``'low'`` / ``'high'`` / a list of layers for a model with ``num_layers`` blocks.

    ``tied_embeddings``: whether the model's output head is its input embedding (then ``'low'`` skips
    layer 0, as HF does); :func:`model_candidate_layers` reads it from the model.
    """
    if isinstance(spec, str) and spec.strip().lower() in ("low", "high"):
        bucket = spec.strip().lower()
        if bucket == "high":
            layers = range(num_layers - 20, num_layers, 2) if num_layers > 40 else range(num_layers // 2, num_layers, 2)
        else:
            start = first_candidate_layer(num_layers, tied_embeddings)
            if start == num_layers // 2:
                layers = [start]
            else:
                layers = range(start, 20, 2) if num_layers > 40 else range(start, num_layers // 2, 2)
        layers = list(layers)
        if not layers:
            raise ValueError(f"layers: the {bucket!r} bucket is empty for a model with {num_layers} layers")
        return layers
    values = _parse_layer_list(spec)
    bad = [v for v in values if not 0 <= v < num_layers]
    if bad:
        raise ValueError(f"layers: {bad} outside 0..{num_layers - 1} (the model has {num_layers} layers; the final layer is the mature one)")
    return values


def has_tied_embeddings(model) -> bool:
    """HF's test (``config.tie_word_embeddings``), falling back to the text config of composite models."""
    config = model.config
    value = getattr(config, "tie_word_embeddings", None)
    if value is None:
        value = getattr(config.get_text_config(), "tie_word_embeddings", False)
    return bool(value)


def model_candidate_layers(model, spec) -> list[int]:
    """:func:`candidate_layers` for ``model`` (its depth and whether its embeddings are tied)."""
    return candidate_layers(spec, _num_layers(model), has_tied_embeddings(model))


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


def premature_logits(model, hidden: torch.Tensor, final_norm: bool) -> torch.Tensor:
    """Logits of early-layer states: the bare output head (HF, the authors), or norm + head + soft-capping."""
    from multiexit.model.modeling import few_rows_linear  # here: the plan imports this module to validate settings

    if final_norm:
        return model.original_head_logits(model.final_transform(hidden))
    return few_rows_linear(model.get_output_embeddings(), hidden)


def divergence(final_logprobs: torch.Tensor, premature_logprobs: torch.Tensor) -> torch.Tensor:
    """DoLa's layer-selection divergence between (rows, V) and (rows, C, V) log-probabilities -> (rows, C).

    ``0.5 * (KL(M || q_N) + KL(M || q_j))`` averaged over the vocabulary, ``M = (q_N + q_j) / 2``: what
    the reference code's ``F.kl_div(log_softmax(.), M)`` computes. Terms with ``M = 0`` are 0.
    """
    final = final_logprobs[:, None, :]
    mixture = 0.5 * (final.exp() + premature_logprobs.exp())
    log_mixture = torch.log(mixture)
    positive = mixture > 0

    def kl_from_mixture(logprobs):
        terms = torch.where(positive, mixture * (log_mixture - logprobs), torch.zeros_like(mixture))
        return terms.mean(-1)

    return 0.5 * (kl_from_mixture(final) + kl_from_mixture(premature_logprobs))


def dola_scores(final_logits: torch.Tensor, premature_logits: torch.Tensor, relative_top: float):
    """Contrasted scores (rows, V) and the index of the chosen candidate per row, for one step.

    ``premature_logits`` is (rows, C, V). The divergence and the choice are per row.
    """
    final = torch.log_softmax(final_logits.float(), dim=-1)
    premature = torch.log_softmax(premature_logits.float(), dim=-1)
    choice = divergence(final, premature).argmax(dim=-1)  # (rows,), first maximum on ties
    base = premature[torch.arange(final.shape[0], device=final.device), choice]
    threshold = final.max(dim=-1, keepdim=True).values + math.log(relative_top)
    scores = torch.where(final >= threshold, final - base, torch.full_like(final, float("-inf")))
    return scores, choice


def dola(model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id, pad_token_id, min_new_tokens=0):
    check_inputs(input_ids, attention_mask, max_new_tokens, min_new_tokens)
    layers = model_candidate_layers(model, params["layers"])
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
            scores, choice = dola_scores(final_logits, premature_logits(model, premature_hidden, final_norm), relative_top)
            if penalty != 1.0:
                present = presence_mask(history, history_valid, scores.shape[-1])
                scores = apply_repetition_penalty(scores, present, penalty)
            if len(new_tokens) < min_new_tokens:
                scores = suppress_eos(scores, eos, fallback=final_logits.float())
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
        "candidate_layers": model_candidate_layers(model, params["layers"]),
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
