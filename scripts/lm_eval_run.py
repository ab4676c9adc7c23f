#!/usr/bin/env python
"""Run lm-evaluation-harness on a (multi-exit) model and write results to a fixed path.

Thin command line over multiexit.stages.lm_eval.run_lm_eval for Snakemake rules; the options are the fields
of multiexit.stages.lm_eval.LmEvalSettings (or all of them as one --spec JSON object). Examples:

  # ACD (original head as expert, layer 12 as amateur) on a local LAMBADA-format file
  python scripts/lm_eval_run.py --model-args "pretrained=package:smollm2-135m,use_original_head=False,contrast_layer_indices=original;12" \
      --tasks lambada_local:results/data/lambada_local.jsonl --output results/lm_eval/acd.json

  # Hub tasks as in the paper (needs network access to the HF Hub)
  python scripts/lm_eval_run.py --model-args pretrained=gpt2-medium --tasks lambada_openai,wikitext,piqa \
      --output results/lm_eval/gpt2.json --device cuda --batch-size 16

--model-args: lm-eval's key=value list (lm-eval's own: pretrained, dtype, revision, max_length, ...; plus every
MultiExitConfiguration field: vocab_projection_mode, lm_head_layer_indices, freeze_parameters, use_original_head,
output_layer_index, contrast_layer_indices, contrast_alpha, contrast_minimum_candidates; list values use ';').
--tasks: comma-separated; lm-eval task names, local tasks KIND:PATH or NAME=KIND:PATH
(KIND: lambada_local = jsonl with a 'text' field, text_perplexity_local = text file, one document per line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from multiexit.stages.lm_eval.runner import LmEvalSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="results JSON written to exactly this path (atomically)")
    parser.add_argument("--spec", default=None, help="the settings below as one JSON object; options given as well override it")
    LmEvalSettings.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from multiexit.stages.lm_eval.runner import LmEvalSettings

    try:
        settings = LmEvalSettings.from_cli(args)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = settings.run(args.output)
    print(json.dumps(results.get("results", {}), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
