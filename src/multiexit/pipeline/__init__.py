"""The Snakemake pipeline's library: config validation and grid expansion, paper tables, figures."""

from multiexit.pipeline.grid import ConfigError, LmEvalRun, Plan, Setting, build_plan, load_config_files, validate_config

__all__ = ["ConfigError", "LmEvalRun", "Plan", "Setting", "build_plan", "load_config_files", "validate_config"]
