"""The pipeline's figures (matplotlib; one file per requested format, e.g. PNG and PDF).

* ``amateur_layer``: score metrics against the amateur (lower) layer, one line per model, dataset,
  method and every other setting value (upper layer, alpha, ...), mean over seeds;
* ``exit_layer``: score metrics of single-exit generation against the exit layer, plus lm-eval
  accuracy of each exit (one line per model and task);
* ``benchmark_amateur_layer``: lm-eval accuracy against the amateur layer for each ACD upper head,
  beside the accuracy of each exit alone and of the original head;
* ``training_loss``: per-exit training loss against the optimizer step, one panel per model, with the training
  report's held-out losses (original head: dashed line; each exit's initial and trained head: markers);
* ``diversity_mauve``: diversity against MAUVE, one point per (model, dataset, decoding setting).

Rows are selected, grouped and sorted on setting values from the tidy table (a row with a ``lower``
value is a contrast run; one with a ``layer`` value reads a single exit), never on label strings.
A figure whose data the grid does not produce still gets written, with a note saying what is
missing, so the workflow's outputs stay fixed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from multiexit.stages.train_heads.report import draw_loss_history
from multiexit.pipeline.tables import METRIC_NAMES, setting_columns, setting_key, tidy_results, value_order

FIGURES = ("amateur_layer", "exit_layer", "benchmark_amateur_layer", "training_loss", "diversity_mauve")


@dataclass
class Series:
    """One plotted line: x values, y values (mean over seeds), error half-widths (std over seeds, else
    the bootstrap half-width or lm-eval's standard error; ``None`` where unknown)."""

    label: str
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    err: list = field(default_factory=list)
    n: list = field(default_factory=list)
    keys: dict = field(default_factory=dict)  # the line's identity: prefix columns and setting values


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, output_dir: Path, name: str, formats: list[str]) -> list[Path]:
    paths = []
    output_dir.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        path = output_dir / f"{name}.{fmt}"
        tmp = output_dir / f".{name}.tmp.{fmt}"
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=fmt)
        tmp.replace(path)
        paths.append(path)
    _plt().close(fig)
    return paths


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _label(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _present(value) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)))


def _point(rows: pd.DataFrame) -> tuple[float, float | None, int]:
    """Mean over seeds, its error bar and the number of seeds."""
    values = [float(v) for v in rows["value"]]
    if len(values) > 1:
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)), len(values)
    row = rows.iloc[0]
    if _present(row.get("ci_low")) and _present(row.get("ci_high")):
        return values[0], (float(row["ci_high"]) - float(row["ci_low"])) / 2, 1
    if _present(row.get("stderr")):
        return values[0], float(row["stderr"]), 1
    return values[0], None, 1


def sweep_series(rows: pd.DataFrame, x: str, prefix_columns: tuple[str, ...] = ("model", "dataset")) -> list[Series]:
    """Lines of ``value`` against column ``x``: one per ``prefix_columns`` and every other setting value
    (seed excepted: seeds are averaged), points sorted by the value of ``x``."""
    rows = rows[rows[x].map(_present)]
    if rows.empty:
        return []
    shown = [c for c in setting_columns(rows) if c not in ("seed", x)]
    rows = rows.assign(_line=setting_key(rows, exclude=("seed", x)), _x=rows[x])
    out = []
    for _, line in rows.groupby([*prefix_columns, "_line"], sort=False, dropna=False):
        first = line.iloc[0]
        varying = [f"{c}={first[c]}" for c in shown if _present(first[c]) and rows[c].nunique(dropna=False) > 1]
        keys = {c: first[c] for c in prefix_columns} | {c: first[c] for c in shown if _present(first[c])}
        series = Series(" ".join([*(str(first[c]) for c in prefix_columns), *varying]), keys=keys)
        for xv, point in sorted(line.groupby("_x", sort=False), key=lambda item: value_order(item[0])):
            mean, err, n = _point(point)
            series.x.append(xv)
            series.y.append(mean)
            series.err.append(err)
            series.n.append(n)
        out.append(series)
    return out


def _plot(ax, series: Series, **kwargs):
    errs = [e if e is not None else 0.0 for e in series.err]
    if any(e is not None for e in series.err):
        return ax.errorbar(series.x, series.y, yerr=errs, capsize=2, label=series.label, **kwargs)
    return ax.plot(series.x, series.y, label=series.label, **kwargs)[0]


