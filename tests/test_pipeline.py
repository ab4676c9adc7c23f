"""The Snakemake pipeline: paper-grid planning, config rejection, tables, and real end-to-end runs."""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import pipeline_env, tiny_argv, tiny_workdir
from multiexit.pipeline import ConfigError, build_plan, load_config_files
from multiexit.pipeline.tables import write_tables

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_hub_fixtures import words as fixture_words  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny_config.yaml"
PAPER = REPO / "config" / "paper.yaml"
DEMO = REPO / "config" / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _job_stats(output: str) -> dict[str, int]:
    """Per-rule job counts from Snakemake's 'Job stats' table."""
    block = output[output.index("Job stats:"):]
    counts = {}
    for line in block.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def _tiny() -> dict:
    return yaml.safe_load(TINY.read_text())


# ------------------------------------------------------------------------------------ planning


def test_paper_config_dry_run_plans_every_job_offline():
    started = time.monotonic()
    run = subprocess.run([*SNAKEMAKE, "-n", "--configfile", str(PAPER)], cwd=REPO, env=pipeline_env(),
                         capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    counts = _job_stats(run.stdout + run.stderr)
    # released heads: nothing trained. Settings (decoding entries' `datasets` restrict them):
    # gpt2-medium: greedy x 4 datasets + 6 baselines (dola: low, high) x 3 + 12 exits x 3 + 2 ACD x 4 + 10 sweep x 3 = 96;
    # gpt-neo-125m: 4 + 18 + 6 x 3 + 2 x 4 + 4 x 3 = 60; gpt2-xl: contrastive decoding on wikitext-cd = 1.
    # 157 scores, x 8 shards = 1256 generations; prompt sets: 4 + 4 + 1 (dataset, model) pairs = 9.
    # lm-eval: gpt2-medium (original + 12 exits + 1 ACD) x 6 tasks = 84, gpt-neo-125m (1 + 6 + 1) x 6 = 48.
    assert counts == {
        "download": 1, "prepare_model": 4, "prompt_set": 9, "generate": 1256, "merge_generations": 157, "score": 157,
        "lm_eval": 132, "manifest": 1, "tables": 1, "figures": 1, "all": 1, "total": 1720,
    }
    assert elapsed < 240, f"planning the paper grid took {elapsed:.0f}s"


def test_paper_plan_paths_and_expansion():
    plan = build_plan(load_config_files(PAPER), SCHEMA)
    labels = [s.label for s in plan.settings["gpt2-medium"]]
    assert "acd-original-12-a0.1" in labels and "acd-24-12-a0.1" in labels
    assert [f"exit-{layer}" for layer in range(2, 25, 2)] == [label for label in labels if label.startswith("exit-")]
    sweep = [s for s in plan.settings["gpt2-medium"] if s.method == "acd" and s.params["upper"] == "original"]
    assert sorted(s.params["lower"] for s in sweep) == list(range(2, 23, 2))
    assert ("gpt2-medium", "wikitext", "acd-original-12-a0.1", 3) in plan.generation_jobs()
    assert plan.generation_shard("gpt2-medium", "wikitext", "acd-original-12-a0.1", 3) == \
        "results/paper/gpt2-medium/generations/wikitext/acd-original-12-a0.1/shard-3.jsonl"
    cd = plan.setting("gpt2-xl", "cd-gpt2-a0.1-beam5")
    assert plan.resolve_refs(cd.params)["amateur"] == "results/paper/gpt2/base"
    assert "gpt2" not in plan.settings  # an amateur-only model generates nothing
    variants = {r.variant for r in plan.lm_eval_runs if r.model == "gpt-neo-125m"}
    # lm_eval.acd is set per model: GPT-Neo-125M's amateur is its exit 6 (GPT-2 Medium's is 12)
    assert variants == {"original", "acd-original-6"} | {f"exit-{layer}" for layer in range(2, 13, 2)}
    assert {r.variant for r in plan.lm_eval_runs if r.model == "gpt2-medium" and r.variant.startswith("acd")} == {"acd-original-12"}


def test_paper_plan_leaves_prompt_counts_to_the_prompt_set_job():
    # the plan cannot know how many WikiText lines pass the acd filter: an unmeetable num_prompts plans, and the
    # prompt-set job fails on it (test_too_few_prompts_fails_in_the_prompt_set_job_only)
    config = load_config_files(PAPER)
    config["datasets"]["wikitext"]["num_prompts"] = 10**7
    plan = build_plan(config, SCHEMA)
    assert json.loads(plan.prompt_set_spec("wikitext"))["num_prompts"] == 10**7


def test_grids_multiply_and_seeds_suffix():
    config = _tiny()
    config["seeds"] = [0, 1]
    config["decoding"] = [{"method": "acd", "params": {"upper": "original", "lower": "exits", "alpha": [0.1, 0.5]}}]
    plan = build_plan(config, SCHEMA)
    labels = sorted(s.label for s in plan.settings["smollm2"])
    assert labels == sorted(f"acd-original-{layer}-a{alpha}-seed{seed}"
                            for layer in (6, 15) for alpha in (0.1, 0.5) for seed in (0, 1))


def test_demo_config_is_valid_and_needs_no_second_model():
    plan = build_plan(load_config_files(DEMO), SCHEMA)
    methods = {s.method for items in plan.settings.values() for s in items}
    assert "contrastive_decoding" not in methods
    assert {"greedy", "top_p", "exit", "acd", "contrastive_search", "dola"} <= methods
    # the paper's comparison (issue 16): ACD of the original head against every exit, and every exit alone
    for model, items in plan.settings.items():
        exits = plan.models[model]["exits"]
        assert sorted(s.params["lower"] for s in items if s.method == "acd" and s.params["upper"] == "original") == exits
        assert sorted(s.params["layer"] for s in items if s.method == "exit") == exits
    assert all(spec["source"].startswith("package:") for spec in plan.models.values())
    assert plan.lm_eval_runs and all(plan.lm_eval_task(r.task).get("kind") == "lambada_local" for r in plan.lm_eval_runs)


# ------------------------------------------------------------------------------------ bad configs


def _set(config: dict, path: list, value) -> dict:
    config = copy.deepcopy(config)
    target = config
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return config


_DELETE = object()

BAD_CONFIGS = [
    # (what, path to change, new value, key named in the error)
    ("unknown method", ["decoding", 1, "method"], "nucleus", "decoding[1].method"),
    ("unknown decoding parameter", ["decoding", 0, "params"], {"beams": 3}, "decoding[0].params.beams"),
    ("layer outside the model", ["decoding", 1, "params", "lower"], 40, "decoding[1].params.lower"),
    ("contrast pair without heads", ["decoding", 1, "params", "lower"], 10, "decoding[1].params.lower"),
    ("exit beyond the model", ["models", "smollm2", "exits"], [6, 31], "models.smollm2.exits[1]"),
    ("missing field", ["models", "smollm2", "num_layers"], _DELETE, "models.smollm2.num_layers"),
    ("mistyped field", ["datasets", "news", "shards"], "two", "datasets.news.shards"),
    ("unknown top-level key", ["decodings"], [], "decodings"),
    ("unknown dataset key", ["datasets", "news", "colour"], "red", "datasets.news.colour"),
    ("unknown dataset name", ["datasets", "news", "name"], "wikipedia-xl", "datasets.news.name"),
    ("unknown training option", ["models", "smollm2", "train", "learning_rat"], 0.1, "models.smollm2.train.learning_rat"),
    ("training corpus that names nothing", ["models", "smollm2", "train", "data"], "/no/such/corpus.txt", "models.smollm2.train.data"),
    ("unknown metric setting", ["metrics", "mauve_tokens"], 12, "metrics.mauve_tokens"),
    ("reference to no model", ["metrics", "featurizer"], "model:gpt2", "metrics.featurizer"),
    ("lm-eval ACD pair without heads", ["lm_eval", "acd"], [["original", 10]], "lm_eval.acd[0].lower"),
    ("lm-eval mistyped flag", ["lm_eval", "original"], "yes", "lm_eval.original"),
    ("resource mistyped", ["resources", "generate", "gpu"], 0.5, "resources.generate.gpu"),
    ("unknown example method", ["tables"], {"examples": ["greedy", "nucleus"]}, "tables.examples[1]"),
]


@pytest.mark.parametrize("what,path,value,key", BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_is_rejected_naming_the_key(what, path, value, key):
    with pytest.raises(ConfigError) as info:
        build_plan(_set(_tiny(), path, value), SCHEMA)
    assert info.value.key == key, str(info.value)
    assert f"config key '{key}'" in str(info.value)


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    config = _set(_tiny(), ["decoding", 1, "params", "lower"], 10)
    config["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([*SNAKEMAKE, "-c1", "--configfile", str(path)], cwd=REPO, env=pipeline_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "config key 'decoding[1].params.lower'" in run.stdout + run.stderr
    assert "has no exit head" in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------ tables


def test_tables_from_result_files(tmp_path):
    """Tables and tidy CSV from score / lm-eval files in the formats the stage scripts write."""
    gens = []
    for label, method, params, div in [("greedy", "greedy", {}, 0.2), ("acd-original-6-a0.1", "acd", {"upper": "original", "lower": 6, "alpha": 0.1}, 0.6)]:
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps({"metrics": {"diversity_per_text": div, "diversity_pooled": div - 0.1, "mauve": 0.5,
                                                "coherence": 0.3, "coherence_encoder": "st"},
                                    "generation": {"tokens_per_second": 10.0}}))
        gens.append({"model": "m", "label": label, "method": method, "params": params, "seed": 0, "source": "decoding[0]",
                     "dataset": "news", "scores": str(path)})
    lm = []
    for variant, args in [("original", {"use_original_head": True}), ("exit-6", {"use_original_head": False, "output_layer_index": 6}),
                          ("acd-original-6", {"use_original_head": False, "contrast_layer_indices": "original;6"})]:
        path = tmp_path / f"{variant}.json"
        path.write_text(json.dumps({"results": {"lambada_news": {"alias": "lambada_news", "acc,none": 0.25, "acc_stderr,none": 0.1,
                                                                 "perplexity,none": 12.5, "perplexity_stderr,none": 1.0}}}))
        lm.append({"model": "m", "task": "lambada_news", "variant": variant, "model_args": args, "path": str(path)})
    manifest = {"models": {"m": {"training_report": None}}, "generations": gens, "lm_eval": lm,
                "tables": {"metrics": ["diversity_per_text", "mauve"], "benchmark_metrics": ["acc", "perplexity"]}}
    paths = write_tables(manifest, tmp_path / "tables")
    rows = list(csv.DictReader(open(paths["csv"])))
    gen_rows = [r for r in rows if r["kind"] == "generation"]
    assert len(gen_rows) == 2 * 5  # 4 numeric metrics + tokens/s each; the encoder name is not a number
    bench = [r for r in rows if r["kind"] == "benchmark"]
    assert len(bench) == 3 * 2 and {r["stderr"] for r in bench if r["metric"] == "acc"} == {"0.1"}
    md = Path(paths["generation_md"]).read_text()
    assert "| m | acd-original-6-a0.1 | 0.600 | 0.500 |" in md
    bench_md = Path(paths["benchmarks_md"]).read_text()
    assert "| model | task | metric | original | exit-6 | acd-original-6 |" in bench_md
    tex = Path(paths["generation_tex"]).read_text()
    assert r"acd-original-6-a0.1 & 0.600 & 0.500 \\" in tex and r"\begin{tabular}{llrr}" in tex


# ------------------------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_tiny_config_end_to_end_with_interruption(tiny_local_run):
    """Tiny real config through every stage; interrupted mid-run, resumed by a plain rerun (no
    --rerun-incomplete on the command line: the default workflow profile must supply it), no finished job redone.
    The run itself is the session's shared one (conftest.tiny_local_run)."""
    run = tiny_local_run
    results = Path(run["results"])
    trained = results / "smollm2" / "heads-report" / "training.json"
    assert trained.is_file(), run["first_log"][-4000:]
    assert run["running_when_interrupted"], "the run finished before it could be interrupted"
    assert run["first_returncode"] != 0, run["first_log"][-4000:]
    assert not run["tables_after_interrupt"]
    assert len(run["mtimes_before"]) == 3, run["mtimes_before"]
    if run["crashed"]:
        assert run["unlock"][0] == 0, run["unlock"][1]
    second_log = run["second_log"]
    assert run["second_returncode"] == 0, second_log[-5000:]
    assert "rule train_heads:" not in second_log and "rule prepare_model:" not in second_log, second_log[:3000]
    for path, mtime in run["mtimes_before"].items():
        assert run["mtimes_after"][path] == mtime, f"{path} was redone"

    # every stage ran and produced what the tables and figures need
    rows = list(csv.DictReader(open(results / "tables" / "results.csv")))
    kinds = {kind: [r for r in rows if r["kind"] == kind] for kind in ("generation", "benchmark", "training")}
    assert {r["setting"] for r in kinds["generation"]} == {"greedy", "acd-original-6-a0.1"}
    for setting in ("greedy", "acd-original-6-a0.1"):
        metrics = {r["metric"]: float(r["value"]) for r in kinds["generation"] if r["setting"] == setting}
        assert 0 <= metrics["diversity_per_text"] <= 1 and 0 <= metrics["mauve"] <= 1 and -1 <= metrics["coherence"] <= 1
    assert {(r["setting"], r["metric"]) for r in kinds["benchmark"]} >= {
        (v, m) for v in ("original", "exit-6", "acd-original-6") for m in ("acc", "perplexity")}
    assert {r["layer"] for r in kinds["training"] if r["setting"] == "after"} >= {"6", "15"}
    generation_md = (results / "tables" / "generation.md").read_text().splitlines()
    assert sum(line.startswith("| smollm2 |") for line in generation_md) == 2
    benchmarks_md = (results / "tables" / "benchmarks.md").read_text()
    assert "| smollm2 | lambada_news | acc |" in benchmarks_md
    for name in ("amateur_layer", "exit_layer", "benchmark_amateur_layer", "training_loss", "diversity_mauve"):
        for fmt in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{fmt}").stat().st_size > 1000
    cast = json.loads((results / "smollm2" / "cast" / "config.json").read_text())
    assert cast["cast_layer_indices"] == [6]
    check_protocol_runs(results)
    # per-job logs and benchmarks
    for rule in ("prepare_model", "train_heads", "fit_cast", "generate", "score", "lm_eval", "tables", "figures"):
        assert list((results / "logs" / rule).rglob("*.log")) or (results / "logs" / f"{rule}.log").is_file(), rule
        assert list((results / "benchmarks" / rule).rglob("*.tsv")) or (results / "benchmarks" / f"{rule}.tsv").is_file(), rule

    # a third run has nothing to do
    third = subprocess.run(tiny_argv(Path(run["workdir"]), Path(run["overlay"]), results, "-n"), cwd=REPO,
                           env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "Nothing to be done" in third.stdout + third.stderr
    # changing one lm-eval setting reruns only the lm-eval side: not the download job (whose report every job
    # reads), so not head training or generation
    changed = Path(run["workdir"]) / "lm_eval_changed.yaml"
    changed.write_text(yaml.safe_dump({"lm_eval": {"tasks": [{"name": "lambada_news", "kind": "lambada_local",
                                                              "build": {"num_examples": 6, "seed": 0}}]}}))
    fourth = subprocess.run([*tiny_argv(Path(run["workdir"]), Path(run["overlay"]), results, "-n"), "--configfile",
                             str(TINY), str(run["overlay"]), str(changed)], cwd=REPO, env=pipeline_env(),
                            capture_output=True, text=True, timeout=300)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    planned = set(re.findall(r"^(?:local)?rule (\w+):", fourth.stdout + fourth.stderr, re.MULTILINE))
    assert {"build_lm_eval_data", "lm_eval", "tables", "figures"} <= planned
    assert not planned & {"download", "prepare_model", "train_heads", "fit_cast", "prompt_set", "generate", "score"}, planned


def check_protocol_runs(results: Path) -> None:
    """The acd and cd protocols' prompt sets and greedy runs in the tiny run, against counts and prompts worked
    out by hand from tests/data/make_hub_fixtures.py (the WikiText fixture's rows), as in tests/test_prompts.py."""
    acd_meta = json.loads((results / "prompts" / "wiki-acd" / "smollm2.meta.json").read_text())
    # validation rows 3 (61 raw words), 8 (51) and 12 (200) have more than 50 words; row 4 has exactly 50
    assert acd_meta["counts"] == {"rows": 14, "scanned": 4, "usable": 3, "selected": 3}
    acd = [json.loads(line) for line in (results / "prompts" / "wiki-acd" / "smollm2.jsonl").read_text().splitlines()]
    assert [p["id"] for p in acd] == [f"wikitext-103/validation/{i}" for i in (3, 8, 12)]
    # 32 words after the authors' replacements: 7 words of the detokenised head, then 25 fixture words
    assert acd[0]["prompt"] == "The 1,000-strong army, he said (in 1990): " + fixture_words(25)
    assert acd[0]["reference"] == fixture_words(21, 25)
    cd_meta = json.loads((results / "prompts" / "wiki-cd" / "smollm2.meta.json").read_text())
    # 14 validation + 4 test rows; with BOS, only validation/12 (1 + 200 + 1 or 2) and test/2 (1 + 170 + ...) reach 160
    assert cd_meta["counts"] == {"rows": 18, "scanned": 18, "usable": 2, "selected": 2}
    cd = [json.loads(line) for line in (results / "prompts" / "wiki-cd" / "smollm2.jsonl").read_text().splitlines()]
    assert [p["id"] for p in cd] == ["wikitext-103/validation/12", "wikitext-103/test/2"]
    assert cd[0]["prompt_ids"][0] == 1 and len(cd[0]["prompt_ids"]) == 32  # SmolLM2's BOS <|im_start|> + 31 tokens
    assert cd[0]["prompt"] == " " + fixture_words(31, 3)  # one token per fixture word, the BOS not decoded
    # each protocol's generation length: acd 100 new tokens at most, cd exactly 256 (EOS suppressed)
    for dataset, count, new, least in (("wiki-acd", 3, 100, 0), ("wiki-cd", 2, 256, 256)):
        folder = results / "smollm2" / "generations" / dataset / "greedy"
        meta = json.loads((folder / "shard-0.meta.json").read_text())
        assert (meta["settings"]["max_new_tokens"], meta["settings"]["min_new_tokens"]) == (new, least)
        rows = [json.loads(line) for line in (folder / "shard-0.jsonl").read_text().splitlines()]
        assert len(rows) == count and all(least <= r["n_new_tokens"] <= new for r in rows)
        assert [r["prompt"] for r in rows] == [p["prompt"] for p in (acd if dataset == "wiki-acd" else cd)]
        assert (results / "smollm2" / "scores" / dataset / "greedy.json").is_file()


@pytest.mark.slow
def test_too_few_prompts_fails_in_the_prompt_set_job_only(tmp_path):
    """A num_prompts the acd protocol cannot meet on the WikiText fixture (3 usable lines): asked for one
    generation shard, the run fails in the prompt-set job, with the counts, before head training or any generation
    job starts (the prompt-set rule's priority), and leaves no prompt set behind."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {"wiki-acd": {"num_prompts": 4}}}))
    results = tmp_path / "results"
    target = results / "smollm2" / "generations" / "wiki-acd" / "greedy" / "shard-0.jsonl"
    run = subprocess.run([*tiny_argv(tiny_workdir(tmp_path / "work"), overlay, results), "--cores", "1", "--", str(target)],
                         cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert re.findall(r"^Error in rule (\S+):", output, re.MULTILINE) == ["prompt_set"], output[-3000:]
    started = set(re.findall(r"^(?:local)?rule (\S+):", output, re.MULTILINE))
    assert started <= {"download", "prepare_model", "prompt_set"}, started
    log = (results / "logs" / "prompt_set" / "wiki-acd" / "smollm2.log").read_text()
    assert "only 3 of 14 rows are usable (more than 50 words); num_prompts=4 requested" in log, log[-2000:]
    assert not list((results / "prompts").rglob("*.jsonl"))


# NOT ON PATH: Snakemake started by its path in the venv, with a PATH that does not hold the venv (a user who
# never activated it). The rules' shell commands must then still run the venv's interpreter.
@pytest.mark.slow
def test_rules_use_snakemakes_interpreter_without_the_venv_on_path(tmp_path):
    snakemake = Path(sys.executable).parent / "snakemake"
    env = pipeline_env(path_with_venv=False)
    assert str(Path(sys.executable).parent) not in env["PATH"].split(os.pathsep)
    results = tmp_path / "results"
    target = results / "smollm2" / "base"  # one job: prepare_model runs `python scripts/prepare_model.py`
    run = subprocess.run([str(snakemake), "--directory", str(tiny_workdir(tmp_path)), "--cores", "1", "--configfile", str(TINY),
                          "--config", f"results_dir={results}", "--", str(target)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = results / "logs" / "prepare_model" / "smollm2.log"
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:] + (log.read_text()[-2000:] if log.is_file() else "")
    assert json.loads((target / "prepared.json").read_text())["num_layers"] == 30


def test_workflow_passes_lint_and_snakefmt():
    lint = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-3000:]
    rules = sorted(str(p) for p in (REPO / "workflow" / "rules").glob("*.smk"))
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", *rules], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
