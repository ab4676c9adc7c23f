"""Decoding settings by name + parameters: one door for every method the pipeline runs.

A decoding setting is a *distribution* (a registered :class:`DecodingMethod`: the original head,
one exit, ACD, DoLa, contrastive decoding...) times a *search* (a registered :class:`Search`:
greedy, beam, top-k, top-p, typical, temperature). A distribution entry lists the searches it runs
under (``searches``; the first is its default). Methods that drive their own decoding loop
(contrastive search, DoLa, contrastive decoding) list none: their parameters say how they search,
and their setting records ``search=None``. The old original-head methods (``greedy``, ``beam``,
``top_k``, ``top_p``, ``typical``, ``temperature``) are entries with a fixed search: their
parameters are that search's parameters.

A method's ``generate`` function is called as::

    generate(model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id, pad_token_id,
             min_new_tokens=0[, search, search_params])   # the last two only for methods with searches
        -> LongTensor (batch, max_new_tokens_or_fewer) of new tokens (pad after EOS)

``model`` is a multi-exit model (see :mod:`multiexit.model.modeling`); methods that read exits set
its MultiExitConfiguration for the call and restore it afterwards. Inputs are left-padded.
The caller seeds torch before each call (see :func:`multiexit.seeding.seed_everything`).

Everything that is particular to a method sits on its entry as a hook, so callers never name a
method: its path label template (:func:`setting_label`), the multi-exit output it reads (for the
pipeline's layer checks before any model loads: :func:`exit_output`), the settings it resolves
from a model (:func:`derived_settings`) and what its latest run observed (:func:`last_run_info`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from multiexit._lazy import LazyModule
from multiexit.decoding.common import multi_exit_output
from multiexit.model.config import MultiExitConfiguration
from multiexit.seeding import seed_everything  # re-exported: callers seed before each call

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")

GenerateFn = Callable[..., "torch.Tensor"]

SEARCH_KEY = "search"  # the params entry that carries a non-default search (see DecodingSetting.wire_params)
LABEL_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")
MODEL_REF = "model:"  # a parameter value "model:<name>" (a pipeline model reference) shows as <name> in labels


class DecodingError(ValueError):
    """A bad decoding setting; ``key`` names the offending part: 'method', 'params', 'params.<name>',
    'search', 'search_params' or 'search_params.<name>'."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


@dataclass(frozen=True)
class Search:
    """A search over a next-token distribution: its parameters and the HF ``generate`` options they give."""

    name: str
    defaults: dict[str, Any]
    options: Callable[[dict], dict]  # search params -> keyword arguments of HF generate
    label: str  # label template over the search params, e.g. 'top-p-{top_p}'
    description: str = ""
    validate: Callable[[dict], None] | None = None


@dataclass(frozen=True)
class DecodingMethod:
    """A next-token distribution (or a method with its own loop) and its hooks."""

    name: str
    defaults: dict[str, Any]
    generate: GenerateFn
    description: str = ""
    required: tuple[str, ...] = ()  # parameters without a default
    validate: Callable[[dict], None] | None = None
    # path label template over the params ('' = the search's label alone; None = '<method>-<param><value>...')
    label: str | None = None
    # searches this distribution runs under, the default first; () = the method runs its own loop
    searches: tuple[str, ...] = ()
    # set for an original-head method with one search (e.g. 'top_p'): its params are that search's params
    fixed_search: str | None = None
    # the multi-exit output a setting reads, as MultiExitConfiguration keywords without vocab_projection_mode
    # (None: the original head only); used for layer checks before any model loads
    output: Callable[[dict], dict] | None = None
    # params naming layers, the one an out-of-range error blames by default first
    layer_params: tuple[str, ...] = ()
    # what the method resolves from a loaded model, to record next to the params (model, params) -> dict
    derived: Callable[[Any, dict], dict] | None = None
    # what the latest generate call observed (params) -> dict
    after_run: Callable[[dict], dict] | None = None


