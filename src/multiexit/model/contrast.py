"""The Auto-Contrastive Decoding rule: contrast an expert (upper) exit with an amateur (lower) exit."""

from __future__ import annotations

import math

from multiexit._lazy import LazyModule

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")


# Floor used in place of -inf log-probabilities when differences are taken; keeps
# (upper - lower) finite for every pair of inputs.
_LOG_FLOOR = -3.4028234663852886e38 / 4  # torch.finfo(torch.float32).min / 4

# The rule's defaults, the only ones (MultiExitConfiguration's contrast_alpha and contrast_minimum_candidates
# take them): IBM/auto-contrastive-generation d0a7925, contrast_calculation.py, calculate_contrasted_logits.
ALPHA = 0.1
MINIMUM_CANDIDATES = 1


def check_contrast_parameters(alpha: float, minimum_candidates: int) -> None:
    """Raise ValueError naming the bad parameter (shared by the configuration and the function)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
    if isinstance(minimum_candidates, bool) or not isinstance(minimum_candidates, int) or minimum_candidates < 1:
        raise ValueError(f"minimum_candidates must be an integer >= 1, got {minimum_candidates!r}")


def plausible_head_mask(upper_logprobs: torch.Tensor, alpha: float, minimum_candidates: int) -> torch.Tensor:
    """Boolean mask of the head set H = {v : p_v >= min(alpha * max p, k-th largest p)}."""
    k = min(int(minimum_candidates), upper_logprobs.shape[-1])
    top = upper_logprobs.max(dim=-1, keepdim=True).values
    threshold = top + math.log(alpha)
    if k > 1:  # for k == 1 the k-th largest is the maximum, never below alpha * max
        threshold = torch.minimum(threshold, upper_logprobs.topk(k, dim=-1).values[..., -1:])
    return upper_logprobs >= threshold


def calculate_contrasted_logits(
    upper_logits: torch.Tensor,
    lower_logits: torch.Tensor,
    minimum_candidates: int = MINIMUM_CANDIDATES,
    alpha: float = ALPHA,
) -> torch.Tensor:
    """Return log-probabilities of the ACD distribution.

    The parameters are in the original function's order (IBM/auto-contrastive-generation d0a7925,
    ``contrast_calculation.py``: upper, lower, minimum_candidates, alpha), so positional calls written
    for it mean the same here. Both are checked (ValueError naming the parameter).

    p^U = softmax(upper), p^L = softmax(lower); the head set H holds the tokens with
    p^U_v >= min(alpha * max p^U, k-th largest p^U) (k = minimum_candidates) and M is
    its expert mass. Inside H the distribution is M * softmax_H(log p^U - log p^L);
    outside H every token keeps its expert probability. The result sums to one.

    Works on any leading shape, computes in float32 log space (so an amateur
    probability that underflows to zero never produces NaN/inf inside H), and
    returns a float32 tensor on the inputs' device.
    """
    check_contrast_parameters(alpha, minimum_candidates)
    return contrasted_logprobs(upper_logits, lower_logits, alpha, minimum_candidates)


def contrasted_logprobs(upper_logits: torch.Tensor, lower_logits: torch.Tensor, alpha: float,
                        minimum_candidates: int) -> torch.Tensor:
    """:func:`calculate_contrasted_logits` without the parameter check: what a multi-exit model calls at every
    step, with the parameters its :class:`~multiexit.model.config.MultiExitConfiguration` checked once."""
    if upper_logits.shape != lower_logits.shape:
        raise ValueError(
            f"upper_logits and lower_logits must have the same shape, got {tuple(upper_logits.shape)} "
            f"and {tuple(lower_logits.shape)}"
        )
    upper = torch.log_softmax(upper_logits.float(), dim=-1)
    lower = torch.log_softmax(lower_logits.float().to(upper.device), dim=-1)
    head = plausible_head_mask(upper, alpha, minimum_candidates)

    outside = ~head
    head_mass = torch.logsumexp(upper.masked_fill(outside, float("-inf")), dim=-1, keepdim=True)
    # log-probs may be -inf (underflow; with minimum_candidates > 1 even inside H): clamp both so that
    # every difference inside H is finite
    difference = (upper.clamp(min=_LOG_FLOOR) - lower.clamp(min=_LOG_FLOOR)).masked_fill_(outside, float("-inf"))
    inside = torch.log_softmax(difference, dim=-1).add_(head_mass)
    return torch.where(head, inside, upper)
