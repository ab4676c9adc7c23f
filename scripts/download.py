#!/usr/bin/env python
"""Fetch every Hub model, dataset, lm-eval task dataset, featurizer and coherence model a config needs.

Run it once where the Hub is reachable (a login node); the pipeline's other jobs then run with
HF_HOME=<hf cache> HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 on nodes without internet.

  python scripts/download.py --configfile config/paper.yaml --dry-run     # list, fetch nothing
  python scripts/download.py --configfile config/paper.yaml --hf-cache /shared/hf

Gated datasets (ROOTS Wikinews) need a token: `huggingface-cli login` or HF_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--configfile", nargs="+", help="pipeline config file(s), merged as Snakemake does")
    source.add_argument("--items-json", default=None, help="the fetch list as one JSON array (what the pipeline's download job "
                                                          "passes: Plan.download_spec())")
    parser.add_argument("--hf-cache", default=None,
                        help="Hugging Face cache root to fill (HF_HOME layout; default: the config's hf_cache, else $HF_HOME "
                             "or ~/.cache/huggingface)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched and stop")
    parser.add_argument("--output", default=None, help="write the fetch report (JSON) here when everything is fetched")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from multiexit.pipeline import load_config_files

    config = {} if args.items_json is not None else load_config_files(*args.configfile)
    hf_cache = args.hf_cache or config.get("hf_cache")
    if hf_cache:  # before datasets / huggingface_hub read their cache locations
        os.environ["HF_HOME"] = str(hf_cache)
    from multiexit.io import atomic_write_text
    from multiexit.stages.download import DownloadError, Fetch, fetch_all, fetch_list

    items = [Fetch.from_dict(item) for item in json.loads(args.items_json)] if args.items_json is not None else fetch_list(config)
    if not items:
        print("nothing to fetch: every model and data set is local or a package source")
    if args.dry_run:
        for item in items:
            print(item.describe())
        return 0
    try:
        report = fetch_all(items, hf_cache)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.output:
        atomic_write_text(args.output, json.dumps({"hf_cache": hf_cache, "items": report}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