@dataclass(frozen=True)
class DecodingSetting:
    """A validated method, its full parameter dict, and its search with its full parameters.

    ``search`` is None for a method that runs its own loop (then ``search_params`` is empty).
    """

    method: str
    params: dict = field(default_factory=dict)
    search: str | None = None
    search_params: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """{"method", "params"} with the search inside params when it is not the default (see :meth:`wire_params`);
        ``parse_decoding(**as_dict())`` gives this setting back. Runs recorded before searches existed keep their
        dict (and so their fingerprint)."""
        return {"method": self.method, "params": self.wire_params()}

    def search_dict(self) -> dict:
        return {"search": self.search, "search_params": dict(self.search_params)}

    def wire_params(self) -> dict:
        """``params`` as one JSON object that :func:`parse_decoding` reads back into this setting.

        A search other than the method's default (or with other than default parameters) rides along as
        ``{"search": {"name": ..., <search params>}}``; otherwise this is ``params`` itself, so settings
        without a search choice keep the parameter dict they always had.
        """
        spec = METHODS[self.method]
        if not spec.searches or spec.fixed_search is not None:
            return dict(self.params)
        default = spec.searches[0]
        if self.search == default and self.search_params == SEARCHES[default].defaults:
            return dict(self.params)
        return {**self.params, SEARCH_KEY: {"name": self.search, **self.search_params}}


METHODS: dict[str, DecodingMethod] = {}
SEARCHES: dict[str, Search] = {}


def register_method(method: DecodingMethod) -> DecodingMethod:
    for name in method.searches:
        if name not in SEARCHES:
            raise ValueError(f"method {method.name!r}: unknown search {name!r}; register it first")
    if method.fixed_search is not None and method.searches != (method.fixed_search,):
        raise ValueError(f"method {method.name!r}: a fixed search must be its only search")
    METHODS[method.name] = method
    return method


def register_search(search: Search) -> Search:
    SEARCHES[search.name] = search
    return search


def _check_params(what: str, key: str, params: dict, defaults: dict, required: tuple[str, ...] = ()) -> dict:
    allowed = set(defaults) | set(required)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise DecodingError(
            f"{key}.{unknown[0]}",
            f"{what}: unknown parameter(s) {unknown}; valid parameters: {', '.join(sorted(allowed)) or 'none'}",
        )
    missing = [name for name in required if name not in params]
    if missing:
        raise DecodingError(f"{key}.{missing[0]}", f"{what}: missing required parameter(s) {missing}")
    return {**defaults, **params}


def _run_validate(validate, full: dict, what: str, key: str, given=()) -> None:
    if validate is None:
        return
    try:
        validate(full)
    except ValueError as err:
        text = str(err)
        order = [*given, *(name for name in full if name not in given)]
        named = [name for name in order if text.startswith(name) or f"'{name}'" in text]
        raise DecodingError(f"{key}.{named[0]}" if named else key, f"{what}: {text}") from None


def _split_search(params: dict, search, search_params):
    """Take a search spelled inside params ({"search": "top_p"} or {"search": {"name": "top_p", ...}})."""
    if SEARCH_KEY not in params:
        return params, search, search_params
    if search is not None or search_params:
        raise DecodingError("params.search", "give the search either inside params or as search/search_params, not both")
    params = dict(params)
    value = params.pop(SEARCH_KEY)
    if isinstance(value, str):
        return params, value, None
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        inner = dict(value)
        return params, inner.pop("name"), inner
    raise DecodingError("params.search", f"expected a search name or {{'name': <search>, <its params>}}, got {value!r}")


def check_method(method) -> None:
    """Raise :class:`DecodingError` (key 'method') unless ``method`` names a registered method; the message lists them."""
    if method not in METHODS:
        raise DecodingError("method", f"unknown decoding method {method!r}; valid methods: {', '.join(sorted(METHODS))}")


