"""The pipeline's figures (matplotlib; one file per requested format, e.g. PNG and PDF).

* ``amateur_layer``: score metrics against the ACD amateur (lower) layer, one line per
  (model, dataset, upper layer, alpha);
* ``exit_layer``: score metrics of exit-only generation against the exit layer, plus lm-eval
  accuracy of each exit (one line per model and task);
* ``training_loss``: per-exit training loss against the optimizer step, one panel per model;
* ``diversity_mauve``: diversity against MAUVE, one point per (model, dataset, decoding setting).

A figure whose data the grid does not produce still gets written, with a note saying what is
missing, so the workflow's outputs stay fixed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from multiexit.pipeline.tables import METRIC_NAMES, tidy_results
from multiexit.pipeline.results import read_loss_history


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


def amateur_layer_figure(frame: pd.DataFrame, metrics: list[str]):
    plt = _plt()
    acd = frame[(frame["kind"] == "generation") & (frame["method"] == "acd")].copy()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = acd[acd["metric"] == metric]
        if data.empty:
            _empty(ax, f"no ACD runs with {_label(metric)}")
            continue
        data = data.assign(alpha=data["params"].map(lambda p: json.loads(p).get("alpha")))
        for (model, dataset, upper, alpha), group in data.groupby(["model", "dataset", "upper", "alpha"], sort=False):
            group = group.sort_values("lower")
            ax.plot(group["lower"], group["value"], marker="o", label=f"{model} {dataset} upper={upper} a={alpha}")
        ax.set_xlabel("amateur (lower) layer")
        ax.set_ylabel(_label(metric))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7, frameon=False)
    fig.suptitle("ACD: metric against the amateur layer")
    return fig


def exit_layer_figure(frame: pd.DataFrame, metrics: list[str]):
    plt = _plt()
    exits = frame[(frame["kind"] == "generation") & (frame["method"] == "exit")]
    bench = frame[(frame["kind"] == "benchmark") & frame["layer"].notna() & (frame["metric"] == "acc")]
    panels = len(metrics) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = exits[exits["metric"] == metric]
        if data.empty:
            _empty(ax, f"no exit-only generation with {_label(metric)}")
            continue
        for (model, dataset), group in data.groupby(["model", "dataset"], sort=False):
            group = group.sort_values("layer")
            ax.plot(group["layer"], group["value"], marker="o", label=f"{model} {dataset}")
        ax.set_xlabel("exit layer")
        ax.set_ylabel(f"{_label(metric)} (exit-only greedy)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    if bench.empty:
        _empty(ax, "no lm-eval accuracy of single exits")
    else:
        original = frame[(frame["kind"] == "benchmark") & (frame["setting"] == "original") & (frame["metric"] == "acc")]
        for (model, task), group in bench.groupby(["model", "dataset"], sort=False):
            group = group.sort_values("layer")
            line = ax.plot(group["layer"].astype(int), group["value"], marker="s", label=f"{model} {task}")[0]
            reference = original[(original["model"] == model) & (original["dataset"] == task)]
            if not reference.empty:
                ax.axhline(reference["value"].iloc[0], color=line.get_color(), linestyle="--", linewidth=1,
                           label=f"{model} {task}: original head")
        ax.set_xlabel("exit layer")
        ax.set_ylabel("lm-eval accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Metric against the exit layer")
    return fig


def training_loss_figure(manifest: dict):
    plt = _plt()
    models = [(name, spec["training_history"]) for name, spec in manifest["models"].items() if spec.get("training_history")]
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5 * max(1, len(models)), 3.6), squeeze=False)
    if not models:
        _empty(axes[0][0], "no exit heads are trained in this grid")
    for ax, (name, path) in zip(axes[0], models):
        curves = read_loss_history(path)
        for exit_, points in sorted(curves.items(), key=lambda item: (not item[0].isdigit(), int(item[0]) if item[0].isdigit() else 0)):
            steps, losses = zip(*points) if points else ((), ())
            ax.plot(steps, losses, label=f"exit {exit_}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (nats/token)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Exit-head training loss")
    return fig


def diversity_mauve_figure(frame: pd.DataFrame, diversity: str = "diversity_per_text"):
    plt = _plt()
    gen = frame[frame["kind"] == "generation"]
    pivot = gen[gen["metric"].isin([diversity, "mauve"])].pivot_table(
        index=["model", "dataset", "setting", "method"], columns="metric", values="value", aggfunc="first"
    ).reset_index()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if pivot.empty or diversity not in pivot or "mauve" not in pivot:
        _empty(ax, f"no runs with both {_label(diversity)} and MAUVE")
        return fig
    pivot = pivot.dropna(subset=[diversity, "mauve"])
    markers = "os^vDP*Xh<>"
    datasets = list(dict.fromkeys(pivot["dataset"]))
    cmap = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(pivot["method"]))
    for row in pivot.itertuples():
        color = cmap(methods.index(row.method) % 10)
        marker = markers[datasets.index(row.dataset) % len(markers)]
        ax.scatter(getattr(row, diversity), row.mauve, color=color, marker=marker, s=36)
        ax.annotate(f"{row.setting}", (getattr(row, diversity), row.mauve), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for method in methods:
        ax.scatter([], [], color=cmap(methods.index(method) % 10), label=method)
    for dataset in datasets:
        ax.scatter([], [], color="gray", marker=markers[datasets.index(dataset) % len(markers)], label=dataset)
    ax.set_xlabel(_label(diversity))
    ax.set_ylabel("MAUVE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Diversity against MAUVE")
    return fig


def write_figures(manifest: dict, output_dir: str | Path, formats: list[str]) -> list[Path]:
    output_dir = Path(output_dir)
    frame = tidy_results(manifest)
    metrics = manifest["figures"]["metrics"]
    paths = []
    paths += _save(amateur_layer_figure(frame, metrics), output_dir, "amateur_layer", formats)
    paths += _save(exit_layer_figure(frame, metrics), output_dir, "exit_layer", formats)
    paths += _save(training_loss_figure(manifest), output_dir, "training_loss", formats)
    paths += _save(diversity_mauve_figure(frame), output_dir, "diversity_mauve", formats)
    return paths
