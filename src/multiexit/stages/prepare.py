"""Make a model a local HF folder for the pipeline: Hub name, local folder, or ``package:<name>``.

The output folder holds links to the model's files (``copy`` copies them instead) plus
``prepared.json`` (source, resolved folder, layer count). The layer count is checked against
``num_layers`` (what the config planned with), and a ready multi-exit checkpoint must carry
heads at ``exits``. The output appears atomically (staging folder, then rename).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from multiexit.inputs.models import PACKAGE_PREFIX, PACKAGED_MODELS, resolve_model_source
from multiexit.io import atomic_directory
from multiexit.settings import Settings, setting

HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*", "*.py"]


def check_source(source: str) -> None:
    """A ``package:`` source must name a known packaged model (Hub names and folders are checked by the job)."""
    if not source.strip():
        raise ValueError("empty model source")
    if source.startswith(PACKAGE_PREFIX) and source[len(PACKAGE_PREFIX):] not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {source!r}; known: "
                         f"{', '.join(PACKAGE_PREFIX + name for name in sorted(PACKAGED_MODELS))}")


@dataclass(frozen=True)
class PrepareSettings(Settings):
    """One model to prepare (the pipeline's ``models.<name>`` entry; ``scripts/prepare_model.py``'s options)."""

    source: str = setting(help="Hub name, local folder, or package:<name> (multiexit.inputs.models)", check=check_source)
    num_layers: int = setting(help="expected number of transformer blocks", minimum=1)
    exits: tuple[int, ...] = setting((), "exit layers the checkpoint must carry (with multi_exit_checkpoint)", minimum=1)
    multi_exit_checkpoint: bool = setting(False, "source is a ready multi-exit checkpoint")
    copy: bool = setting(False, "copy files instead of linking them")
    revision: str | None = setting(None, "Hub revision")


def resolve_folder(source: str, revision: str | None = None) -> Path:
    if source.startswith(PACKAGE_PREFIX) or Path(source).is_dir():
        folder = Path(resolve_model_source(source))
    else:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, revision=revision, allow_patterns=HUB_PATTERNS))
    if not (folder / "config.json").is_file():
        raise ValueError(f"source {source!r}: {folder} has no config.json")
    return folder.resolve()


def layer_count(config: dict) -> int:
    from transformers import AutoConfig

    hf_config = AutoConfig.for_model(**config)
    text = getattr(hf_config, "text_config", None) or hf_config
    return int(text.num_hidden_layers)


def check_folder(folder: Path, settings: PrepareSettings) -> dict:
    """The folder's layer count and heads against the settings; returns the ``prepared.json`` record."""
    config = json.loads((folder / "config.json").read_text())
    layers = layer_count(config)
    if layers != settings.num_layers:
        raise ValueError(f"num_layers: the config says {settings.num_layers}, but {settings.source!r} has {layers} layers")
    if settings.multi_exit_checkpoint:
        stored = [int(v) for v in config.get("lm_head_layer_indices") or []]
        missing = sorted(set(settings.exits) - set(stored))
        if missing:
            raise ValueError(f"exits: {settings.source!r} has exit heads at {stored}, not at {missing}")
    return {"source": settings.source, "folder": str(folder), "num_layers": layers, "model_type": config.get("model_type")}


def prepare_model(settings: PrepareSettings, output: str | Path) -> dict:
    """Create ``output`` (links or copies of the model's files, plus ``prepared.json``); returns the record."""
    folder = resolve_folder(settings.source, settings.revision)
    info = check_folder(folder, settings)
    with atomic_directory(Path(output)) as staging:
        for item in sorted(folder.iterdir()):
            target = staging / item.name
            if settings.copy:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item.resolve(), target)
            else:
                os.symlink(item.resolve(), target)
        (staging / "prepared.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


__all__ = ["PrepareSettings", "check_source", "prepare_model"]
