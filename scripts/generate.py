#!/usr/bin/env python
"""Open-ended generation: one model x one decoding setting x one prompt set -> JSONL + <name>.meta.json.

Thin command line over :mod:`multiexit.stages.generate`; every setting is validated before the model loads.
"""

from __future__ import annotations

import argparse
import sys


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
    from multiexit.stages.generate import GenerateSettings

    parser.add_argument("--model", help="generating model: local folder, Hub name, or package:<name> (e.g. package:smollm2-135m)")
    parser.add_argument("--spec", default=None,
                        help="every setting below as one JSON object (what the pipeline passes); options given as well override it")
    GenerateSettings.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--merge", nargs="+", metavar="SHARD_JSONL", default=None,
                        help="instead of generating: merge shard files written with --shard into --output")
    parser.add_argument("--output", required=True, help="output JSONL path (must end in .jsonl); the sidecar is <name>.meta.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import multiexit.stages.generate as generation
    from multiexit.settings import ConfigError

    if args.merge:
        generation.merge_shards(args.merge, args.output)
        return 0
    try:
        if not args.model:
            raise ValueError("--model is required")
        settings = generation.GenerateSettings.from_cli(args)
        run = settings.make_run(args.model)
        if not args.output.endswith(".jsonl"):
            raise ValueError(f"--output must end in .jsonl, got {args.output}")
    except (ValueError, ConfigError) as err:
        raise SystemExit(f"error: {err}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    generation.run_generation(run, args.output, shard=settings.shard, device=settings.device, progress=not args.no_progress,
                              prompts=settings.load_prompts())
    return 0


if __name__ == "__main__":
    sys.exit(main())
