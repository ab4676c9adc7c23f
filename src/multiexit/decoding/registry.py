"""Decoding settings by name + parameters: one door for every method the pipeline runs.

A method is registered with its parameter defaults and a ``generate`` function::

    generate(model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id, pad_token_id)
        -> LongTensor (batch, max_new_tokens_or_fewer) of new tokens (pad after EOS)

``model`` is a multi-exit model (see :mod:`multiexit.model.modeling`); methods that read exits set
its MultiExitConfiguration for the call and restore it afterwards. Inputs are left-padded.
The caller seeds torch before each call (see :func:`multiexit.seeding.seed_everything`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from multiexit.model.config import MultiExitConfiguration
from multiexit.seeding import seed_everything  # re-exported: callers seed before each call

GenerateFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class DecodingMethod:
    name: str
    defaults: dict[str, Any]
    generate: GenerateFn
    description: str = ""
    required: tuple[str, ...] = ()  # parameters without a default
    validate: Callable[[dict], None] | None = None


@dataclass(frozen=True)
class DecodingSetting:
    """A validated method name and its full parameter dict (defaults filled in)."""

    method: str
    params: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"method": self.method, "params": dict(self.params)}


METHODS: dict[str, DecodingMethod] = {}


def register_method(method: DecodingMethod) -> DecodingMethod:
    METHODS[method.name] = method
    return method


def parse_decoding(method: str, params: dict | None = None) -> DecodingSetting:
    """Validate ``method`` and ``params``; errors name the bad value and list the valid ones."""
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; valid methods: {', '.join(sorted(METHODS))}")
    spec = METHODS[method]
    params = dict(params or {})
    allowed = set(spec.defaults) | set(spec.required)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"decoding method {method!r}: unknown parameter(s) {unknown}; valid parameters: {', '.join(sorted(allowed)) or 'none'}"
        )
    missing = [name for name in spec.required if name not in params]
    if missing:
        raise ValueError(f"decoding method {method!r}: missing required parameter(s) {missing}")
    full = {**spec.defaults, **params}
    if spec.validate is not None:
        try:
            spec.validate(full)
        except ValueError as err:
            raise ValueError(f"decoding method {method!r}: {err}") from None
    return DecodingSetting(method, full)


@contextlib.contextmanager
def multi_exit_output(model, multi_exit_config: MultiExitConfiguration):
    """Temporarily switch a multi-exit model to ``multi_exit_config``."""
    previous = model.multi_exit_config
    model.set_multi_exit_config(multi_exit_config)
    try:
        yield model
    finally:
        model.multi_exit_config = previous


def generate(model, setting: DecodingSetting, input_ids, attention_mask, max_new_tokens: int, *, eos_token_id, pad_token_id):
    """Run ``setting`` on a left-padded batch; returns the new tokens only (batch, <= max_new_tokens)."""
    spec = METHODS[setting.method]
    with torch.inference_mode():
        return spec.generate(
            model,
            input_ids,
            attention_mask,
            max_new_tokens,
            dict(setting.params),
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


def check_range(name: str, low: float, high: float, low_open: bool = False, integer: bool = False):
    def check(params: dict) -> None:
        value = params[name]
        kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not kind_ok:
            raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if value < low or value > high or (low_open and value == low):
            raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")

    return check


def all_checks(*checks) -> Callable[[dict], None]:
    def check(params: dict) -> None:
        for item in checks:
            item(params)

    return check


def check_config(build: Callable[[dict], MultiExitConfiguration]) -> Callable[[dict], None]:
    def check(params: dict) -> None:
        build(params)

    return check


def describe_methods() -> str:
    lines = []
    for name in sorted(METHODS):
        spec = METHODS[name]
        params = ", ".join([*(f"{k}={v!r}" for k, v in spec.defaults.items()), *(f"{k} (required)" for k in spec.required)])
        lines.append(f"{name}: {spec.description} [{params}]")
    return "\n".join(lines)


__all__ = [
    "DecodingMethod",
    "DecodingSetting",
    "all_checks",
    "check_config",
    "check_range",
    "METHODS",
    "describe_methods",
    "generate",
    "multi_exit_output",
    "parse_decoding",
    "register_method",
    "seed_everything",
]

