"""Which premature layers DoLa picks on SmolLM2-135M (the counts quoted in docs/baselines.md).

The demo's prompt set (gensim Lee corpus, 32 prompts of 32 tokens, seed 0); by default its last batch
(prompts 24..31), 128 new tokens, ``layers`` low and high with the default settings, float32 on CPU.
Prints, per bucket, the candidate layers and how often each was chosen over all unfinished
(row, step) pairs, and the mean gap between the largest and second-largest divergence at each step
(a gap near 0 would mean the choice is rounding noise).

    python benchmarks/dola_layers.py [--first 24] [--count 8] [--new-tokens 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from multiexit.decoding import dola
from multiexit.decoding.registry import generate, parse_decoding
from multiexit.inputs.prompts import load_prompts
from multiexit.stages.generate import load_generation_model

MODEL = "package:smollm2-135m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=int, default=24)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_generation_model(MODEL, torch.device("cpu"), torch.float32)
    dataset = {"name": "gensim-lee", "num_prompts": 32, "prompt_tokens": 32,
               "min_reference_tokens": 128, "max_reference_tokens": 256, "seed": 0}
    prompts = load_prompts(dataset, tokenizer)[args.first: args.first + args.count]
    rows = [list(p.prompt_ids) for p in prompts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1

    # record the divergences the loop computes, to report how far apart the candidates are
    gaps: list[float] = []
    original = dola.divergence

    def recording(final, premature):
        values = original(final, premature)
        if values.shape[-1] > 1:
            top2 = values.topk(2, dim=-1).values
            gaps.extend((top2[:, 0] - top2[:, 1]).tolist())
        return values

    summary = {}
    dola.divergence = recording
    try:
        for bucket in ("low", "high"):
            gaps.clear()
            with torch.inference_mode():
                generate(model, parse_decoding("dola", {"layers": bucket}), ids, mask, args.new_tokens,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
            choices = dola.last_run_choices()
            counts = Counter(v for v in choices.flatten().tolist() if v >= 0)
            summary[bucket] = {
                "candidates": dola.model_candidate_layers(model, bucket),
                "counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
                "steps": sum(counts.values()),
                "mean_top2_gap": sum(gaps) / max(1, len(gaps)),
                "min_top2_gap": min(gaps) if gaps else None,
            }
            print(bucket, json.dumps(summary[bucket]), flush=True)
    finally:
        dola.divergence = original


if __name__ == "__main__":
    main()