def parse_decoding(method: str, params: dict | None = None, search: str | None = None,
                   search_params: dict | None = None) -> DecodingSetting:
    """Validate a method, its params and a search with its params (defaults filled in).

    ``search=None`` takes the method's default search (greedy for HF-generate distributions). Errors are
    :class:`DecodingError` (a ValueError) naming the bad value and listing the valid ones; ``err.key``
    says which part is bad.
    """
    check_method(method)
    spec = METHODS[method]
    if params is not None and not isinstance(params, dict):
        raise DecodingError("params", f"decoding method {method!r}: params must be a mapping, got {params!r}")
    if search_params is not None and not isinstance(search_params, dict):
        raise DecodingError("search_params", f"search_params must be a mapping, got {search_params!r}")
    params, search, search_params = _split_search(dict(params or {}), search, search_params)
    what = f"decoding method {method!r}"
    full = _check_params(what, "params", params, spec.defaults, spec.required)
    _run_validate(spec.validate, full, what, "params", list(params))
    if spec.fixed_search is not None:
        if search is not None and search != spec.fixed_search:
            raise DecodingError(
                "search", f"{what} is {spec.fixed_search!r} search over the original head already; for another search "
                f"use method 'original' with search {search!r}")
        if search_params:
            raise DecodingError("search_params", f"{what}: its params are the search's parameters; give them as params")
        return DecodingSetting(method, full, spec.fixed_search, dict(full))
    if not spec.searches:
        if search is not None or search_params:
            raise DecodingError(
                "search" if search is not None else "search_params",
                f"{what} runs its own decoding loop and takes no search or search_params (got search={search!r}, "
                f"search_params={search_params!r}); its params set how it searches")
        return DecodingSetting(method, full)
    search = spec.searches[0] if search is None else search
    if search not in spec.searches:
        known = "" if search in SEARCHES else " (unknown search)"
        raise DecodingError("search", f"{what} does not run under search {search!r}{known}; valid searches: "
                                      f"{', '.join(spec.searches)}")
    found = SEARCHES[search]
    what_search = f"search {search!r}"
    search_full = _check_params(what_search, "search_params", dict(search_params or {}), found.defaults)
    _run_validate(found.validate, search_full, what_search, "search_params", list(search_params or {}))
    return DecodingSetting(method, full, search, search_full)


def generate(model, setting: DecodingSetting, input_ids, attention_mask, max_new_tokens: int, *, eos_token_id,
             pad_token_id, min_new_tokens: int = 0):
    """Run ``setting`` on a left-padded batch; returns the new tokens only (batch, <= max_new_tokens).

    ``min_new_tokens``: EOS cannot end a row before this many new tokens (0: no floor).
    """
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")
    if isinstance(max_new_tokens, int) and min_new_tokens > max_new_tokens:
        raise ValueError(f"min_new_tokens ({min_new_tokens}) is larger than max_new_tokens ({max_new_tokens})")
    spec = METHODS[setting.method]
    extra = {"search": setting.search, "search_params": dict(setting.search_params)} if spec.searches else {}
    with torch.inference_mode():
        return spec.generate(
            model,
            input_ids,
            attention_mask,
            max_new_tokens,
            dict(setting.params),
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            min_new_tokens=min_new_tokens,
            **extra,
        )


# ------------------------------------------------------------------------------ hooks, called by the pipeline


def _setting_parts(setting) -> tuple[str, dict, str | None, dict]:
    if isinstance(setting, dict):
        return setting["method"], setting["params"], setting.get("search"), setting.get("search_params") or {}
    return setting.method, setting.params, setting.search, setting.search_params


