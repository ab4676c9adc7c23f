"""Every output path of the pipeline, written once.

A :class:`Layout` holds path templates under one ``results_dir``. The rules use the templates as
they are (Snakemake fills the ``{model}``, ``{dataset}``, ... wildcards); the plan fills them with
:meth:`Layout.path`. Nothing else in the library or the workflow writes an output path.

    LAYOUT = Layout("results/demo")
    LAYOUT.generation_shard                 # 'results/demo/{model}/generations/{dataset}/{label}/shard-{shard}.jsonl'
    LAYOUT.path("scores", model="m", dataset="news", label="greedy")   # 'results/demo/m/scores/news/greedy.json'
    LAYOUT.log("generate")                  # 'results/demo/logs/generate/{model}/{dataset}/{label}/shard-{shard}.log'
"""

from __future__ import annotations

from dataclasses import dataclass

# output name -> template relative to results_dir
TEMPLATES: dict[str, str] = {
    "manifest": "manifest.json",
    "download_report": "download/report.json",
    "prompt_set": "prompts/{dataset}/{model}.jsonl",
    "prompt_set_meta": "prompts/{dataset}/{model}.meta.json",
    "base": "{model}/base",
    "heads": "{model}/heads",
    "heads_checkpoints": "{model}/heads.checkpoints",
    "training_report": "{model}/heads-report/training.json",
    "training_history": "{model}/heads-report/loss_history.json",
    "training_history_csv": "{model}/heads-report/loss_history.csv",
    "training_plot": "{model}/heads-report/loss.png",
    "cast": "{model}/cast",
    "cast_report": "{model}/cast-report/cast_fit.json",
    "generation_shard": "{model}/generations/{dataset}/{label}/shard-{shard}.jsonl",
    "generation_shard_meta": "{model}/generations/{dataset}/{label}/shard-{shard}.meta.json",
    "generations": "{model}/generations/{dataset}/{label}/all.jsonl",
    "generations_meta": "{model}/generations/{dataset}/{label}/all.meta.json",
    "scores": "{model}/scores/{dataset}/{label}.json",
    "lm_eval_data": "lm_eval_data/{task}.jsonl",
    "lm_eval": "{model}/lm_eval/{task}/{variant}.json",
    "table_csv": "tables/results.csv",
    "table_generation_md": "tables/generation.md",
    "table_generation_tex": "tables/generation.tex",
    "table_benchmarks_md": "tables/benchmarks.md",
    "table_benchmarks_tex": "tables/benchmarks.tex",
    "table_exits_md": "tables/exits.md",
    "table_examples_md": "tables/examples.md",
    "figure": "figures/{figure}.{format}",
}

# rule -> the job part of its log and benchmark paths (logs/<rule>/<job>.log, benchmarks/<rule>/<job>.tsv)
JOBS: dict[str, str | None] = {
    "download": None,
    "prompt_set": "{dataset}/{model}",
    "prepare_model": "{model}",
    "train_heads": "{model}",
    "fit_cast": "{model}",
    "generate": "{model}/{dataset}/{label}/shard-{shard}",
    "merge_generations": "{model}/{dataset}/{label}",
    "score": "{model}/{dataset}/{label}",
    "build_lm_eval_data": "{task}",
    "lm_eval": "{model}/{task}/{variant}",
    "manifest": None,
    "tables": None,
    "figures": None,
}

# the tables rule's outputs: table name -> template name
TABLES = {"csv": "table_csv", "generation_md": "table_generation_md", "generation_tex": "table_generation_tex",
          "benchmarks_md": "table_benchmarks_md", "benchmarks_tex": "table_benchmarks_tex",
          "exits_md": "table_exits_md", "examples_md": "table_examples_md"}
FIGURES = ("amateur_layer", "exit_layer", "benchmark_amateur_layer", "training_loss", "diversity_mauve")


@dataclass(frozen=True)
class Layout:
    """The path templates under ``root`` (the config's ``results_dir``, without a trailing slash)."""

    root: str

    def __getattr__(self, name: str) -> str:
        if name in TEMPLATES:
            return f"{self.root}/{TEMPLATES[name]}"
        raise AttributeError(name)

    def path(self, name: str, **wildcards) -> str:
        """The template ``name`` with its wildcards filled in."""
        return getattr(self, name).format(**wildcards)

    def _job(self, kind: str, rule: str, suffix: str) -> str:
        job = JOBS[rule]
        return f"{self.root}/{kind}/{rule}.{suffix}" if job is None else f"{self.root}/{kind}/{rule}/{job}.{suffix}"

    def log(self, rule: str) -> str:
        return self._job("logs", rule, "log")

    def benchmark(self, rule: str) -> str:
        return self._job("benchmarks", rule, "tsv")

    def tables(self) -> dict[str, str]:
        return {table: getattr(self, name) for table, name in TABLES.items()}

    def figures(self, formats) -> list[str]:
        return [self.path("figure", figure=name, format=fmt) for name in FIGURES for fmt in formats]


__all__ = ["FIGURES", "JOBS", "Layout", "TABLES", "TEMPLATES"]
