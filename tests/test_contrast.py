"""The ACD contrast rule: hand-computed case, invariants, and property tests over extreme logits."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multiexit import calculate_contrasted_logits
from multiexit.model.contrast import plausible_head_mask


def test_hand_computed_case():
    p_upper = torch.tensor([0.5, 0.3, 0.15, 0.05])
    p_lower = torch.tensor([0.6, 0.1, 0.2, 0.1])
    out = calculate_contrasted_logits(p_upper.log(), p_lower.log(), alpha=0.25).exp()
    # tau = min(0.25 * 0.5, p_(1)) = 0.125 -> H = {0, 1, 2}; M = 0.95
    ratios = torch.tensor([0.5 / 0.6, 0.3 / 0.1, 0.15 / 0.2])
    expected_head = 0.95 * ratios / ratios.sum()
    assert torch.allclose(out[:3], expected_head, atol=1e-6)
    assert out[3].item() == pytest.approx(0.05, abs=1e-7)
    assert out.argmax().item() == 1  # the token the amateur under-rates wins


def test_minimum_candidates_widens_head():
    upper = torch.tensor([10.0, 0.0, -1.0, -2.0])
    assert plausible_head_mask(torch.log_softmax(upper, -1), 0.1, 1).sum() == 1
    assert plausible_head_mask(torch.log_softmax(upper, -1), 0.1, 3).sum() == 3
    assert plausible_head_mask(torch.log_softmax(upper, -1), 0.1, 2).tolist() == [True, True, False, False]


def test_alpha_one_keeps_only_expert_argmax_mass():
    upper = torch.randn(3, 50)
    lower = torch.randn(3, 50)
    out = calculate_contrasted_logits(upper, lower, alpha=1.0)
    assert torch.allclose(out, torch.log_softmax(upper, -1), atol=1e-6)


@pytest.mark.parametrize("alpha,k", [(0.0, 1), (1.5, 1), (-0.1, 1), (0.1, 0), (0.1, 1.5), (True, 1), (0.1, True)])
def test_invalid_parameters_named(alpha, k):
    with pytest.raises(ValueError, match="alpha|minimum_candidates"):
        calculate_contrasted_logits(torch.zeros(4), torch.zeros(4), alpha=alpha, minimum_candidates=k)


def test_positional_parameters_in_the_original_order():
    # the original (IBM/auto-contrastive-generation d0a7925) is (upper, lower, minimum_candidates=1, alpha=0.1)
    upper, lower = torch.randn(3, 50), torch.randn(3, 50)
    assert torch.equal(calculate_contrasted_logits(upper, lower, 3, 0.3),
                       calculate_contrasted_logits(upper, lower, alpha=0.3, minimum_candidates=3))
    assert torch.equal(calculate_contrasted_logits(upper, lower, 1),
                       calculate_contrasted_logits(upper, lower, alpha=0.1, minimum_candidates=1))
    assert not torch.equal(calculate_contrasted_logits(upper, lower, 1), calculate_contrasted_logits(upper, lower, alpha=1.0))


def test_one_default_for_alpha_and_minimum_candidates():
    import inspect

    from multiexit import MultiExitConfiguration
    from multiexit.decoding import METHODS

    signature = inspect.signature(calculate_contrasted_logits).parameters
    config = MultiExitConfiguration()
    assert (signature["alpha"].default, signature["minimum_candidates"].default) == (0.1, 1)
    assert (config.contrast_alpha, config.contrast_minimum_candidates) == (0.1, 1)
    assert (METHODS["acd"].defaults["alpha"], METHODS["acd"].defaults["minimum_candidates"]) == (0.1, 1)


def test_the_model_path_is_the_checked_function_without_its_check():
    from multiexit import MultiExitConfiguration

    upper, lower = torch.randn(4, 64), torch.randn(4, 64)
    config = MultiExitConfiguration(use_original_head=False, contrast_layer_indices="original;2",
                                    contrast_alpha=0.2, contrast_minimum_candidates=2)
    assert torch.equal(config.effective_contrast_function(upper, lower),
                       calculate_contrasted_logits(upper, lower, alpha=0.2, minimum_candidates=2))


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="same shape"):
        calculate_contrasted_logits(torch.zeros(2, 4), torch.zeros(2, 5))


def test_any_leading_shape_and_dtype_out():
    upper = torch.randn(2, 3, 5, 17, dtype=torch.bfloat16)
    lower = torch.randn(2, 3, 5, 17, dtype=torch.bfloat16)
    out = calculate_contrasted_logits(upper, lower)
    assert out.shape == upper.shape and out.dtype == torch.float32


def _check_invariants(upper, lower, alpha, k):
    out = calculate_contrasted_logits(upper, lower, alpha=alpha, minimum_candidates=k)
    up_logp = torch.log_softmax(upper.float(), -1)
    head = plausible_head_mask(up_logp, alpha, k)
    assert not torch.isnan(out).any()
    assert torch.isfinite(out[head]).all(), "NaN/inf inside the head set"
    probs = out.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-4)
    # outside H: expert probability unchanged
    assert torch.equal(out[~head], up_logp[~head])
    # H keeps its expert mass
    mass_in = torch.where(head, probs, 0).sum(-1)
    mass_up = torch.where(head, up_logp.exp(), 0).sum(-1)
    assert torch.allclose(mass_in, mass_up, atol=1e-4)
    # greedy choice always inside H
    chosen = out.argmax(-1, keepdim=True)
    assert head.gather(-1, chosen).all()


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)
extreme = st.sampled_from([-3e38, -1e30, -65504.0, -1e4, -100.0, 0.0, 100.0, 1e4, 65504.0, 1e30, 3e38])


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    vocab=st.integers(min_value=1, max_value=40),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    alpha=st.floats(min_value=1e-4, max_value=1.0),
    k=st.integers(min_value=1, max_value=5),
)
def test_properties_random_and_extreme(data, vocab, dtype, alpha, k):
    values = st.one_of(finite, extreme)
    upper = torch.tensor(data.draw(st.lists(values, min_size=vocab, max_size=vocab)))
    lower = torch.tensor(data.draw(st.lists(values, min_size=vocab, max_size=vocab)))
    upper, lower = upper.to(dtype), lower.to(dtype)
    upper = torch.nan_to_num(upper)  # fp16 casts of 1e30 overflow to inf: keep finite-valued inputs
    lower = torch.nan_to_num(lower)
    _check_invariants(upper, lower, alpha, k)


def test_amateur_underflow_in_half_precision():
    upper = torch.tensor([[5.0, 4.9, -3.0, 0.0]], dtype=torch.float16)
    lower = torch.tensor([[60000.0, -60000.0, 0.0, 0.0]], dtype=torch.float16)
    _check_invariants(upper, lower, 0.1, 1)
    out = calculate_contrasted_logits(upper, lower)
    assert out.argmax().item() == 1  # amateur probability 0 -> contrast strongly favours token 1
    assert math.isclose(out.exp().sum().item(), 1.0, abs_tol=1e-5)
