"""Reports of a head-training run: the loss history (long CSV, PNG plot) and the held-out metrics table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from multiexit.io import atomic_write_text
from multiexit.model.config import ORIGINAL


def history_rows(history: list[dict]) -> list[dict]:
    """Long-format rows (step, tokens, lr, exit, loss) of a training history."""
    return [{"step": h["step"], "tokens": h["tokens"], "lr": h["lr"], "exit": exit_, "loss": loss}
            for h in history for exit_, loss in h["exit_losses"].items()]


def write_history_csv(history: list[dict], path: str | Path) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "tokens", "lr", "exit", "loss"])
    writer.writeheader()
    writer.writerows(history_rows(history))
    atomic_write_text(Path(path), buffer.getvalue())


def plot_loss_history(history: list[dict], path: str | Path, title: str = "exit training loss", smooth: int = 0) -> None:
    """PNG of each exit's training loss against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    exits = list(history[0]["exit_losses"]) if history else []
    steps = [h["step"] for h in history]
    for exit_ in exits:
        values = np.array([h["exit_losses"][exit_] for h in history])
        if smooth and len(values) > smooth:
            kernel = np.ones(smooth) / smooth
            values = np.convolve(values, kernel, mode="valid")
            ax.plot(steps[smooth - 1:], values, label=f"exit {exit_}")
        else:
            ax.plot(steps, values, label=f"exit {exit_}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats / token)")
    ax.set_title(title)
    if exits:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def format_metrics_table(metrics: dict) -> str:
    """Plain-text table of held-out CE before (logit lens / initial head) and after training."""
    lines = [f"{'exit':>9} {'lens CE':>9} {'init CE':>9} {'after CE':>9} {'after ppl':>10} {'after top1':>10}"]
    for exit_ in metrics["exits"]:
        lens = metrics["logit_lens"].get(exit_, {}).get("cross_entropy", float("nan"))
        before = metrics["before"].get(exit_, {}).get("cross_entropy", float("nan"))
        after = metrics["after"][exit_]
        lines.append(f"{exit_:>9} {lens:9.3f} {before:9.3f} {after['cross_entropy']:9.3f} "
                     f"{after['perplexity']:10.1f} {after['top1_accuracy']:10.3f}")
    if ORIGINAL not in metrics["exits"]:
        final = metrics["after"][ORIGINAL]
        lines.append(f"{'final':>9} {'':>9} {'':>9} {final['cross_entropy']:9.3f} {final['perplexity']:10.1f} "
                     f"{final['top1_accuracy']:10.3f}")
    return "\n".join(lines)
