"""Collect every pipeline result into one tidy table and render the paper-style tables.

Inputs come from the manifest the pipeline writes (``results/manifest.json``, see
:meth:`multiexit.pipeline.plan.Plan.manifest`): score JSONs of generation runs, lm-eval results
JSONs, and the head-training reports. Output:

* ``results.csv`` -- tidy: one row per (kind, model, dataset/task, setting/variant, metric) with
  the value, its standard error where lm-eval gives one, and the decoding method/params;
* ``generation.{md,tex}`` -- decoding methods x datasets with the chosen score metrics
  (the paper's first table);
* ``benchmarks.{md,tex}`` -- benchmark tasks x (original head, exits, ACD) (the paper's second table).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

TIDY_COLUMNS = ["kind", "model", "dataset", "setting", "method", "params", "layer", "upper", "lower",
                "seed", "metric", "value", "stderr"]

METRIC_NAMES = {
    "diversity_per_text": "div (text mean)",
    "diversity_pooled": "div (pooled)",
    "mauve": "MAUVE",
    "coherence": "coh",
    "acc": "acc",
    "perplexity": "ppl",
    "word_perplexity": "word ppl",
}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _read_json(path: str | Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def generation_rows(manifest: dict) -> list[dict]:
    rows = []
    for entry in manifest["generations"]:
        data = _read_json(entry["scores"])
        scores = dict(data.get("metrics", data))
        generation = data.get("generation") or {}
        if _number(generation.get("tokens_per_second")) is not None:
            scores["tokens_per_second"] = generation["tokens_per_second"]
        params = entry["params"]
        layer = params.get("layer") if entry["method"] == "exit" else None
        upper = params.get("upper") if entry["method"] == "acd" else None
        lower = params.get("lower") if entry["method"] == "acd" else None
        for metric, value in scores.items():
            number = _number(value)
            if number is None:
                continue
            rows.append({
                "kind": "generation", "model": entry["model"], "dataset": entry["dataset"], "setting": entry["label"],
                "method": entry["method"], "params": json.dumps(params, sort_keys=True), "layer": layer,
                "upper": None if upper is None else str(upper), "lower": lower, "seed": entry["seed"],
                "metric": metric, "value": number, "stderr": None,
            })
    return rows


def lm_eval_metrics(results: dict) -> dict[str, dict[str, tuple[float, float | None]]]:
    """``{task: {metric: (value, stderr)}}`` from an lm-eval results JSON (filter suffix dropped)."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for task, values in (results.get("results") or {}).items():
        metrics: dict[str, tuple[float, float | None]] = {}
        for key, value in values.items():
            name, _, _filter = key.partition(",")
            if name.endswith("_stderr") or name in ("alias", "sample_len"):
                continue
            number = _number(value)
            if number is None:
                continue
            stderr = _number(values.get(f"{name}_stderr,{_filter}" if _filter else f"{name}_stderr"))
            metrics[name] = (number, stderr)
        out[task] = metrics
    return out


def benchmark_rows(manifest: dict) -> list[dict]:
    rows = []
    for entry in manifest["lm_eval"]:
        results = lm_eval_metrics(_read_json(entry["path"]))
        args = entry["model_args"]
        layer = args.get("output_layer_index")
        pair = str(args.get("contrast_layer_indices") or "").split(";")
        upper, lower = (pair[0], int(pair[1])) if len(pair) == 2 else (None, None)
        for task, metrics in results.items():
            for metric, (value, stderr) in metrics.items():
                rows.append({
                    "kind": "benchmark", "model": entry["model"], "dataset": task, "setting": entry["variant"],
                    "method": "lm_eval", "params": json.dumps(args, sort_keys=True), "layer": layer,
                    "upper": upper, "lower": lower, "seed": None, "metric": metric, "value": value, "stderr": stderr,
                })
    return rows


def training_rows(manifest: dict) -> list[dict]:
    """Per-exit held-out metrics before/after training, from each model's training report."""
    from multiexit.pipeline.results import read_training_report

    rows = []
    for model, spec in manifest["models"].items():
        if not spec.get("training_report"):
            continue
        report = read_training_report(spec["training_report"])
        for item in report["exits"]:
            for metric, value in item["metrics"].items():
                number = _number(value)
                if number is None:
                    continue
                rows.append({
                    "kind": "training", "model": model, "dataset": report.get("corpus"), "setting": item["stage"],
                    "method": "train_heads", "params": None, "layer": item["layer"], "upper": None, "lower": None,
                    "seed": None, "metric": metric, "value": number, "stderr": None,
                })
    return rows


def tidy_results(manifest: dict) -> pd.DataFrame:
    rows = generation_rows(manifest) + benchmark_rows(manifest) + training_rows(manifest)
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return frame


