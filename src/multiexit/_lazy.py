"""Imports that happen on first use: package exports (PEP 562 module ``__getattr__``) and whole modules.

``import multiexit.pipeline`` (the Snakefile, the tables and figures jobs) and the plan's settings checks then
do not pay for transformers' model code and torch.distributed, about 5 s per process on a 2-core machine
(measured with ``python -X importtime``); the names stay importable from the package as before.

The modules the plan reads (the model configuration, the decoding registry and its method modules, the stage
settings) name torch only inside functions, through :class:`LazyModule`: building the plan (the Snakefile, run
by every Snakemake process and twice in every SLURM job) then imports neither torch nor transformers (3.3 s of
the 3.65 s the tiny config's Snakefile took here).
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable


class LazyModule:
    """Stands for the module ``name``, imported at the first attribute read (``torch = LazyModule("torch")``).

    Every attribute read goes to the imported module (``torch.where``, ``torch.Tensor`` for ``isinstance``);
    nothing is cached here (a read costs about 0.6 us more than on the module itself, measured here)
    and ``sys.modules`` is left to the import system.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        module = sys.modules.get(self._name) or importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<LazyModule {self._name!r}>"


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: each name in ``exports`` comes from the module it maps to."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