def amateur_layer_figure(frame: pd.DataFrame, metrics: list[str]):
    plt = _plt()
    gen = frame[frame["kind"] == "generation"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        lines = sweep_series(gen[gen["metric"] == metric], "lower")
        if not lines:
            _empty(ax, f"no contrast runs (a 'lower' layer) with {_label(metric)}")
            continue
        for series in lines:
            _plot(ax, series, marker="o")
        ax.set_xlabel("amateur (lower) layer")
        ax.set_ylabel(_label(metric))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7, frameon=False)
    fig.suptitle("ACD: metric against the amateur layer (mean over seeds; bars: std over seeds or 95% bootstrap CI)")
    return fig


def _benchmark_acc(frame: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    return frame[(frame["kind"] == "benchmark") & (frame["metric"] == metric)]


def exit_layer_figure(frame: pd.DataFrame, metrics: list[str]):
    plt = _plt()
    gen = frame[(frame["kind"] == "generation") & ~frame["lower"].map(_present)]
    bench = _benchmark_acc(frame)
    panels = len(metrics) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        lines = sweep_series(gen[gen["metric"] == metric], "layer")
        if not lines:
            _empty(ax, f"no single-exit generation (a 'layer') with {_label(metric)}")
            continue
        for series in lines:
            _plot(ax, series, marker="o")
        ax.set_xlabel("exit layer")
        ax.set_ylabel(f"{_label(metric)} (single exit)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    exits = sweep_series(bench[~bench["lower"].map(_present)], "layer")
    if not exits:
        _empty(ax, "no lm-eval accuracy of single exits")
    else:
        for series in exits:
            line = _plot(ax, series, marker="s")
            _original_line(ax, bench, series, line)
        ax.set_xlabel("exit layer")
        ax.set_ylabel("lm-eval accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Metric against the exit layer")
    return fig


def original_head_rows(bench: pd.DataFrame) -> pd.DataFrame:
    """lm-eval rows of the original head: neither a single exit nor a contrast pair."""
    return bench[~bench["layer"].map(_present) & ~bench["lower"].map(_present)]


def _original_line(ax, bench: pd.DataFrame, series: Series, line) -> None:
    model, task = series.keys["model"], series.keys["dataset"]
    reference = original_head_rows(bench)
    reference = reference[(reference["model"] == model) & (reference["dataset"] == task)]
    if not reference.empty:
        color = line.get_color() if hasattr(line, "get_color") else line.lines[0].get_color()
        ax.axhline(float(reference["value"].iloc[0]), color=color, linestyle="--", linewidth=1, label=f"{model} {task}: original head")


def benchmark_amateur_series(frame: pd.DataFrame, metric: str = "acc") -> dict[tuple[str, str], dict]:
    """Per (model, task): ``pairs``: lines of accuracy against the amateur layer (one per upper head and
    alpha), ``exits`` (accuracy of each exit alone against its layer) and ``original`` (the original
    head's accuracy, or ``None``)."""
    bench = _benchmark_acc(frame, metric)
    out: dict[tuple[str, str], dict] = {}
    for (model, task), rows in bench.groupby(["model", "dataset"], sort=False):
        original = original_head_rows(rows)
        out[(model, task)] = {
            "pairs": sweep_series(rows, "lower"),
            "exits": sweep_series(rows[~rows["lower"].map(_present)], "layer"),
            "original": float(original["value"].iloc[0]) if not original.empty else None,
        }
    return out


def benchmark_amateur_figure(frame: pd.DataFrame, metric: str = "acc"):
    plt = _plt()
    data = benchmark_amateur_series(frame, metric)
    fig, axes = plt.subplots(1, max(1, len(data)), figsize=(5 * max(1, len(data)), 3.8), squeeze=False)
    if not data:
        _empty(axes[0][0], f"no lm-eval {metric} in this grid")
    for ax, ((model, task), parts) in zip(axes[0], data.items()):
        for series in parts["pairs"]:
            shown = ", ".join(f"{k}={v}" for k, v in series.keys.items() if k in ("upper", "alpha"))
            _plot(ax, Series(f"ACD {shown}", series.x, series.y, series.err, series.n), marker="o")
        for series in parts["exits"]:
            _plot(ax, Series("exit alone", series.x, series.y, series.err, series.n), marker="s", linestyle=":")
        if parts["original"] is not None:
            ax.axhline(parts["original"], color="black", linestyle="--", linewidth=1, label="original head")
        if not parts["pairs"] and not parts["exits"]:
            _empty(ax, f"{model} {task}: no ACD pair and no single exit scored")
            continue
        ax.set_title(f"{model}: {task}", fontsize=9)
        ax.set_xlabel("amateur layer (ACD) / exit layer (alone)")
        ax.set_ylabel(f"lm-eval {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Benchmarks: ACD against the amateur layer, beside each exit alone (bars: lm-eval standard error)")
    return fig


def _heldout_marks(ax, spec: dict) -> None:
    """The training report's held-out losses on a loss curve: the original head as a dashed line, and each
    exit's initial (open marker, step 0) and trained (filled marker, last step) heads, in its curve's colour."""
    import json

    if not spec.get("training_report"):
        return
    report = json.loads(Path(spec["training_report"]).read_text())
    original = (report.get("after") or report.get("before") or {}).get("original", {}).get("cross_entropy")
    if original is not None:
        ax.axhline(original, color="black", linestyle="--", linewidth=1, label=f"original head, held-out ({original:.2f})")
    steps = (report.get("training") or {}).get("steps") or 0
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    for layer in sorted((k for k in (report.get("after") or {}) if str(k).isdigit()), key=int):
        color = colors.get(f"exit {layer}", "gray")
        before = (report.get("before") or {}).get(layer, {}).get("cross_entropy")
        after = report["after"][layer].get("cross_entropy")
        if before is not None:
            ax.plot([0], [before], marker="o", fillstyle="none", color=color, linestyle="none")
        if after is not None:
            ax.plot([steps], [after], marker="o", color=color, linestyle="none")
    ax.plot([], [], marker="o", fillstyle="none", color="gray", linestyle="none", label="held-out: initial head")
    ax.plot([], [], marker="o", color="gray", linestyle="none", label="held-out: trained head")


def training_loss_figure(manifest: dict):
    plt = _plt()
    models = [(name, spec["training_history"]) for name, spec in manifest["models"].items() if spec.get("training_history")]
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5 * max(1, len(models)), 3.6), squeeze=False)
    if not models:
        _empty(axes[0][0], "no exit heads are trained in this grid")
    for ax, (name, path) in zip(axes[0], models):
        draw_loss_history(ax, json.loads(Path(path).read_text()), title=name)
        _heldout_marks(ax, manifest["models"][name])
        ax.legend(fontsize=7)
    fig.suptitle("Exit-head training loss")
    return fig


