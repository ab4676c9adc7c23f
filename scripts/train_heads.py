#!/usr/bin/env python
"""Train exit heads of a causal LM (base frozen by default) and write a multi-exit checkpoint.

Outputs: the checkpoint folder (--output-dir; safetensors, exits in config.json, tokenizer),
a metrics JSON (held-out per-exit cross-entropy / perplexity / top-1 accuracy before and after
training, plus the logit-lens reading of each exit), a per-step loss history (CSV and JSON) and a
PNG of per-exit loss against step. Resumable: rerun the same command after a crash or kill.
Data-parallel: `accelerate launch scripts/train_heads.py ...` or `torchrun --nproc-per-node N ...`.

The options are the fields of multiexit.stages.train_heads.settings.HeadTrainingSettings and
DataSettings; --spec gives them all as one JSON object (what the pipeline passes), options given as
well override it.

Example (the paper's setting, CC-100 English, streamed):
  scripts/train_heads.py --model gpt2-medium --exits 6,12,18,24 --data cc100:en --max-tokens 50000000 \
      --output-dir results/models/gpt2-medium-exits
"""

from __future__ import annotations

import argparse
import json
import sys

from multiexit.stages.train_heads import DataSettings, HeadTrainingSettings, format_metrics_table, run_head_training
from multiexit.stages.train_heads.settings import train_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and outputs")
    g.add_argument("--model", required=True, help="base model: Hub name, local folder, or package:<name> (e.g. package:smollm2-135m)")
    g.add_argument("--output-dir", required=True, help="checkpoint folder to write (written atomically when training is done)")
    g.add_argument("--metrics", default=None, help="metrics JSON path (default: OUTPUT_DIR/training_metrics.json)")
    g.add_argument("--loss-plot", default=None, help="PNG of per-exit loss vs step (default: OUTPUT_DIR/loss.png)")
    g.add_argument("--loss-csv", default=None, help="per-step loss CSV: step,tokens,lr,exit,loss (default: OUTPUT_DIR/loss_history.csv)")
    g.add_argument("--loss-json", default=None, help="per-step loss history JSON (default: OUTPUT_DIR/loss_history.json)")
    g.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints (default: OUTPUT_DIR.checkpoints); a rerun resumes from the newest")
    g.add_argument("--spec", default=None, help="every setting below (and exits) as one JSON object; options given as well override it")
    HeadTrainingSettings.add_arguments(p.add_argument_group("training (HeadTrainingSettings)"))
    p.add_argument("--unfreeze-base", action="store_true", help="also train the base model (the same as --no-freeze-base)")
    DataSettings.add_arguments(p.add_argument_group("data (DataSettings)"))
    return p


def parse_settings(args: argparse.Namespace) -> tuple[HeadTrainingSettings, DataSettings]:
    block = json.loads(args.spec) if args.spec else {}
    if not isinstance(block, dict):
        raise ValueError(f"--spec: expected a JSON object, got {args.spec!r}")
    block.update(HeadTrainingSettings.values_from_args(args), **DataSettings.values_from_args(args))
    if args.unfreeze_base:
        block["freeze_base"] = False
    if "exits" not in block:
        raise ValueError("--exits is required")
    exits = block.pop("exits")
    return train_settings(block, exits, "train")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, data = parse_settings(args)
        metrics = run_head_training(
            args.model, args.output_dir, config, data, checkpoint_dir=args.checkpoint_dir, metrics_path=args.metrics,
            plot_path=args.loss_plot, history_csv=args.loss_csv, history_json=args.loss_json,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_metrics_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
