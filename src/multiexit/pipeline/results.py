"""Read the head-training outputs of scripts/train_heads.py (metrics JSON, per-step loss history JSON)."""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("logit_lens", "before", "after")  # logit lens, initial head, trained head


def read_training_report(path: str | Path) -> dict:
    """``{"corpus": ..., "exits": [{"layer", "stage", "metrics": {cross_entropy, perplexity, top1_accuracy}}]}``.

    ``layer`` is an int, or 'original' for the model's own head (its held-out reading after training).
    """
    data = json.loads(Path(path).read_text())
    corpus = (data.get("data") or {}).get("corpus")
    exits = []
    for stage in STAGES:
        for layer, metrics in (data.get(stage) or {}).items():
            exits.append({"layer": int(layer) if str(layer).isdigit() else str(layer), "stage": stage, "metrics": metrics})
    return {"corpus": corpus, "exits": exits, "training": data.get("training", {})}

