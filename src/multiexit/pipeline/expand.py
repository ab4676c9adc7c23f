"""Grid expansion: a config's decoding entries into one :class:`Setting` per (model, label), and its
``lm_eval`` block into one :class:`LmEvalRun` variant list per model. Layer checks for both.

Pure Python over the validated config: no model is loaded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from multiexit.model.config import ORIGINAL, MultiExitConfiguration, VocabularyProjectionMode
from multiexit.settings import ConfigError

# the ACD alpha of lm-eval pairs when lm_eval.alpha is not set: the model configuration's own default
CONTRAST_ALPHA = MultiExitConfiguration.contrast_alpha
# symbolic layers of lm-eval ACD pairs, resolved per model
SYMBOLIC_LAYERS = {"top": lambda spec: spec["num_layers"], "middle": lambda spec: spec["num_layers"] // 2}


@dataclass(frozen=True)
class Setting:
    """One expanded decoding setting for one model (a generation path label)."""

    model: str
    label: str
    method: str
    # full, validated parameters (model references still as "model:<name>"), as scripts/generate.py --params
    # takes them: a non-default search rides along as params["search"] = {"name": ..., <search params>}
    params: dict
    seed: int
    source: str  # config key of the decoding entry it came from, e.g. "decoding[3]"
    search: str | None = None  # the search over the method's distribution (None: the method's own loop)
    search_params: dict = field(default_factory=dict)  # the search's full parameters
    datasets: tuple[str, ...] = ()  # the datasets it generates on (the entry's `datasets`, default: every dataset)

    def as_dict(self) -> dict:
        return {"model": self.model, "label": self.label, "method": self.method, "params": self.params,
                "seed": self.seed, "source": self.source, "search": self.search, "search_params": self.search_params}


@dataclass(frozen=True)
class LmEvalRun:
    model: str
    task: str
    variant: str  # original | exit-<l> | acd-<upper>-<lower>
    model_args: dict  # multi-exit settings for lm-eval's model_args
    options: dict  # task options from the config (e.g. a local task's data file)


def _layer_values(token: str, spec: dict, key: str) -> list[int]:
    if token == "exits":
        if not spec["exits"]:
            raise ConfigError(key, "'exits' expands to the model's exit layers, but this model has no `exits`")
        return list(spec["exits"])
    if token == "layers":
        return list(range(1, spec["num_layers"]))
    raise AssertionError(token)


def expand_params(params: dict, spec: dict, key: str) -> list[tuple[dict, list[str]]]:
    """Cartesian product of list-valued params ('exits'/'layers' expand to layer lists).

    Returns (params, explicitly-set keys) pairs.
    """
    axes: list[list] = []
    names = list(params)
    for name in names:
        value = params[name]
        if isinstance(value, str) and value in ("exits", "layers"):
            value = _layer_values(value, spec, f"{key}.{name}")
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"{key}.{name}", "an empty list expands to no setting")
            axes.append(value)
        else:
            axes.append([value])
    return [(dict(zip(names, combo)), names) for combo in itertools.product(*axes)]


def projection_mode(spec: dict, params: dict) -> VocabularyProjectionMode:
    mode = params.get("vocab_projection_mode") or spec["vocab_projection_mode"]
    if mode is None:
        return VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION
    return VocabularyProjectionMode.parse(mode)


def available_exits(spec: dict, mode: VocabularyProjectionMode) -> list[int] | None:
    """Layers readable in ``mode`` once the model's pipeline stages ran (None = every layer)."""
    if mode == VocabularyProjectionMode.SHARED_PROJECTION_DIRECT:
        return None
    if mode == VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS:
        cast = spec["cast"]
        layers = [] if cast is None else (spec["exits"] if cast["layers"] == "exits" else cast["layers"])
        return sorted(set(layers) | {spec["num_layers"]})
    return sorted(spec["exits"])


def check_layers(spec: dict, model: str, needs: tuple[dict, tuple[str, ...]] | None, params: dict, key: str) -> None:
    """Layer checks for a setting that reads exits: layer range and heads present.

    ``needs`` is what :func:`multiexit.decoding.registry.exit_output` gives: the multi-exit output the setting
    reads and the params naming its layers (the first is blamed unless the error names another's layer).
    """
    if needs is None:
        return
    output, layer_params = needs
    try:
        mode = projection_mode(spec, params)
        config = MultiExitConfiguration(**{**output, "vocab_projection_mode": mode})
        config.validate_for_model(spec["num_layers"], available_exits(spec, mode))
    except ValueError as err:
        text = str(err)
        blamed = layer_params[0] if layer_params else None
        for name in layer_params[1:]:
            if params.get(name) != ORIGINAL and f"layer {params.get(name)} " in text:
                blamed = name
        raise ConfigError(f"{key}.{blamed}" if blamed else key, f"{text} (model {model!r})") from None


def check_method(method, key: str) -> None:
    """The registry's :func:`~multiexit.decoding.registry.check_method`, its error as a ConfigError naming ``key``."""
    from multiexit.decoding import registry

    try:
        registry.check_method(method)
    except ValueError as err:
        raise ConfigError(key, str(err)) from None


