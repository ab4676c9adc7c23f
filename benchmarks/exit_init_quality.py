#!/usr/bin/env python
"""Held-out loss of exits read or initialised in different ways, and what each costs in wall time.

On the demo's data (gensim's Lee corpus, 128-token chunks; the held-out slice is the first documents,
as scripts/train_heads.py takes it) and model (SmolLM2-135M, exits 8, 16, 24), for each exit:

* logit lens: the original head on the final-normed layer state (no fitting);
* cast: the original head on A_l norm(h_l), A_l fitted by least squares (stages/fit_cast);
* random + N steps: the demo's heads (seeded normal init, AdamW, demo learning rate and batch);
* cast init + N steps: heads initialised as W_head A_l (``init: cast``), then trained.

Every condition evaluates the same held-out batches; the original head's loss is printed too.
Conditions share one loaded model (heads re-initialised per condition); the cast maps are fitted
once, and their fit time is counted in every cast-initialised condition.

    python benchmarks/exit_init_quality.py --json results/exit_init_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch


def parse_conditions(text: str) -> list[tuple[str, int, float]]:
    """'random:16:1e-3,cast:64:2e-4' -> [(init, steps, learning rate), ...]."""
    out = []
    for part in text.split(","):
        init, steps, lr = part.strip().split(":")
        out.append((init, int(steps), float(lr)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="package:smollm2-135m", help="model source (default package:smollm2-135m)")
    p.add_argument("--exits", default="8,16,24", help="exit layers (default 8,16,24, the demo's)")
    p.add_argument("--data", default="lee_background", help="corpus (default lee_background, the demo's)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per chunk (default 128, the demo's)")
    p.add_argument("--batch-size", type=int, default=2, help="training batch (default 2, the demo's)")
    p.add_argument("--eval-tokens", type=int, default=4096,
                   help="held-out tokens (default 4096; the demo evaluates 512, too few for a steady figure)")
    p.add_argument("--eval-batch-size", type=int, default=4, help="held-out sequences per batch (default 4)")
    p.add_argument("--conditions", default="random:16:1e-3,cast:0:1e-3,cast:16:1e-3,cast:16:2e-4,cast:64:1e-3,cast:64:2e-4",
                   help="trained conditions init:steps:learning_rate (default: the demo's random:16:1e-3 and cast inits)")
    p.add_argument("--cast-positions", type=int, default=25_000, help="positions of the cast fit (default 25000, the setting's)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from multiexit.inputs.models import resolve_model_source
    from multiexit.model.config import ORIGINAL, VocabularyProjectionMode as Mode
    from multiexit.stages.fit_cast import add_cast_matrices
    from multiexit.stages.train_heads import (
        DataSettings,
        HeadTrainingSettings,
        build_datasets,
        evaluate_readers,
        init_exit_heads,
        load_tokenizer,
        prepare_model_for_training,
        train_exits,
    )
    from multiexit.stages.train_heads.loop import fit_casts_for_init

    source = resolve_model_source(args.model)
    base = HeadTrainingSettings(exits=args.exits, batch_size=args.batch_size, cast_positions=args.cast_positions)
    data = DataSettings(data=args.data, seq_len=args.seq_len, eval_tokens=args.eval_tokens,
                        eval_batch_size=args.eval_batch_size)
    tokenizer = load_tokenizer(source)
    train_items, collate, heldout, summary = build_datasets(tokenizer, data, base)
    layers = base.layers
    model = prepare_model_for_training(source, base)  # heads replaced per condition below
    print(f"data: {summary}", flush=True)

    def evaluate(readers) -> dict:
        scores = evaluate_readers(model, heldout, readers)
        return {name: round(v["cross_entropy"], 4) for name, v in scores.items()}

    rows = []
    started = time.perf_counter()
    lens = evaluate({**{str(l): (l, Mode.SHARED_PROJECTION_DIRECT) for l in layers}, ORIGINAL: (ORIGINAL, None)})
    original = lens.pop(ORIGINAL)
    rows.append({"condition": "logit lens", "fit_s": 0.0, "train_s": 0.0, "ce": lens})
    print(rows[-1], flush=True)

    t0 = time.perf_counter()
    casts = fit_casts_for_init(model, torch.stack(train_items), layers, base)
    fit_s = time.perf_counter() - t0
    add_cast_matrices(model, casts)
    rows.append({"condition": "cast matrices", "fit_s": round(fit_s, 1), "train_s": 0.0,
                 "ce": evaluate({str(l): (l, Mode.SHARED_PROJECTION_CAST_OUTPUTS) for l in layers})})
    print(rows[-1], flush=True)

    for init, steps, lr in parse_conditions(args.conditions):
        init_exit_heads(model, layers, init, base.seed, casts)
        train_s = 0.0
        if steps:
            config = HeadTrainingSettings(exits=args.exits, init=init, max_steps=steps, learning_rate=lr,
                                          batch_size=args.batch_size)
            t0 = time.perf_counter()
            train_exits(model, train_items, config, collate, log=lambda *_: None)
            train_s = time.perf_counter() - t0
        rows.append({"condition": f"{init} init + {steps} steps (lr {lr:g})", "fit_s": round(fit_s if init == "cast" else 0.0, 1),
                     "train_s": round(train_s, 1),
                     "ce": evaluate({str(l): (l, Mode.LAYER_SPECIFIC_PROJECTION) for l in layers})})
        print(rows[-1], flush=True)

    result = {"model": args.model, "exits": layers, "data": summary, "original_head_ce": original,
              "threads": args.threads, "total_s": round(time.perf_counter() - started, 1), "rows": rows}
    header = f"| condition | {' | '.join(f'exit {l}' for l in layers)} | fit s | train s |"
    print(header)
    print("|" + "---|" * (len(layers) + 3))
    for row in rows:
        print(f"| {row['condition']} | " + " | ".join(f"{row['ce'][str(l)]:.2f}" for l in layers)
              + f" | {row['fit_s']:.1f} | {row['train_s']:.1f} |")
    print(f"| original head (layer {model.num_exit_layers}) | {original:.2f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
