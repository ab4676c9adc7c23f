#!/usr/bin/env python
"""lm-eval on a local LAMBADA-style task: accuracy/perplexity of the original head, logit-lens
exits and ACD, plus the wall-time overhead of the multi_exit model against lm-eval's stock ``hf``.

    python benchmarks/lm_eval_overhead.py                      # SmolLM2-135M, ~320 news examples, CPU
    python benchmarks/lm_eval_overhead.py --limit 50 --repeats 1   # quicker

Both models are loaded once; the multi-exit model switches its scored output in place
(``MultiExitLM.set_multi_exit_config``). Timing: one untimed warm-up run of each model, then
``--repeats`` pairs on the same task, the order alternating (stock first in even pairs, ours first in
odd ones) so that neither always runs on a warmer machine; reported is the median over pairs of the
within-pair ratio ours/stock (``use_original_head=True``: target <= 1.05x), with each pair listed.
Writes a JSON report (atomically) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:smollm2-135m", help="model folder, Hub name or package:<name>")
    parser.add_argument("--data", default="results/lm_eval_bench/lambada_local.jsonl",
                        help="LAMBADA-format jsonl (built from gensim's Lee news corpus if missing)")
    parser.add_argument("--exit-layers", default="10,15,20,25", help="logit-lens exits to score")
    parser.add_argument("--amateur-layers", default="10,15", help="ACD amateurs (expert: the original head)")
    parser.add_argument("--alpha", type=float, default=0.1, help="ACD plausibility alpha")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="examples (default: all)")
    parser.add_argument("--repeats", type=int, default=4, help="timed pairs (stock, ours), order alternating")
    parser.add_argument("--timing-limit", type=int, default=None,
                        help="examples in the timed runs (default: same as --limit)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="results/benchmarks/lm_eval_overhead.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    from multiexit import MultiExitConfiguration
    from multiexit.stages.lm_eval import MultiExitLM, build_lambada_examples, run_lm_eval, write_jsonl
    from multiexit.stages.lm_eval.runner import _atomic_write
    from multiexit.inputs.models import resolve_model_source

    data = Path(args.data)
    if not data.is_file():
        write_jsonl(build_lambada_examples(), data)
    task = [f"lambada_local:{data}"]
    model_dir = resolve_model_source(args.model)
    common = dict(device="cpu", batch_size=args.batch_size, dtype="float32")
    ours = MultiExitLM(pretrained=model_dir, **common)
    stock = HFLM(pretrained=model_dir, **common)
    layers = ours.model.num_exit_layers

    def evaluate(lm, limit=args.limit) -> tuple[dict, float]:
        start = time.perf_counter()
        results = run_lm_eval({}, task, None, model=lm, limit=limit, bootstrap_iters=0, verbosity="ERROR")
        elapsed = time.perf_counter() - start
        metrics = results["results"]["lambada_local"]
        return {"acc": metrics["acc,none"], "perplexity": metrics["perplexity,none"],
                "examples": metrics["sample_len"]}, elapsed

    # ---- timing: stock hf vs use_original_head=True; warm-up, then pairs in alternating order
    ours.set_multi_exit_config(MultiExitConfiguration(use_original_head=True))
    timing_limit = args.timing_limit or args.limit
    models = {"hf": stock, "multi_exit": ours}
    timed = {name: evaluate(lm, timing_limit)[0] for name, lm in models.items()}  # warm-up (untimed)
    times = {"hf": [], "multi_exit": []}
    for pair in range(args.repeats):
        for name in (["hf", "multi_exit"] if pair % 2 == 0 else ["multi_exit", "hf"]):
            timed[name], seconds = evaluate(models[name], timing_limit)
            times[name].append(seconds)
    if timed["hf"] != timed["multi_exit"]:
        raise RuntimeError(f"parity failure: stock hf {timed['hf']} vs multi_exit {timed['multi_exit']}")
    del stock
    metrics = {"original head": timed["multi_exit"] if timing_limit == args.limit else evaluate(ours)[0]}

    # ---- the configured outputs
    lens = "SHARED_PROJECTION_DIRECT"
    rows = [("original head", metrics["original head"], "use_original_head=True")]
    for layer in _ints(args.exit_layers):
        config = MultiExitConfiguration(use_original_head=False, vocab_projection_mode=lens, output_layer_index=layer)
        ours.set_multi_exit_config(config)
        rows.append((f"logit-lens exit {layer}/{layers}", evaluate(ours)[0],
                     f"use_original_head=False,vocab_projection_mode={lens},output_layer_index={layer}"))
    for layer in _ints(args.amateur_layers):
        config = MultiExitConfiguration(use_original_head=False, vocab_projection_mode=lens,
                                        contrast_layer_indices=("original", layer), contrast_alpha=args.alpha)
        ours.set_multi_exit_config(config)
        rows.append((f"ACD original;{layer} (alpha {args.alpha})", evaluate(ours)[0],
                     f"use_original_head=False,vocab_projection_mode={lens},"
                     f"contrast_layer_indices='original;{layer}',contrast_alpha={args.alpha}"))

    import statistics

    ratios = [o / h for o, h in zip(times["multi_exit"], times["hf"])]
    overhead = statistics.median(ratios)
    report = {
        "model": args.model,
        "model_dir": str(model_dir),
        "data": str(data),
        "device": "cpu",
        "threads": args.threads,
        "batch_size": args.batch_size,
        "rows": [{"output": name, **values, "model_args": model_args} for name, values, model_args in rows],
        "timing_examples": timed["hf"]["examples"],
        "timing_metrics_hf": timed["hf"],
        "timing_seconds": times,
        "pair_ratios": ratios,
        "overhead_ratio": overhead,
    }
    _atomic_write(Path(args.output), lambda h: json.dump(report, h, indent=2))

    print(f"\n{args.model} on {data} ({rows[0][1]['examples']} examples), batch {args.batch_size}, "
          f"{args.threads} CPU thread(s)\n")
    print("| output | acc | perplexity |\n|---|---:|---:|")
    for name, values, _ in rows:
        print(f"| {name} | {values['acc']:.4f} | {values['perplexity']:.2f} |")
    print(f"\ntiming on {timed['hf']['examples']} examples (identical metrics {timed['hf']}):")
    print(f"stock hf {[round(t, 1) for t in times['hf']]} s; multi_exit use_original_head=True "
          f"{[round(t, 1) for t in times['multi_exit']]} s; per-pair ratios {[round(r, 3) for r in ratios]}; "
          f"median ratio {overhead:.3f} (target <= 1.05)")
    print(f"report: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
