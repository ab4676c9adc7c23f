#!/usr/bin/env python
"""Score one generation file (JSONL from scripts/generate.py) -> one metrics JSON.

Thin command line over :func:`multiexit.stages.score.score_rows`; see docs/metrics.md for the protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path


KEYS = {
    "metrics": "list from diversity, mauve, coherence, length, perplexity",
    "ns": "n-gram sizes of rep-n",
    "featurizer": "MAUVE featurizer LM: Hub name or local folder (gpt2-large selectable)",
    "mauve_max_tokens": "reference and generation cut to this many featurizer tokens; shorter pairs dropped",
    "mauve_scaling_factor": "MAUVE scaling factor",
    "mauve_seed": "k-means seed",
    "mauve_num_buckets": "'auto' (= n/10) or an integer",
    "coherence_model": "SimCSE Hub name / folder (CLS pooler output) or a sentence-transformers folder",
    "coherence_max_tokens": "texts cut to this many coherence-encoder tokens (SimCSE's tool: 128)",
    "coherence_pooler": "auto, cls or cls_before_pooler: the coherence encoder's sentence vector",
    "perplexity_model": "evaluator LM for metric 'perplexity' (required with it)",
    "bootstrap_resamples": "bootstrap resamples of the 95% intervals of per-prompt metrics",
    "bootstrap_seed": "bootstrap seed",
    "batch_size": "featurizer / encoder batch size",
    "device": "auto, cpu, cuda, ...",
}


def build_parser() -> argparse.ArgumentParser:
    from multiexit.stages.score import ScoreSettings

    defaults = ScoreSettings().as_dict()
    keys = "".join(f"  {name:<21} {KEYS[name]}\n  {'':<21} (default {json.dumps(defaults[name])})\n" for name in defaults)
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "--settings keys (JSON object; every key optional):\n" + keys + "\n"
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
    parser.add_argument("--settings", default="{}", help="scoring settings as a JSON object (see below; default {})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--progress", action="store_true", help="show featurizer progress bars")
    parser.add_argument("--output", required=True, help="metrics JSON path (written atomically)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from multiexit.io import atomic_write_text
    from multiexit.io import read_jsonl
    from multiexit.stages.generate import meta_path
    from multiexit.stages.score import ScoreSettings, check_rows, score_rows, setting_values

    try:
        settings = ScoreSettings.from_json(args.settings, "--settings")
        if not Path(args.generations).is_file():
            raise ValueError(f"--generations: file not found: {args.generations}")
        rows = read_jsonl(args.generations)
        check_rows(rows, args.generations)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    metrics = score_rows(rows, settings, progress=args.progress)
    side = meta_path(args.generations)
    sidecar = json.loads(side.read_text()) if side.is_file() else None
    report = {
        "generations": str(args.generations),
        "setting": setting_values(sidecar),
        "metrics": metrics,
        "settings": settings.as_dict(),
        "generation": sidecar,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
