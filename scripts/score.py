#!/usr/bin/env python
"""Score one generation file (JSONL from scripts/generate.py) -> one metrics JSON.

Thin command line over :func:`multiexit.stages.score.write_score_file`; the options are the fields of
multiexit.stages.score.ScoreSettings (or all of them as one --spec JSON object). See docs/metrics.md for
the protocol.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from multiexit.stages.score import ScoreSettings

    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "--spec keys (JSON object; every key optional; the same as the options above):\n"
            + ScoreSettings.describe() + "\n\n"
            "Output keys: rep_{n}_simctg / diversity_simctg (SimCTG's measure_repetition_and_diversity on the whole\n"
            "list, as SimCTG and Contrastive Decoding report it), rep_{n}_per_text / diversity_per_text (the same\n"
            "function on each text alone, too-short texts scored 0, mean over texts: the ACD authors' code),\n"
            "n_texts_too_short, mauve, mauve_n_pairs, mauve_n_dropped, coherence, mean_new_tokens, mean_words,\n"
            "share_stopped_early, share_empty, perplexity, intervals (95% bootstrap over prompts of each per-prompt\n"
            "metric); plus 'setting' (method, its parameters and seed as values), 'settings' and the generation\n"
            "sidecar's 'generation' block."
        ),
    )
    parser.add_argument("--generations", required=True, help="generation JSONL (rows with id, prompt, reference, generation, n_new_tokens, stop_reason)")
    parser.add_argument("--spec", "--settings", dest="spec", default=None,
                        help="the scoring settings as one JSON object (what the pipeline passes); options given as well override it")
    ScoreSettings.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--progress", action="store_true", help="show featurizer progress bars")
    parser.add_argument("--output", required=True, help="metrics JSON path (written atomically)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from multiexit.stages.score import ScoreSettings, read_generations, write_score_file

    try:
        settings = ScoreSettings.from_cli(args)
        rows = read_generations(args.generations)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    write_score_file(args.generations, args.output, settings, rows=rows, progress=args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
