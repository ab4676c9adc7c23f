"""lm-evaluation-harness support: the ``multi_exit`` / ``multi_exit_gpt`` model, offline local tasks,
and :func:`run_lm_eval` (results to a fixed path) for the pipeline.

Importing this package imports lm-eval (and torch/transformers) and registers the model.
``python -m multiexit.stages.lm_eval ...`` is lm-eval's own command line with the model registered.
"""

from multiexit.stages.lm_eval.lambada_local import build_lambada_examples, default_sources, write_jsonl
from multiexit.stages.lm_eval.local_tasks import LOCAL_TASK_KINDS, TASKS_DIR, local_task_config, parse_task_spec, write_task_yaml
from multiexit.stages.lm_eval.model import MultiExitLM, known_model_args
from multiexit.stages.lm_eval.runner import default_samples_path, run_lm_eval

# Hub tasks the paper's configs name (need network access to the HF Hub datasets).
HUB_TASKS = ("lambada_openai", "wikitext", "piqa", "winogrande", "hellaswag", "arc_easy")

__all__ = [
    "HUB_TASKS",
    "LOCAL_TASK_KINDS",
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