def expand_decoding(config: dict, models: dict, generating: list[str], check_refs) -> dict[str, list[Setting]]:
    """Every decoding entry x its models x its parameter grid x seeds -> settings per model (labels unique)."""
    from multiexit.decoding.registry import exit_output, parse_decoding, setting_label

    settings: dict[str, list[Setting]] = {m: [] for m in generating}
    for index, entry in enumerate(config["decoding"]):
        key = f"decoding[{index}]"
        seeds = entry.get("seeds") or config["seeds"]  # an entry's own seeds (e.g. a sampling row's spread)
        method = entry["method"]
        check_method(method, f"{key}.method")
        targets = entry.get("models", generating)
        for j, model in enumerate(targets):
            if model not in models:
                raise ConfigError(f"{key}.models[{j}]", f"unknown model {model!r}; known: {', '.join(models)}")
        all_datasets = list(config["datasets"])
        for j, dataset in enumerate(entry.get("datasets", [])):
            if dataset not in config["datasets"]:
                raise ConfigError(f"{key}.datasets[{j}]", f"unknown dataset {dataset!r}; known: {', '.join(all_datasets)}")
        if "datasets" in entry and not entry["datasets"]:
            raise ConfigError(f"{key}.datasets", "an empty list generates on no dataset")
        # in the config's dataset order, whatever the entry's
        datasets = tuple(d for d in all_datasets if d in entry.get("datasets", all_datasets))
        check_refs(entry["params"], f"{key}.params")
        check_refs(entry["search_params"], f"{key}.search_params")
        search = entry.get("search")
        for model in targets:
            spec = models[model]
            search_grid = expand_params(entry["search_params"], spec, f"{key}.search_params")
            for (params, explicit), (search_params, _) in itertools.product(
                    expand_params(entry["params"], spec, f"{key}.params"), search_grid):
                try:
                    setting = parse_decoding(method, params, search, search_params)
                except ValueError as err:
                    where = getattr(err, "key", None)
                    if where is None:
                        bad = [name for name in params if f"'{name}'" in str(err) or str(err).split(": ", 1)[-1].startswith(name)]
                        where = "params" + (f".{bad[0]}" if bad else "")
                    raise ConfigError(f"{key}.{where}", str(err)) from None
                check_layers(spec, model, exit_output(setting), setting.params, f"{key}.params")
                try:
                    label = setting_label(setting, explicit, entry.get("label"))
                except ValueError as err:
                    raise ConfigError(f"{key}.label", str(err)) from None
                for seed in seeds:
                    full_label = label if len(seeds) == 1 else f"{label}-seed{seed}"
                    clash = [s for s in settings.setdefault(model, []) if s.label == full_label]
                    if clash:
                        raise ConfigError(
                            key, f"setting label {full_label!r} for model {model!r} is also produced by {clash[0].source}; "
                            "give one of them a distinct `label`"
                        )
                    settings[model].append(Setting(model, full_label, method, setting.wire_params(), seed, key,
                                                   setting.search, dict(setting.search_params), datasets))
    return settings


def acd_pairs(lm: dict, model: str, lm_models: list[str]) -> list[tuple[str, list]]:
    """The ``lm_eval.acd`` pairs of ``model`` with their config keys: one list for every model, or a list per model."""
    acd = lm["acd"]
    if isinstance(acd, dict):
        for name in acd:
            if name not in lm_models:
                raise ConfigError(f"lm_eval.acd.{name}", f"model {name!r} is not benchmarked (lm-eval models: {', '.join(lm_models)})")
        return [(f"lm_eval.acd.{model}[{p}]", pair) for p, pair in enumerate(acd.get(model, []))]
    return [(f"lm_eval.acd[{p}]", pair) for p, pair in enumerate(acd)]


def _resolve_layer(value, spec: dict):
    return SYMBOLIC_LAYERS[value](spec) if value in SYMBOLIC_LAYERS else value


def lm_eval_variants(spec: dict, model: str, lm: dict, lm_models: list[str]) -> list[tuple[str, dict]]:
    """(variant, multi-exit model_args) of one model: original head, single exits, ACD pairs (layers checked)."""
    variants: list[tuple[str, dict]] = []
    if lm["original"]:
        variants.append(("original", {"use_original_head": True}))
    exits = spec["exits"] if lm["exits"] is True else (lm["exits"] or [])
    for layer in exits:
        if layer not in spec["exits"] and projection_mode(spec, {}) != VocabularyProjectionMode.SHARED_PROJECTION_DIRECT:
            raise ConfigError("lm_eval.exits", f"layer {layer} has no exit head in model {model!r} (exits: {spec['exits']})")
        variants.append((f"exit-{layer}", {"use_original_head": False, "output_layer_index": layer}))
    pairs = acd_pairs(lm, model, lm_models)
    alpha = lm.get("alpha", CONTRAST_ALPHA)
    if pairs:
        try:
            MultiExitConfiguration(contrast_alpha=alpha)
        except ValueError as err:
            raise ConfigError("lm_eval.alpha", str(err)) from None
    for key, pair in pairs:
        upper, lower = (_resolve_layer(layer, spec) for layer in pair)
        if upper == lower:
            raise ConfigError(key, f"upper and lower are the same layer ({upper}) in model {model!r}")
        output = {"use_original_head": False, "contrast_layer_indices": (upper, lower)}
        check_layers(spec, model, (output, ("lower", "upper")), {"upper": upper, "lower": lower}, key)
        variants.append((f"acd-{upper}-{lower}", {
            "use_original_head": False, "contrast_layer_indices": f"{upper};{lower}", "contrast_alpha": alpha}))
    mode = spec["vocab_projection_mode"]
    if not variants:
        raise ConfigError("lm_eval", "no output to score: set original, exits or acd")
    return [(variant, args if mode is None or args.get("use_original_head") else {**args, "vocab_projection_mode": mode})
            for variant, args in variants]


__all__ = ["CONTRAST_ALPHA", "LmEvalRun", "Setting", "acd_pairs", "available_exits", "check_layers", "expand_decoding",
           "expand_params", "lm_eval_variants", "projection_mode"]