# ------------------------------------------------------------------------------------ rendering


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(char, char) for char in str(text))


def latex_table(header: list[str], rows: list[list[str]], caption: str, label: str, text_columns: int,
                groups: list[tuple[str, int]] | None = None) -> str:
    spec = "l" * text_columns + "r" * (len(header) - text_columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if groups:
        cells, start, rules = [], 1, []
        for name, width in groups:
            cells.append(rf"\multicolumn{{{width}}}{{c}}{{{_tex_escape(name)}}}" if width > 1 else _tex_escape(name))
            if name:
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines.append(" & ".join(cells) + r" \\")
        lines.append(" ".join(rules))
    lines.append(" & ".join(_tex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_tex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex_escape(caption)}}}", rf"\label{{{label}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def generation_table(frame: pd.DataFrame, metrics: list[str], setting_order: list[tuple[str, str]]) -> tuple[list[str], list[list[str]], list[tuple[str, int]]]:
    """Rows: (model, decoding setting); columns: dataset x metric."""
    gen = frame[frame["kind"] == "generation"]
    datasets = list(dict.fromkeys(gen["dataset"]))
    values = {(r.model, r.setting, r.dataset, r.metric): r.value for r in gen.itertuples()}
    header = ["model", "decoding"] + [f"{d}: {METRIC_NAMES.get(m, m)}" for d in datasets for m in metrics]
    rows = []
    for model, setting in setting_order:
        rows.append([model, setting] + [_fmt(values.get((model, setting, d, m))) for d in datasets for m in metrics])
    groups = [("", 2)] + [(d, len(metrics)) for d in datasets]
    return header, rows, groups


def _variant_key(variant: str) -> tuple:
    if variant == "original":
        return (0, 0, "")
    if variant.startswith("exit-"):
        return (1, int(variant.split("-")[1]), "")
    return (2, 0, variant)


def benchmark_table(frame: pd.DataFrame, metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    """Rows: (model, task, metric); columns: original head, each exit, each ACD pair."""
    bench = frame[(frame["kind"] == "benchmark") & frame["metric"].isin(metrics)]
    variants = sorted(dict.fromkeys(bench["setting"]), key=_variant_key)
    values = {(r.model, r.dataset, r.metric, r.setting): r.value for r in bench.itertuples()}
    header = ["model", "task", "metric"] + variants
    rows = []
    for model in dict.fromkeys(bench["model"]):
        for task in dict.fromkeys(bench[bench["model"] == model]["dataset"]):
            for metric in metrics:
                if not any((model, task, metric, v) in values for v in variants):
                    continue
                rows.append([model, task, METRIC_NAMES.get(metric, metric)] + [_fmt(values.get((model, task, metric, v))) for v in variants])
    return header, rows


def write_tables(manifest: dict, output_dir: str | Path) -> dict[str, Path]:
    """Write results.csv, generation.{md,tex}, benchmarks.{md,tex} into ``output_dir`` (atomically each)."""
    from multiexit.io import atomic_write_text as write_text_atomic

    output_dir = Path(output_dir)
    frame = tidy_results(manifest)
    paths = {}
    paths["csv"] = write_text_atomic(output_dir / "results.csv", frame.to_csv(index=False))

    metrics = manifest["tables"]["metrics"]
    order = list(dict.fromkeys((g["model"], g["label"]) for g in manifest["generations"]))
    header, rows, groups = generation_table(frame, metrics, order)
    caption = "Open-ended generation: decoding settings x datasets (" + ", ".join(METRIC_NAMES.get(m, m) for m in metrics) + ")."
    if not rows:
        caption += " No generation results in this grid."
    paths["generation_md"] = write_text_atomic(output_dir / "generation.md", f"{caption}\n\n" + markdown_table(header, rows))
    tex_header = header[:2] + [METRIC_NAMES.get(m, m) for _ in groups[1:] for m in metrics]
    paths["generation_tex"] = write_text_atomic(output_dir / "generation.tex", latex_table(tex_header, rows, caption, "tab:generation", 2, groups))

    bmetrics = manifest["tables"]["benchmark_metrics"]
    header, rows = benchmark_table(frame, bmetrics)
    caption = "Benchmarks (lm-eval): tasks x (original head, exits, ACD)."
    if not rows:
        caption += " No benchmark results in this grid."
    paths["benchmarks_md"] = write_text_atomic(output_dir / "benchmarks.md", f"{caption}\n\n" + markdown_table(header, rows))
    paths["benchmarks_tex"] = write_text_atomic(output_dir / "benchmarks.tex", latex_table(header, rows, caption, "tab:benchmarks", 3))
    return paths
