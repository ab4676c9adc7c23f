#!/usr/bin/env python
"""Paper figures from the pipeline's results: metric vs amateur layer, metric vs exit layer,
per-exit training loss, diversity-MAUVE scatter (one file per format).

Reads the manifest the pipeline writes (results/manifest.json); see multiexit.pipeline.figures.
"""

from __future__ import annotations

import argparse
import json
import sys

from multiexit.pipeline.figures import write_figures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="results/manifest.json written by the pipeline")
    parser.add_argument("--output-dir", required=True, help="folder for the figures")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated formats (default png,pdf)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with open(args.manifest) as handle:
        manifest = json.load(handle)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    for path in write_figures(manifest, args.output_dir, formats):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
