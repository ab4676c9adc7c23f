#!/usr/bin/env python
"""Paper tables from the pipeline's results: tidy CSV, generation and benchmark tables (Markdown, LaTeX).

Reads the manifest the pipeline writes (results/manifest.json) and every result file it lists;
see multiexit.pipeline.tables.
"""

from __future__ import annotations

import argparse
import json
import sys

from multiexit.pipeline.tables import write_tables


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="results/manifest.json written by the pipeline")
    parser.add_argument("--output-dir", required=True, help="folder for results.csv, generation.{md,tex}, benchmarks.{md,tex}")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with open(args.manifest) as handle:
        manifest = json.load(handle)
    for name, path in write_tables(manifest, args.output_dir).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
