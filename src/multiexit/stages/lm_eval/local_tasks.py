"""Offline lm-eval tasks over local files: LAMBADA-format jsonl and rolling text perplexity.

The templates in ``multiexit/lm_eval/tasks/`` leave the data file open. A task over a real
file is either a config dict (for :func:`multiexit.stages.lm_eval.run_lm_eval`, built by
:func:`local_task_config`) or a YAML file that includes the template (for the command
line's ``--include_path``, written by :func:`write_task_yaml`).

Task specs (``run_lm_eval(tasks=...)`` and ``scripts/lm_eval_run.py --tasks``):
``lambada_openai`` (any task lm-eval knows), ``lambada_local:/data/x.jsonl`` (a local task
named after its kind) or ``mytask=lambada_local:/data/x.jsonl`` (named ``mytask``).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from multiexit.io import atomic_open

TASKS_DIR = Path(__file__).parent / "tasks"
LOCAL_TASK_KINDS = {
    "lambada_local": TASKS_DIR / "lambada_local.template.yaml",
    "text_perplexity_local": TASKS_DIR / "text_perplexity_local.template.yaml",
}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _check(kind: str, data_file: str | Path, task_name: str | None) -> tuple[Path, Path, str]:
    if kind not in LOCAL_TASK_KINDS:
        raise ValueError(f"local task kind {kind!r} is unknown; allowed: {', '.join(LOCAL_TASK_KINDS)}")
    data = Path(data_file).expanduser().resolve()
    if not data.is_file():
        raise ValueError(f"{kind}: data file not found: {data_file}")
    name = task_name or kind
    if not _NAME.match(name):
        raise ValueError(f"task name {name!r}: use letters, digits, '_', '.', '-' only")
    return LOCAL_TASK_KINDS[kind], data, name


def local_task_config(kind: str, data_file: str | Path, task_name: str | None = None) -> dict:
    """The task config dict of a local task over ``data_file`` (``!function`` entries resolved)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    template, data, name = _check(kind, data_file, task_name)
    config = load_yaml(template)
    config["task"] = name
    config["dataset_kwargs"] = _dataset_kwargs(template, data)
    return config


def _dataset_kwargs(template: Path, data: Path) -> dict:
    """The template's dataset_kwargs with the data file filled in (includes merge shallowly)."""
    with template.open(encoding="utf-8") as handle:
        raw = yaml.load(handle, Loader=_PlainLoader)  # noqa: S506 (a loader that ignores !function tags)
    return {**(raw.get("dataset_kwargs") or {}), "data_files": {"test": str(data)}}


class _PlainLoader(yaml.SafeLoader):
    pass


_PlainLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def write_task_yaml(kind: str, data_file: str | Path, directory: str | Path, task_name: str | None = None) -> Path:
    """Write ``<directory>/<task_name>.yaml`` (a task over ``data_file``) for ``--include_path``."""
    template, data, name = _check(kind, data_file, task_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.yaml"
    body = {"include": str(template), "task": name, "dataset_kwargs": _dataset_kwargs(template, data)}
    with atomic_open(target) as handle:
        yaml.safe_dump(body, handle, sort_keys=False)
    return target


def parse_task_spec(spec: str | dict) -> str | dict:
    """``name`` -> ``name``; ``kind:path`` / ``name=kind:path`` -> a local task config dict."""
    if isinstance(spec, dict):
        if "task" not in spec:
            raise ValueError(f"task config dict needs a 'task' key, got keys {sorted(spec)}")
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"task: expected a task name or 'kind:path', got {spec!r}")
    spec = spec.strip()
    name = None
    body = spec
    if "=" in spec.split(":", 1)[0]:
        name, body = spec.split("=", 1)
    if ":" not in body:
        if name is not None:
            raise ValueError(f"task {spec!r}: expected 'name=kind:path'")
        return body
    kind, path = body.split(":", 1)
    return local_task_config(kind.strip(), path.strip(), name.strip() if name else None)
