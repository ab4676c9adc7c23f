"""The Snakemake pipeline's library.

``schema`` (config shape and defaults), ``expand`` (decoding grids, lm-eval variants), ``plan`` (the
:class:`Plan`: every job's settings and inputs), ``layout`` (every output path), and the result
side: ``tables``, ``figures``, ``results``.
"""

from multiexit.pipeline.expand import LmEvalRun, Setting
from multiexit.pipeline.plan import Plan, build_plan
from multiexit.pipeline.schema import load_config_files, validate_config
from multiexit.settings import ConfigError

__all__ = ["ConfigError", "LmEvalRun", "Plan", "Setting", "build_plan", "load_config_files", "validate_config"]
