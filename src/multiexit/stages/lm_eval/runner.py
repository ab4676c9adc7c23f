"""Library entry point for the pipeline: run lm-eval and write results to a fixed path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from multiexit.io import atomic_open
from multiexit.settings import Settings, check_device, setting
from multiexit.stages.lm_eval.local_tasks import parse_task_spec


def _atomic_write(path: Path, write) -> None:
    with atomic_open(path) as handle:
        write(handle)


def default_samples_path(output_path: str | Path) -> Path:
    """``results/x.json`` -> ``results/x.samples.jsonl``."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.stem + ".samples.jsonl")


def _task_names(specs: list) -> list[str]:
    names = [spec["task"] if isinstance(spec, dict) else spec for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"tasks: {duplicates} named more than once (use 'name=kind:path' to rename local tasks)")
    return names


def _check_batch_size(value) -> None:
    if isinstance(value, str) and value != "auto" and not value.startswith("auto:"):
        raise ValueError(f"must be an integer or 'auto', got {value!r}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"must be >= 1, got {value!r}")


@dataclass(frozen=True)
class LmEvalSettings(Settings):
    """One lm-eval run (the pipeline's ``lm_eval`` block and job; ``scripts/lm_eval_run.py``'s options)."""

    model_args: str = setting(help="lm-eval's key=value,... list: pretrained, dtype, ... plus every MultiExitConfiguration field")
    tasks: str = setting(help="comma-separated task names / KIND:PATH / NAME=KIND:PATH")
    model: str = setting("multi_exit", "lm-eval model name ('hf' for lm-eval's stock model)")
    num_fewshot: int | None = setting(0, "few-shot examples per prompt (null: the task's own)", minimum=0)
    batch_size: int | str = setting(16, "an integer or 'auto'", check=_check_batch_size)
    max_batch_size: int | None = setting(None, "largest batch size 'auto' may pick", minimum=1)
    device: str = setting("cpu", "torch device (auto: cuda if available, else cpu)", check=check_device)
    limit: int | float | None = setting(None, "documents per task (an integer, or a fraction < 1)", minimum=0, exclusive_minimum=True)
    include_path: tuple[str, ...] = setting((), "extra folders of task YAMLs")
    gen_kwargs: str | None = setting(None, "generation arguments for generate_until tasks, key=value,...")
    log_samples: bool = setting(False, "also write per-document samples")
    samples_output: str | None = setting(None, "samples jsonl (default: <output stem>.samples.jsonl)")
    seed: int = setting(1234, "seed of python, numpy, torch and few-shot sampling")
    bootstrap_iters: int = setting(100000, "bootstrap iterations of standard errors (0 skips them)", minimum=0)

    def __post_init__(self) -> None:
        if isinstance(self.limit, float) and self.limit >= 1:
            if self.limit != int(self.limit):
                raise ValueError(f"limit: a count must be an integer, got {self.limit}")
            object.__setattr__(self, "limit", int(self.limit))

    def run(self, output_path: str | Path | None) -> dict:
        device = self.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return run_lm_eval(self.model_args, self.tasks, output_path, model=self.model, num_fewshot=self.num_fewshot,
                           batch_size=self.batch_size, max_batch_size=self.max_batch_size, device=device, limit=self.limit,
                           include_path=list(self.include_path) or None, gen_kwargs=self.gen_kwargs,
                           log_samples=self.log_samples, samples_path=self.samples_output, seed=self.seed,
                           bootstrap_iters=self.bootstrap_iters)


def run_lm_eval(
    model_args: str | dict[str, Any],
    tasks: str | Sequence[str | dict],
    output_path: str | Path | None,
    *,
    model: Any = LmEvalSettings.model,
    num_fewshot: int | None = LmEvalSettings.num_fewshot,
    batch_size: int | str = LmEvalSettings.batch_size,
    max_batch_size: int | None = LmEvalSettings.max_batch_size,
    device: str | None = LmEvalSettings.device,
    limit: int | float | None = LmEvalSettings.limit,
    include_path: str | Path | Sequence[str | Path] | None = None,
    gen_kwargs: str | dict | None = LmEvalSettings.gen_kwargs,
    log_samples: bool = LmEvalSettings.log_samples,
    samples_path: str | Path | None = None,
    seed: int = LmEvalSettings.seed,
    bootstrap_iters: int = LmEvalSettings.bootstrap_iters,
    apply_chat_template: bool = False,
    verbosity: str | None = "WARNING",
) -> dict:
    """Evaluate ``model`` (an lm-eval model name, default ``multi_exit``, or an lm-eval LM object)
    on ``tasks`` and write lm-eval's results JSON to exactly ``output_path`` (atomically).

    ``tasks``: lm-eval task names (``lambada_openai``), local tasks ``kind:path`` or
    ``name=kind:path`` (see :mod:`multiexit.stages.lm_eval.local_tasks`), config dicts, or one
    comma-separated string of these. With ``log_samples`` the per-document samples go to
    ``samples_path`` (default ``<output stem>.samples.jsonl``), one JSON object per line with
    its task name under ``"task"``. Seeds (python, numpy, torch, few-shot) all come from ``seed``.
    Returns the results dict (without samples). ``output_path=None`` writes nothing.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from multiexit.stages.lm_eval import model as _registers_multi_exit  # noqa: F401  (registers multi_exit / multi_exit_gpt)

    if isinstance(tasks, str):
        tasks = [part for part in tasks.split(",") if part.strip()]
    if not tasks:
        raise ValueError("tasks: expected at least one task")
    specs = [parse_task_spec(spec) for spec in tasks]
    _task_names(specs)
    if isinstance(model_args, str):
        from lm_eval.utils import simple_parse_args_string

        model_args = simple_parse_args_string(model_args)
    if not isinstance(model_args, dict):
        raise ValueError(f"model_args: expected a 'key=value,...' string or a dict, got {type(model_args).__name__}")
    if isinstance(batch_size, str) and batch_size.isdigit():
        batch_size = int(batch_size)
    if log_samples and output_path is None and samples_path is None:
        raise ValueError("log_samples: needs output_path or samples_path to write the samples to")
    if isinstance(include_path, (str, Path)):
        include_path = [include_path]
    # indexing lm-eval's own task folder takes seconds; skip it when every task is a local config
    task_manager = TaskManager(
        include_path=[str(p) for p in include_path] if include_path else None,
        include_defaults=any(isinstance(spec, str) for spec in specs),
    )

    results = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=specs,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        max_batch_size=max_batch_size,
        device=device,
        limit=limit,
        gen_kwargs=gen_kwargs,
        log_samples=log_samples,
        bootstrap_iters=bootstrap_iters,
        apply_chat_template=apply_chat_template,
        task_manager=task_manager,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        verbosity=verbosity,
    )
    if results is None:  # a non-zero rank of a distributed run
        return {}
    samples = results.pop("samples", None)
    if output_path is not None:
        _atomic_write(
            Path(output_path),
            lambda h: json.dump(results, h, indent=2, default=handle_non_serializable, ensure_ascii=False),
        )
    if log_samples:
        target = Path(samples_path) if samples_path is not None else default_samples_path(output_path)

        def write_samples(handle):
            for task_name, rows in (samples or {}).items():
                for row in rows:
                    handle.write(json.dumps({"task": task_name, **row}, default=handle_non_serializable,
                                            ensure_ascii=False) + "\n")

        _atomic_write(target, write_samples)
    return results
