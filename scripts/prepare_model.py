#!/usr/bin/env python
"""Make a model a local HF folder for the pipeline: Hub name, local folder, or ``package:<name>``.

The output folder holds links to the model's files (``--copy`` copies them instead) plus
``prepared.json`` (source, resolved folder, layer count). The layer count is checked against
``--num-layers`` (what the config planned with), and a ready multi-exit checkpoint must carry
heads at ``--exits``. The output appears atomically (staging folder, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from multiexit.io import atomic_directory
from multiexit.inputs.models import PACKAGE_PREFIX, resolve_model_source

HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*", "*.py"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="Hub name, local folder, or package:<name> (multiexit.inputs.models)")
    parser.add_argument("--output", required=True, help="folder to create")
    parser.add_argument("--num-layers", type=int, required=True, help="expected number of transformer blocks")
    parser.add_argument("--exits", default="", help="';'-separated exit layers the checkpoint must carry (with --multi-exit-checkpoint)")
    parser.add_argument("--multi-exit-checkpoint", action="store_true", help="source is a ready multi-exit checkpoint")
    parser.add_argument("--copy", action="store_true", help="copy files instead of linking them")
    parser.add_argument("--revision", default=None, help="Hub revision")
    return parser.parse_args(argv)


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


def check(folder: Path, args: argparse.Namespace) -> dict:
    config = json.loads((folder / "config.json").read_text())
    layers = layer_count(config)
    if layers != args.num_layers:
        raise ValueError(f"num_layers: the config says {args.num_layers}, but {args.source!r} has {layers} layers")
    exits = [int(v) for v in args.exits.split(";") if v.strip()]
    if args.multi_exit_checkpoint:
        stored = [int(v) for v in config.get("lm_head_layer_indices") or []]
        missing = sorted(set(exits) - set(stored))
        if missing:
            raise ValueError(f"exits: {args.source!r} has exit heads at {stored}, not at {missing}")
    return {"source": args.source, "folder": str(folder), "num_layers": layers, "model_type": config.get("model_type")}


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = resolve_folder(args.source, args.revision)
    info = check(folder, args)
    output = Path(args.output)
    with atomic_directory(output) as staging:
        for item in sorted(folder.iterdir()):
            target = staging / item.name
            if args.copy:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item.resolve(), target)
            else:
                os.symlink(item.resolve(), target)
        (staging / "prepared.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
