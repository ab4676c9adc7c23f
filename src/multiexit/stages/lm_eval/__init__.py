"""lm-evaluation-harness support: the ``multi_exit`` / ``multi_exit_gpt`` model, offline local tasks,
and :func:`run_lm_eval` (results to a fixed path) for the pipeline.

Importing this package imports lm-eval (and torch/transformers) and registers the model.
``python -m multiexit.stages.lm_eval ...`` is lm-eval's own command line with the model registered.
"""

from multiexit.stages.lm_eval.lambada_local import LambadaBuildSettings, build_lambada_examples, default_sources, write_jsonl
from multiexit.stages.lm_eval.local_tasks import LOCAL_TASK_KINDS, TASKS_DIR, local_task_config, parse_task_spec, write_task_yaml
from multiexit.stages.lm_eval.model import MultiExitLM, known_model_args
from multiexit.stages.lm_eval.runner import LmEvalSettings, default_samples_path, run_lm_eval

__all__ = [
    "LOCAL_TASK_KINDS",
    "LambadaBuildSettings",
    "LmEvalSettings",
    "MultiExitLM",
    "TASKS_DIR",
    "build_lambada_examples",
    "default_samples_path",
    "default_sources",
    "known_model_args",
    "local_task_config",
    "parse_task_spec",
    "run_lm_eval",
    "write_jsonl",
    "write_task_yaml",
]
