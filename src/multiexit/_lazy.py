"""Package exports that load on first use (PEP 562 module ``__getattr__``).

``import multiexit.pipeline`` (the Snakefile, the tables and figures jobs) and the plan's settings checks then
do not pay for transformers' model code and torch.distributed, about 5 s per process on a 2-core machine
(measured with ``python -X importtime``); the names stay importable from the package as before.
"""

from __future__ import annotations

import importlib
from typing import Callable


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
