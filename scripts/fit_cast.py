#!/usr/bin/env python
"""Fit cast matrices W_l (final-normed layer-l state -> top layer state) by least squares and save them.

The output folder is the input model (a base model or a multi-exit checkpoint with trained heads)
plus the casts (`cast_layer_indices` in config.json, `name_to_cast_matrix.cast_<l>.weight` in
the safetensors) and `cast_fit.json` (R^2 per layer on the fitting and held-out positions, and
the identity map's held-out R^2 for comparison). Load it with
`AutoMultiExitModel.from_pretrained(dir, MultiExitConfiguration(vocab_projection_mode='SHARED_PROJECTION_CAST_OUTPUTS', ...))`.

Example (Din et al.'s setting, ~25k positions per layer from wikitext-103):
  scripts/fit_cast.py --model results/models/gpt2-medium-exits --layers 6,12,18 --data wikitext-103 \
      --output-dir results/models/gpt2-medium-exits-cast
"""

from __future__ import annotations

import argparse
import json
import sys

from multiexit.stages.fit_cast import run_cast_fit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model: Hub name, local folder (incl. a multi-exit checkpoint), or package:<name>")
    p.add_argument("--tokenizer", default=None, help="tokenizer source if the model folder has none ('gpt2' = offline GPT-2 tokenizer)")
    p.add_argument("--layers", required=True, help="comma-separated layers to fit casts for (1..L-1)")
    p.add_argument("--output-dir", required=True, help="output checkpoint folder (written atomically)")
    p.add_argument("--metrics", default=None, help="also write the fit metrics JSON here (always in OUTPUT_DIR/cast_fit.json)")
    p.add_argument("--data", default="lee_background", help="corpus spec: wikitext-103, cc100[:lang], hub:..., lee_background, or a local file/folder")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per text chunk the model reads (default 128)")
    p.add_argument("--num-positions", type=int, default=25000, help="token positions used for the fit, per layer (default 25000)")
    p.add_argument("--heldout-positions", type=int, default=5000, help="other positions for the held-out R^2 (default 5000)")
    p.add_argument("--corpus-tokens", type=int, default=None, help="tokens to read from the corpus (default: just enough for the positions)")
    p.add_argument("--eval-tokens", type=int, default=0, help="hold out the first documents (as train_heads.py does) and report each exit's held-out CE / top-1 through its cast and the logit lens (default 0: off)")
    p.add_argument("--skip-first", type=int, default=1, help="leading positions of each chunk never sampled (default 1: the attention-sink position)")
    p.add_argument("--ridge", type=float, default=0.0, help="ridge penalty (per position) for the least-squares fit (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="chunks per forward pass (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of corpus shuffling and position sampling (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype (default float32)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = run_cast_fit(
            args.model, args.output_dir, args.layers, corpus=args.data, seq_len=args.seq_len,
            num_positions=args.num_positions, heldout_positions=args.heldout_positions, corpus_tokens=args.corpus_tokens,
            seed=args.seed, batch_size=args.batch_size, ridge=args.ridge, skip_first=args.skip_first,
            tokenizer_source=args.tokenizer, metrics_path=args.metrics, device=args.device, dtype=args.dtype,
            eval_tokens=args.eval_tokens,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics["layers"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