def diversity_mauve_figure(frame: pd.DataFrame, diversity: str = "diversity_per_text"):
    plt = _plt()
    gen = frame[(frame["kind"] == "generation") & frame["metric"].isin([diversity, "mauve"])]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if gen.empty:
        _empty(ax, f"no runs with both {_label(diversity)} and MAUVE")
        return fig
    gen = gen.assign(skey=setting_key(gen))
    pivot = gen.pivot_table(index=["model", "dataset", "skey"], columns="metric", values="value", aggfunc="mean").reset_index()
    if diversity not in pivot or "mauve" not in pivot:
        _empty(ax, f"no runs with both {_label(diversity)} and MAUVE")
        return fig
    pivot = pivot.dropna(subset=[diversity, "mauve"])
    firsts = gen.drop_duplicates(["model", "dataset", "skey"]).set_index(["model", "dataset", "skey"])
    markers = "os^vDP*Xh<>"
    datasets = list(dict.fromkeys(pivot["dataset"]))
    cmap = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(firsts["method"]))
    for row in pivot.itertuples():
        first = firsts.loc[(row.model, row.dataset, row.skey)]
        color = cmap(methods.index(first["method"]) % 10)
        marker = markers[datasets.index(row.dataset) % len(markers)]
        ax.scatter(getattr(row, diversity), row.mauve, color=color, marker=marker, s=36)
        ax.annotate(str(first["setting"]), (getattr(row, diversity), row.mauve), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for method in methods:
        ax.scatter([], [], color=cmap(methods.index(method) % 10), label=method)
    for dataset in datasets:
        ax.scatter([], [], color="gray", marker=markers[datasets.index(dataset) % len(markers)], label=dataset)
    ax.set_xlabel(_label(diversity))
    ax.set_ylabel("MAUVE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Diversity against MAUVE (mean over seeds)")
    return fig


def write_figures(manifest: dict, output_dir: str | Path, formats: list[str]) -> list[Path]:
    output_dir = Path(output_dir)
    frame = tidy_results(manifest)
    metrics = manifest["figures"]["metrics"]
    paths = []
    paths += _save(amateur_layer_figure(frame, metrics), output_dir, "amateur_layer", formats)
    paths += _save(exit_layer_figure(frame, metrics), output_dir, "exit_layer", formats)
    paths += _save(benchmark_amateur_figure(frame), output_dir, "benchmark_amateur_layer", formats)
    paths += _save(training_loss_figure(manifest), output_dir, "training_loss", formats)
    paths += _save(diversity_mauve_figure(frame), output_dir, "diversity_mauve", formats)
    return paths
