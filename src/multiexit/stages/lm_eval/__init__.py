"""lm-evaluation-harness support: the ``multi_exit`` / ``multi_exit_gpt`` model, offline local tasks,
and :func:`run_lm_eval` (results to a fixed path) for the pipeline.

The names below load on first use (:mod:`multiexit._lazy`): the plan reads the local-task settings without
importing lm-eval; using ``MultiExitLM`` or :func:`run_lm_eval` (or ``from multiexit.lm_eval import *``)
imports lm-eval and registers the model. ``python -m multiexit.stages.lm_eval ...`` is lm-eval's own
command line with the model registered.
"""

from multiexit._lazy import lazy_exports

_LAMBADA = "multiexit.stages.lm_eval.lambada_local"
_TASKS = "multiexit.stages.lm_eval.local_tasks"
_RUNNER = "multiexit.stages.lm_eval.runner"
_EXPORTS = {
    "LambadaBuildSettings": _LAMBADA, "build_lambada_examples": _LAMBADA, "default_sources": _LAMBADA,
    "write_jsonl": _LAMBADA,
    "LOCAL_TASK_KINDS": _TASKS, "TASKS_DIR": _TASKS, "local_task_config": _TASKS, "parse_task_spec": _TASKS,
    "write_task_yaml": _TASKS,
    "MultiExitLM": "multiexit.stages.lm_eval.model", "known_model_args": "multiexit.stages.lm_eval.model",
    "LmEvalSettings": _RUNNER, "default_samples_path": _RUNNER, "run_lm_eval": _RUNNER,
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
