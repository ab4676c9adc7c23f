"""One seeding function for every stage (head training, generation, tests)."""

from __future__ import annotations

import random

import numpy as np

from multiexit._lazy import LazyModule

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every GPU) random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


__all__ = ["seed_everything"]
