"""Generation speed of plain HF greedy vs the multi-exit model (original head, and ACD original vs 15).

SmolLM2-135M on CPU, batch 1 and 8, 128 new tokens, the same prompts for every variant. Each
variant runs ``--repeats`` times, interleaved with the others (the order rotates every round) so
machine load hits all alike. Prints, per variant, the best and the median tokens/s, and the
ratios ACD/greedy and original/greedy two ways: best over best, and the median over rounds of
the ratio within a round (the robust one on a shared machine, where one run can be 5-10% off).
Targets: original >= 0.97x greedy, ACD >= 0.80x greedy.

ACD projects its two exits as one few-rows product laid out as ``weight @ hidden.T``
(``few_rows_linear``), while plain greedy at batch 1 goes through ``nn.Linear`` (``hidden @ weight.T``);
part of ACD's ratio against plain greedy is that layout. So a second greedy variant,
``greedy_weight_first``, is the plain model with its head computed in the same ``weight @ hidden.T``
layout, and ACD is also reported against it: that ratio is the cost of ACD itself.

A second, finer measurement takes the generation loop out: after a 64-token context is in the KV
cache, the variants run one decoding step each in turn (``--steps`` times, the cache cropped back
after every step), and the median step time and the median within-turn ratio are printed. Alternating
every ~60 ms instead of every few seconds makes it far less sensitive to the machine's drifts.

    python benchmarks/generation_speed.py [--threads 2] [--repeats 5] [--new-tokens 128] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from multiexit import AutoMultiExitModel, MultiExitConfiguration
from multiexit.inputs.models import packaged_model_dir

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


class WeightFirstHead(torch.nn.Module):
    """A vocabulary head computed as ``weight @ hidden.T`` for any number of rows (ACD's few-rows layout)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = linear.weight  # the same tensor: tied embeddings stay tied
        self.bias = linear.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        logits = torch.mm(self.weight, rows.t()).t().contiguous()
        if self.bias is not None:
            logits = logits + self.bias
        return logits.reshape(*hidden.shape[:-1], logits.shape[-1])


def time_generate(model, batch, new_tokens: int, pad_id: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return out.shape[0] * new_tokens / elapsed


def rotated(names: list[str], turn: int) -> list[str]:
    """``names`` starting at position ``turn`` (mod len): each variant takes every place in the order."""
    turn %= len(names)
    return names[turn:] + names[:turn]


def paired_step_times(variants: dict, batch, context_tokens: int, steps: int, pad_id: int) -> dict[str, list[float]]:
    """Seconds per decoding step of each variant, the variants taking turns one step at a time."""
    names = list(variants)
    with torch.inference_mode():
        first = next(iter(variants.values()))
        context = first.generate(**batch, max_new_tokens=context_tokens, min_new_tokens=context_tokens, do_sample=False, pad_token_id=pad_id)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(context[:, batch["input_ids"].shape[1]:])], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        next_token, step_position = context[:, -1:], positions[:, -1:]
        caches = {}
        for name, model in variants.items():  # the context minus its last token goes into each variant's cache
            out = model(input_ids=context[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
            caches[name] = out.cache
        times = {name: [] for name in names}
        for step in range(steps + 2):  # the first two rounds warm up
            for name in rotated(names, step):
                start = time.perf_counter()
                variants[name](input_ids=next_token, attention_mask=mask, position_ids=step_position,
                               cache=caches[name], use_cache=True, logits_to_keep=1)
                elapsed = time.perf_counter() - start
                caches[name].crop(-1)  # back to the context: every step sees the same cache length
                if step >= 2:
                    times[name].append(elapsed)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--steps", type=int, default=100, help="decoding steps per variant in the paired measurement")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the control variant (a second copy of the plain model, showing the noise floor)")
    parser.add_argument("--lower", type=int, default=15, help="amateur layer for ACD (logit lens)")
    args = parser.parse_args(argv)
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
    weight_first = AutoModelForCausalLM.from_pretrained(folder).eval()
    weight_first.lm_head = WeightFirstHead(weight_first.lm_head)
    variants = {"hf_greedy": plain, "greedy_weight_first": weight_first, "original_head": original,
                f"acd_original_{args.lower}": acd}
    if args.control:  # a second, separately loaded plain model: its ratio to the first is the noise floor
        variants["hf_greedy_control"] = AutoModelForCausalLM.from_pretrained(folder).eval()
    checks = [("original_head", 0.97), (f"acd_original_{args.lower}", 0.80)] + [("hf_greedy_control", 1.0)] * args.control
    acd_name = f"acd_original_{args.lower}"

    names = list(variants)
    print(f"SmolLM2-135M, CPU threads={args.threads}, {args.new_tokens} new tokens, {args.repeats} interleaved rounds")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batch = tokenizer(PROMPTS[:batch_size], return_tensors="pt", padding=True)
        for model in variants.values():  # warm-up
            time_generate(model, batch, 4, pad_id)
        rounds = []
        for round_index in range(args.repeats):
            rounds.append({name: time_generate(variants[name], batch, args.new_tokens, pad_id) for name in rotated(names, round_index)})
        for name in names:
            speeds = [r[name] for r in rounds]
            print(f"batch {batch_size}: {name:>18} best {max(speeds):6.1f} tok/s, median {statistics.median(speeds):6.1f} tok/s")
        for name, target in checks:
            best = max(r[name] for r in rounds) / max(r["hf_greedy"] for r in rounds)
            paired = sorted(r[name] / r["hf_greedy"] for r in rounds)
            print(f"batch {batch_size}: {name}/greedy = {statistics.median(paired):.3f} median of rounds "
                  f"(range {paired[0]:.3f}-{paired[-1]:.3f}), {best:.3f} best/best ({'the noise floor: identical code' if name == 'hf_greedy_control' else f'target >= {target}'})")
        same_layout = sorted(r[acd_name] / r["greedy_weight_first"] for r in rounds)
        print(f"batch {batch_size}: {acd_name}/greedy_weight_first = {statistics.median(same_layout):.3f} median of rounds "
              f"(range {same_layout[0]:.3f}-{same_layout[-1]:.3f}; both heads in the weight @ hidden.T layout)")
        times = paired_step_times(variants, batch, 64, args.steps, pad_id)
        for name in names:
            print(f"batch {batch_size}: {name:>18} median step {1000 * statistics.median(times[name]):6.1f} ms")
        for name, _ in checks:
            paired = sorted(g / t for g, t in zip(times["hf_greedy"], times[name]))
            quartiles = statistics.quantiles(paired, n=4)
            print(f"batch {batch_size}: {name}/greedy per step = {statistics.median(paired):.3f} median of {len(paired)} turns "
                  f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; speed ratio = greedy step time / variant step time)")
        same_layout = sorted(g / t for g, t in zip(times["greedy_weight_first"], times[acd_name]))
        quartiles = statistics.quantiles(same_layout, n=4)
        print(f"batch {batch_size}: {acd_name}/greedy_weight_first per step = {statistics.median(same_layout):.3f} median of "
              f"{len(same_layout)} turns (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; the same head layout)")

if __name__ == "__main__":
    main()
