#!/usr/bin/env python
"""Run lm-evaluation-harness on a (multi-exit) model and write results to a fixed path.

Thin command line over multiexit.stages.lm_eval.run_lm_eval for Snakemake rules. Examples:

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-args", required=True, help="key=value,... (see above)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names / KIND:PATH / NAME=KIND:PATH")
    parser.add_argument("--output", required=True, help="results JSON written to exactly this path (atomically)")
    parser.add_argument("--model", default="multi_exit",
                        help="lm-eval model name (default multi_exit; 'hf' for lm-eval's stock model)")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--batch-size", default="1", help="an integer or 'auto'")
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=float, default=None, help="documents per task (an integer, or a fraction < 1)")
    parser.add_argument("--include-path", action="append", default=None, help="extra folder of task YAMLs (repeatable)")
    parser.add_argument("--gen-kwargs", default=None, help="generation arguments for generate_until tasks, key=value,...")
    parser.add_argument("--log-samples", action="store_true", help="also write per-document samples")
    parser.add_argument("--samples-output", default=None, help="samples jsonl (default: <output stem>.samples.jsonl)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--bootstrap-iters", type=int, default=100000, help="0 skips standard errors")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    limit = args.limit
    if limit is not None and limit >= 1:
        if limit != int(limit):
            parser.error(f"--limit: a count must be an integer, got {limit}")
        limit = int(limit)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from multiexit.stages.lm_eval import run_lm_eval

    results = run_lm_eval(
        args.model_args,
        args.tasks,
        args.output,
        model=args.model,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        max_batch_size=args.max_batch_size,
        device=args.device,
        limit=limit,
        include_path=args.include_path,
        gen_kwargs=args.gen_kwargs,
        log_samples=args.log_samples,
        samples_path=args.samples_output,
        seed=args.seed,
        bootstrap_iters=args.bootstrap_iters,
    )
    print(json.dumps(results.get("results", {}), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
