"""The sampling methods pass their parameters to ``generate``: checked against values computed by hand.

With a fixed seed, sampling that keeps a single candidate per step is deterministic, so each warper
can be pinned down without statistics: ``top_k=1`` and a tiny ``top_p`` keep only the argmax (greedy),
a tiny ``typical_p`` keeps only the token whose surprisal is closest to the entropy (decoded here step by
step from full forward passes of the plain model). A parameter that never reached ``generate`` would
leave pure sampling, which on these flat distributions differs from all of them.
"""

import pytest
import torch
import transformers as T

from conftest import tiny_config
from multiexit import AutoMultiExitModel
from multiexit.decoding import generate, parse_decoding

NEW = 10
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = tiny_config("llama")
    config.initializer_range = 0.2
    base = T.AutoModelForCausalLM.from_config(config).eval()
    return base, AutoMultiExitModel.from_model(base).eval()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(5)
    return torch.randint(3, 128, (3, 6), generator=g)


def decode(model, prompts, method, seed=0, **params):
    setting = parse_decoding(method, params)
    torch.manual_seed(seed)
    with torch.no_grad():
        return generate(model, setting, prompts, torch.ones_like(prompts), NEW, eos_token_id=EOS, pad_token_id=PAD)


_HAND = {}


def by_hand(base, prompts, pick):
    key = (id(base), tuple(prompts.flatten().tolist()), pick.__name__)
    if key not in _HAND:
        _HAND[key] = _by_hand(base, prompts, pick)
    return _HAND[key]


def argmax(logprobs):
    return int(logprobs.argmax())


def _by_hand(base, prompts, pick):
    """Step-by-step decoding with full forward passes of the plain model; ``pick(logprobs) -> token``; PAD after EOS."""
    rows = []
    for prompt in prompts:
        ids, new, done = prompt.tolist(), [], False
        for _ in range(NEW):
            if done:
                new.append(PAD)
                continue
            with torch.no_grad():
                logits = base(torch.tensor([ids])).logits[0, -1].double()
            token = pick(torch.log_softmax(logits, dim=-1))
            ids.append(token)
            new.append(token)
            done = token == EOS
        rows.append(new)
    return rows


def _trim(rows):
    """Generated rows as lists, cut where generate stopped (all rows finished before NEW tokens)."""
    return [row[:NEW] for row in rows.tolist()]


def _pad_to(rows, width):
    return [row + [PAD] * (width - len(row)) for row in rows]


def most_typical(logprobs):
    entropy = -(logprobs.exp() * logprobs).sum()
    return int(torch.argmin((-logprobs - entropy).abs()))


def test_greedy_is_the_argmax_decoding(models, prompts):
    base, model = models
    expected = by_hand(base, prompts, argmax)
    got = decode(model, prompts, "greedy")
    assert _pad_to(_trim(got), NEW) == expected


def test_pure_sampling_differs_from_greedy_and_follows_the_seed(models, prompts):
    """The baseline the warper tests rely on: without a warper, sampling here is not greedy."""
    _, model = models
    greedy = decode(model, prompts, "greedy").tolist()
    sampled = decode(model, prompts, "temperature", seed=0, temperature=1.0).tolist()
    assert sampled != greedy
    assert decode(model, prompts, "temperature", seed=0, temperature=1.0).tolist() == sampled
    assert decode(model, prompts, "temperature", seed=1, temperature=1.0).tolist() != sampled


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_1_is_greedy(models, prompts, seed):
    _, model = models
    greedy = decode(model, prompts, "greedy").tolist()
    assert decode(model, prompts, "top_k", seed=seed, top_k=1).tolist() == greedy


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_top_p_is_greedy(models, prompts, seed):
    _, model = models
    greedy = decode(model, prompts, "greedy").tolist()
    assert decode(model, prompts, "top_p", seed=seed, top_p=1e-6).tolist() == greedy


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_typical_p_keeps_the_most_typical_token(models, prompts, seed):
    base, model = models
    expected = by_hand(base, prompts, most_typical)
    assert expected != by_hand(base, prompts, argmax)  # not the same as greedy here
    got = decode(model, prompts, "typical", seed=seed, typical_p=1e-6)
    assert _pad_to(_trim(got), NEW) == expected


@pytest.mark.parametrize("method,small,large", [
    ("top_k", {"top_k": 2}, {"top_k": 128}),
    ("top_p", {"top_p": 0.3}, {"top_p": 1.0}),
    ("typical", {"typical_p": 0.3}, {"typical_p": 1.0}),
    ("temperature", {"temperature": 0.05}, {"temperature": 1.0}),
])
def test_changing_the_parameter_changes_the_output_under_one_seed(models, prompts, method, small, large):
    _, model = models
    assert decode(model, prompts, method, seed=0, **small).tolist() != decode(model, prompts, method, seed=0, **large).tolist()
