#!/usr/bin/env python
"""Open-ended generation: one model x one decoding setting x one prompt set -> JSONL + <name>.meta.json.

Thin command line over :mod:`multiexit.stages.generate`; every setting is validated before the model loads.
"""

from __future__ import annotations

import argparse
import json
import sys


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: --{what} is not valid JSON ({err}): {text!r}")
    if not isinstance(value, dict):
        raise SystemExit(f"error: --{what} must be a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from multiexit.inputs.prompts import describe_catalog
    from multiexit.decoding.registry import describe_methods

    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Output rows: {id, prompt, reference, generation, n_new_tokens, stop_reason}; stop_reason is 'eos' "
            "(model ended the text) or 'length' (hit --max-new-tokens).\n\n"
            "Decoding methods (--method, parameters in --params):\n" + describe_methods() + "\n\n"
            "Datasets (--dataset {\"name\": ...}):\n" + describe_catalog() + "\n\n"
            "Dataset keys: name, path, format (jsonl|text|lines|hub), hub_config, split, text_field, id_field, "
            "detokenize (wikitext|none), num_prompts (default 64; null = all usable), prompt_tokens (32), "
            "min_reference_tokens (128), max_reference_tokens (256), seed (0).\n\n"
            "Sharding: --shard I writes shard I of --num-shards to --output (merge the shard files with --merge); "
            "--shard may be left out when --num-shards is 1. Finished batches are checkpointed in OUTPUT's "
            "<name>.partial.json, so a killed run started again resumes from them. A batch that runs out of GPU "
            "memory is split into halves.\n\n"
            "Example:\n  generate.py --model package:smollm2-135m --method acd "
            "--params '{\"lower\": 12, \"vocab_projection_mode\": \"shared_projection_direct\"}' "
            "--dataset '{\"name\": \"gensim-lee\", \"num_prompts\": 64}' --max-new-tokens 128 --output results/acd.jsonl"
        ),
    )
    parser.add_argument("--model", help="generating model: local folder, Hub name, or package:<name> (e.g. package:smollm2-135m)")
    parser.add_argument("--method", help="decoding method name (see the list below)")
    parser.add_argument("--params", default="{}", help="decoding parameters as a JSON object (default {}: the method's defaults)")
    parser.add_argument("--dataset", help="prompt set as a JSON object, e.g. '{\"name\": \"wikitext-103\", \"num_prompts\": 2000}'")
    parser.add_argument("--shard", type=int, default=None, help="the shard to produce (0-based); may be left out with --num-shards 1")
    parser.add_argument("--num-shards", type=int, default=1, help="number of contiguous prompt shards (default 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per left-padded batch (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed; shard i is seeded from (seed, i) (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per prompt (default 256)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... (default auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="model weights dtype (default auto: bfloat16 on a bf16 GPU, else float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--merge", nargs="+", metavar="SHARD_JSONL", default=None,
                        help="instead of generating: merge shard files written with --shard into --output")
    parser.add_argument("--output", required=True, help="output JSONL path (must end in .jsonl); the sidecar is <name>.meta.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import multiexit.stages.generate as generation

    if args.merge:
        generation.merge_shards(args.merge, args.output)
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--method", args.method), ("--dataset", args.dataset)) if not value]
    if missing:
        raise SystemExit(f"error: missing required argument(s): {', '.join(missing)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        run = generation.make_run(
            args.model, args.method, _json_object(args.params, "params"), _json_object(args.dataset, "dataset"),
            seed=args.seed, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            num_shards=args.num_shards, dtype=args.dtype,
        )
        if args.shard is not None and not 0 <= args.shard < args.num_shards:
            raise ValueError(f"--shard must be in 0..{args.num_shards - 1}, got {args.shard}")
        if not args.output.endswith(".jsonl"):
            raise ValueError(f"--output must end in .jsonl, got {args.output}")
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    generation.run_generation(run, args.output, shard=args.shard, device=args.device, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
