#!/usr/bin/env python
"""Fit cast matrices W_l (final-normed layer-l state -> top layer state) by least squares and save them.

The output folder is the input model (a base model or a multi-exit checkpoint with trained heads)
plus the casts (`cast_layer_indices` in config.json, `name_to_cast_matrix.cast_<l>.weight` in
the safetensors) and `cast_fit.json` (R^2 per layer on the fitting and held-out positions, and
the identity map's held-out R^2 for comparison). Load it with
`AutoMultiExitModel.from_pretrained(dir, MultiExitConfiguration(vocab_projection_mode='SHARED_PROJECTION_CAST_OUTPUTS', ...))`.
The options are the fields of multiexit.stages.fit_cast.FitCastSettings (or all of them as one --spec JSON object).

Example (Din et al.'s setting, ~25k positions per layer from wikitext-103):
  scripts/fit_cast.py --model results/models/gpt2-medium-exits --layers 6,12,18 --data wikitext-103 \
      --output-dir results/models/gpt2-medium-exits-cast
"""

from __future__ import annotations

import argparse
import json
import sys

from multiexit.stages.fit_cast import FitCastSettings, run_cast_fit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model: Hub name, local folder (incl. a multi-exit checkpoint), or package:<name>")
    p.add_argument("--output-dir", required=True, help="output checkpoint folder (written atomically)")
    p.add_argument("--metrics", default=None, help="also write the fit metrics JSON here (always in OUTPUT_DIR/cast_fit.json)")
    p.add_argument("--spec", default=None, help="the settings below as one JSON object; options given as well override it")
    FitCastSettings.add_arguments(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = run_cast_fit(args.model, args.output_dir, FitCastSettings.from_cli(args), metrics_path=args.metrics)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics["layers"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
