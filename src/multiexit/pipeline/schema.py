"""The config file's shape: load YAML, validate it against the JSON schema, fill in the schema's defaults.

The schema (``workflow/schemas/config.schema.yaml``; the Snakefile passes its path in) says which keys
exist and their structure. Values of stage settings are not checked here but by each stage's
:class:`multiexit.settings.Settings` dataclass, at plan time (:mod:`multiexit.pipeline.plan`).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from multiexit.settings import ConfigError

# Per-stage job resources: model stages may use a GPU on a cluster, the rest are CPU jobs. A stage's
# batch size is a setting of that stage (its Settings dataclass holds the default); `resources.<stage>.batch_size`
# only overrides it.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "prepare_model": {"gpu": 0, "mem_mb": 8000, "runtime": 60, "threads": 1},
    "train_heads": {"gpu": 1, "mem_mb": 32000, "runtime": 720, "threads": 4},
    "fit_cast": {"gpu": 1, "mem_mb": 32000, "runtime": 120, "threads": 4},
    "prompt_set": {"gpu": 0, "mem_mb": 4000, "runtime": 30, "threads": 1},
    "generate": {"gpu": 1, "mem_mb": 16000, "runtime": 240, "threads": 2},
    "score": {"gpu": 0, "mem_mb": 16000, "runtime": 120, "threads": 2},
    "lm_eval": {"gpu": 1, "mem_mb": 16000, "runtime": 240, "threads": 2},
    "tables": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "threads": 1},
    "figures": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "threads": 1},
}


def load_schema(path: str | Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def validate_config(config: dict, schema: dict | str | Path) -> dict:
    """Check ``config`` against the JSON schema (a dict or its file) and return a deep copy with defaults filled in.

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