def format_label_value(value) -> str:
    """A parameter value as a path-safe label part: 0.5 -> '0.5', 1.0 -> '1', [0, 2] -> '0.2', 'model:gpt2' -> 'gpt2'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, tuple)):
        return ".".join(format_label_value(v) for v in value)
    if isinstance(value, str) and value.startswith(MODEL_REF):
        return value[len(MODEL_REF):]
    text = str(value)
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text).strip("_") or "none"


def setting_label(setting: DecodingSetting, explicit: list[str] | None = None, template: str | None = None) -> str:
    """The path label of ``setting``, e.g. 'acd-original-8-a0.1', 'exit-16-beam-5', 'top-p-0.95'.

    Default: the method's template over its params, then '-' and the search's template over the search params
    when the search is not the method's default (a method whose template is '' shows the search's label alone,
    so ``original`` x top_p is 'top-p-0.95', as the method ``top_p``). A method without a template gets
    '<method>-<param><value>...' over the ``explicit`` params (default: all). ``template`` replaces all of this:
    a format string over the params, the search params and ``{search}``. Raises ValueError for a template naming
    an unknown field or a label that is not a usable path component.
    """
    method, params, search, search_params = _setting_parts(setting)
    spec = METHODS[method]
    values = {**{k: format_label_value(v) for k, v in search_params.items()},
              **{k: format_label_value(v) for k, v in params.items()}}
    if template is not None:
        try:
            label = template.format(**{"search": format_label_value(search or "own"), **values})
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"template {template!r} names an unknown parameter ({err})") from None
    else:
        if spec.label is None:
            names = list(params) if explicit is None else [n for n in explicit if n in params]
            parts = [method.replace("_", "-")] + [f"{n.replace('_', '')}{format_label_value(params[n])}" for n in names]
        else:
            parts = [spec.label.format(**values)] if spec.label else []
        if search is not None and (not parts or search != spec.searches[0]):
            parts.append(SEARCHES[search].label.format(**{k: format_label_value(v) for k, v in search_params.items()}))
        label = "-".join(parts)
    if not LABEL_OK.match(label):
        raise ValueError(f"label {label!r} is not a usable path component")
    return label


def exit_output(setting) -> tuple[dict, tuple[str, ...]] | None:
    """The multi-exit output ``setting`` reads and its layer-naming params, or None (original head / own loop).

    The output is MultiExitConfiguration keywords without vocab_projection_mode (the caller adds the mode it
    resolves); the params are listed with the one to blame by default for a bad layer first.
    """
    method, params, _, _ = _setting_parts(setting)
    spec = METHODS[method]
    if spec.output is None:
        return None
    return spec.output(params), spec.layer_params


def derived_settings(model, setting) -> dict:
    """Settings the method resolves from ``model``, to record next to its params ({} for most methods).

    ``setting`` is a :class:`DecodingSetting` or a dict with method/params. DoLa: the resolved candidate layers
    and the model's layer count; contrastive decoding: the amateur's resolved folder and size; contrastive
    search: which hidden state and similarity it uses.
    """
    method, params, _, _ = _setting_parts(setting)
    spec = METHODS[method]
    return {} if spec.derived is None else spec.derived(model, params)


def last_run_info(setting) -> dict:
    """What the latest generate call of the method observed (DoLa: premature-layer counts); {} otherwise."""
    method, params, _, _ = _setting_parts(setting)
    spec = METHODS[method]
    return {} if spec.after_run is None else spec.after_run(params)


# ------------------------------------------------------------------------------ parameter checks


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
        if spec.fixed_search is not None or not spec.searches:
            searches = ""
        else:
            searches = f"; searches: {', '.join(spec.searches)} (default {spec.searches[0]})"
        lines.append(f"{name}: {spec.description} [{params}]{searches}")
    lines.append('searches (a non-default one rides in the params: {"search": {"name": "top_p", "top_p": 0.9}}):')
    for name in sorted(SEARCHES):
        search = SEARCHES[name]
        params = ", ".join(f"{k}={v!r}" for k, v in search.defaults.items())
        lines.append(f"  {name}: {search.description} [{params}]")
    return "\n".join(lines)


__all__ = [
    "DecodingError",
    "DecodingMethod",
    "DecodingSetting",
    "METHODS",
    "SEARCHES",
    "Search",
    "all_checks",
    "check_config",
    "check_method",
    "check_range",
    "derived_settings",
    "describe_methods",
    "exit_output",
    "format_label_value",
    "generate",
    "last_run_info",
    "multi_exit_output",
    "parse_decoding",
    "register_method",
    "register_search",
    "seed_everything",
    "setting_label",
]
