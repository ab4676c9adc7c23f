#!/usr/bin/env python
"""Make a model a local HF folder for the pipeline: Hub name, local folder, or ``package:<name>``.

Thin command line over :mod:`multiexit.stages.prepare`; the options are the fields of its
PrepareSettings (or all of them as one --spec JSON object).
"""

from __future__ import annotations

import argparse
import json
import sys

from multiexit.stages.prepare import PrepareSettings, prepare_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder to create")
    parser.add_argument("--spec", default=None, help="the settings below as one JSON object; options given as well override it")
    PrepareSettings.add_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        info = prepare_model(PrepareSettings.from_cli(args), args.output)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
