"""Shared pieces of the hand-written decoding loops: a left-padded batch with its own KV cache, EOS bookkeeping.

Every baseline drives the model step by step itself (transformers 5 moved contrastive search
and DoLa out of its core), so the loops share one small state object:

* the prompt batch is left-padded; position ids count only real tokens, so a prompt gets the
  same positions whatever its batch neighbours are;
* the KV cache is a ``DynamicCache`` passed as ``cache=`` (the transformers 5 name);
* ``min_new_tokens``: EOS scores are -inf until that many tokens have been generated (:func:`suppress_eos`);
* rows can be repeated (contrastive search, beam search) and selected again, which keeps the
  cache, the attention mask and the positions in step.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Iterable

from multiexit._lazy import LazyModule
from multiexit.model.config import MultiExitConfiguration

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")


@contextlib.contextmanager
def multi_exit_output(model, multi_exit_config: MultiExitConfiguration):
    """Temporarily switch a multi-exit model to ``multi_exit_config`` (restored afterwards).

    A plain causal LM (no multi-exit configuration) only answers with its own head: it passes through
    unchanged when ``multi_exit_config`` asks for the original head, and is an error otherwise.
    """
    if not hasattr(model, "set_multi_exit_config"):
        if not multi_exit_config.use_original_head:
            raise TypeError(f"{type(model).__name__} is not a multi-exit model; it has only its original head")
        yield model
        return
    previous = model.multi_exit_config
    model.set_multi_exit_config(multi_exit_config)
    try:
        yield model
    finally:
        model.multi_exit_config = previous


def original_head(model):
    """Make a (multi-exit) model answer with its original head (the plain causal LM) for the duration."""
    return multi_exit_output(model, MultiExitConfiguration(use_original_head=True))


@functools.cache
def _accepts_position_ids(model_class: type) -> bool:
    base = getattr(model_class, "multi_exit_base_class", None) or model_class
    return "position_ids" in inspect.signature(base.forward).parameters


class CachedBatch:
    """A left-padded batch being decoded by one model with its own ``DynamicCache`` (built from the model's config,
    as HF generate builds it); ``attention_mask=None`` means every token is real."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        self.model = model
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
        from transformers import DynamicCache

        self.cache = DynamicCache(config=model.config)
        self._positions = _accepts_position_ids(type(model))
        self._prompt_ids = input_ids
        self.next_position = None

    def _call(self, input_ids, position_ids, hidden_states: bool):
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": self.mask,
            "cache": self.cache,
            "use_cache": True,
            "output_hidden_states": hidden_states,
            "logits_to_keep": 1,
        }
        if self._positions:
            kwargs["position_ids"] = position_ids
        return self.model(**kwargs)

    def prefill(self, hidden_states: bool = False):
        """Run the prompt; returns the model output (logits of the last position only)."""
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.next_position = positions[:, -1:] + 1
        return self._call(self._prompt_ids, positions, hidden_states)

    def step(self, tokens: torch.Tensor, hidden_states: bool = False):
        """Feed one new token per row (shape (rows,) or (rows, 1))."""
        tokens = tokens.reshape(-1, 1)
        self.mask = torch.cat([self.mask, torch.ones_like(tokens)], dim=1)
        positions = self.next_position
        self.next_position = positions + 1
        return self._call(tokens, positions, hidden_states)

    def repeat_rows(self, times: int) -> None:
        """Each row becomes ``times`` consecutive rows (row b -> rows b*times .. b*times+times-1)."""
        if times == 1:
            return
        self.cache.batch_repeat_interleave(times)
        self.mask = self.mask.repeat_interleave(times, dim=0)
        self.next_position = self.next_position.repeat_interleave(times, dim=0)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (in that order); used after repeat_rows or to reorder beams."""
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.next_position = self.next_position[rows]


def eos_ids(eos_token_id, device) -> torch.Tensor | None:
    """EOS id(s) as a 1-D tensor, or None when generation only stops at max_new_tokens."""
    if eos_token_id is None:
        return None
    if isinstance(eos_token_id, int):
        eos_token_id = [eos_token_id]
    values = [int(v) for v in eos_token_id]
    return torch.tensor(values, dtype=torch.long, device=device) if values else None


def is_eos(tokens: torch.Tensor, eos: torch.Tensor | None) -> torch.Tensor:
    if eos is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, eos)


def pad_value(pad_token_id, eos: torch.Tensor | None) -> int:
    if pad_token_id is not None:
        return int(pad_token_id)
    if eos is not None:
        return int(eos[0])
    return 0


def check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
                 min_new_tokens: int = 0) -> None:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (batch, prompt_length>0), got {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}")
    if attention_mask is not None and not bool((attention_mask[:, -1] != 0).all()):
        raise ValueError("inputs must be left-padded: the last position of every row must be a real token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")


def suppress_eos(scores: torch.Tensor, eos: torch.Tensor | None, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """``scores`` (rows, V) with -inf at the EOS id(s), as HF's MinNewTokensLengthLogitsProcessor; used while
    fewer than ``min_new_tokens`` tokens have been generated.

    A contrastive score can be finite only at EOS (DoLa's relative-top set or CD's plausible set may hold
    EOS alone); HF's argmax would then return token 0. Instead, when ``fallback`` (rows, V) is given, such
    a row gets score 0 at the non-EOS token with the largest ``fallback`` (the model's own log-probs):
    our choice.
    """
    if eos is None:
        return scores
    eos = eos[eos < scores.shape[-1]]
    scores = scores.index_fill(-1, eos, float("-inf"))
    if fallback is not None:
        empty = ~torch.isfinite(scores).any(dim=-1)
        if bool(empty.any()):
            best = fallback.index_fill(-1, eos, float("-inf")).argmax(dim=-1)
            rescue = torch.full_like(scores, float("-inf")).scatter(-1, best[:, None], 0.0)
            scores = torch.where(empty[:, None], rescue, scores)
    return scores


def presence_mask(token_ids: torch.Tensor, valid: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(rows, vocab) bool: which tokens occur among the valid (non-pad) positions of each row."""
    counts = torch.zeros(token_ids.shape[0], vocab_size, device=token_ids.device)
    counts.scatter_add_(1, token_ids.clamp(0, vocab_size - 1), valid.to(counts.dtype))
    return counts > 0


def apply_repetition_penalty(scores: torch.Tensor, present: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (as HF applies it): seen tokens' scores shrink (divided if > 0, multiplied if < 0).

    Only real tokens count as seen (pad positions of left-padded rows are excluded), so a row's
    scores do not depend on how much padding its batch gave it.
    """
    if penalty == 1.0:
        return scores
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(present, penalised, scores)


def stack_new_tokens(tokens: Iterable[torch.Tensor], rows: int, device) -> torch.Tensor:
    tokens = list(tokens)
    if not tokens:
        return torch.empty(rows, 0, dtype=torch.long, device=device)
    return torch.stack(tokens, dim=1)
