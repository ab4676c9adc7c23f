"""Generation speed of plain HF greedy vs the multi-exit model (original head, and ACD original vs 15).

SmolLM2-135M on CPU, batch 1 and 8, 128 new tokens, the same prompts for every variant. Each
variant runs ``--repeats`` times, interleaved with the others so machine load hits all alike;
the best (fastest) run is reported. Prints tokens/s and the ratios ACD/greedy and original/greedy.
Targets: original >= 0.97x greedy, ACD >= 0.80x greedy.

    python benchmarks/generation_speed.py [--threads 2] [--repeats 3] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from multiexit import AutoMultiExitModel, MultiExitConfiguration
from multiexit.sources import packaged_model_dir

PROMPTS = [
    "The history of the city of London began",
    "Scientists announced on Tuesday that",
    "The committee met to discuss the new budget, which",
    "In the early morning, the fishing boats",
    "The football season ended with a surprising",
    "Researchers at the university have developed a",
    "The storm moved across the coast overnight and",
    "According to the annual report, the company",
]


def time_generate(model, batch, new_tokens: int, pad_id: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return out.shape[0] * new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--lower", type=int, default=15, help="amateur layer for ACD (logit lens)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = packaged_model_dir("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.pad_token_id = pad_id
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    original = AutoMultiExitModel.from_pretrained(folder).eval()
    acd = AutoMultiExitModel.from_pretrained(
        folder,
        MultiExitConfiguration(
            use_original_head=False,
            contrast_layer_indices=("original", args.lower),
            vocab_projection_mode="SHARED_PROJECTION_DIRECT",
        ),
    ).eval()
    variants = {"hf_greedy": plain, "original_head": original, f"acd_original_{args.lower}": acd}

    print(f"SmolLM2-135M, CPU threads={args.threads}, {args.new_tokens} new tokens, best of {args.repeats}")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batch = tokenizer(PROMPTS[:batch_size], return_tensors="pt", padding=True)
        for model in variants.values():  # warm-up
            time_generate(model, batch, 4, pad_id)
        best = {name: 0.0 for name in variants}
        for _ in range(args.repeats):
            for name, model in variants.items():
                best[name] = max(best[name], time_generate(model, batch, args.new_tokens, pad_id))
        greedy = best["hf_greedy"]
        acd_name = f"acd_original_{args.lower}"
        print(f"batch {batch_size}: " + ", ".join(f"{n} {v:.1f} tok/s" for n, v in best.items()))
        print(f"batch {batch_size}: original/greedy = {best['original_head'] / greedy:.3f} (target >= 0.97), "
              f"ACD/greedy = {best[acd_name] / greedy:.3f} (target >= 0.80)")


if __name__ == "__main__":
    main()
