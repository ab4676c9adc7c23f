"""The plan: one path layout, one JSON spec per job (each stage's Settings), checks at plan time, no script imports."""

from __future__ import annotations

import ast
import copy
import json
import sys
from pathlib import Path

import pytest
import yaml

from multiexit.pipeline import ConfigError, build_plan, load_config_files
from multiexit.pipeline.layout import JOBS, TEMPLATES, Layout

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TINY = REPO / "tests" / "data" / "tiny_config.yaml"
DEMO = REPO / "config" / "config.yaml"


def _tiny() -> dict:
    """The tiny config with its news dataset alone (the protocol datasets are checked in their own test)."""
    config = yaml.safe_load(TINY.read_text())
    config["datasets"] = {"news": config["datasets"]["news"]}
    return config


def test_protocols_set_the_generation_length():
    # no new_tokens in the tiny config's fixture datasets: each protocol's own length (acd 100, cd exactly 256)
    plan = build_plan(yaml.safe_load(TINY.read_text()), SCHEMA)
    lengths = {name: (spec["new_tokens"], spec["min_new_tokens"]) for name, spec in plan.stages["datasets"].items()}
    assert lengths == {"news": (12, 0), "wiki-acd": (100, 0), "wiki-cd": (256, 256)}
    assert plan.prompt_set_jobs() == [("news", "smollm2"), ("wiki-acd", "smollm2"), ("wiki-cd", "smollm2")]
    assert {(d, label) for _, d, label, _ in plan.generation_jobs()} == {
        ("news", "greedy"), ("news", "acd-original-6-a0.1"), ("wiki-acd", "greedy"), ("wiki-cd", "greedy")}


def _with(config: dict, path: list, value) -> dict:
    config = copy.deepcopy(config)
    target = config
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
    target[path[-1]] = value
    return config


def test_layout_fills_templates_and_names_logs():
    layout = Layout("results/x")
    assert layout.generation_shard == "results/x/{model}/generations/{dataset}/{label}/shard-{shard}.jsonl"
    assert layout.path("scores", model="m", dataset="d", label="greedy") == "results/x/m/scores/d/greedy.json"
    assert layout.log("generate") == "results/x/logs/generate/{model}/{dataset}/{label}/shard-{shard}.log"
    assert layout.benchmark("tables") == "results/x/benchmarks/tables.tsv"
    assert layout.figures(["png"])[0] == "results/x/figures/amateur_layer.png"
    assert set(JOBS) >= {"prepare_model", "generate", "score", "lm_eval", "tables"} and "manifest" in TEMPLATES
    with pytest.raises(AttributeError):
        layout.nothing  # noqa: B018


def test_plan_paths_come_from_the_layout():
    plan = build_plan(_tiny(), SCHEMA)
    assert plan.generation_shard("smollm2", "news", "greedy", 1) == plan.layout.path(
        "generation_shard", model="smollm2", dataset="news", label="greedy", shard=1)
    # one shard: the score reads it directly; several: the merged file
    assert plan.score_input("smollm2", "news", "greedy") == "results/tiny/smollm2/generations/news/greedy/shard-0.jsonl"
    sharded = build_plan(_with(_tiny(), ["datasets", "news", "shards"], 2), SCHEMA)
    assert sharded.score_input("smollm2", "news", "greedy") == "results/tiny/smollm2/generations/news/greedy/all.jsonl"
    assert plan.prompt_set_path("news", "smollm2") == "results/tiny/prompts/news/smollm2.jsonl"
    assert plan.prompt_set_jobs() == [("news", "smollm2")]
    assert plan.download_report() == "results/tiny/download/report.json"
    assert plan.model_dir("smollm2") == "results/tiny/smollm2/cast"


def test_every_job_spec_is_its_stage_settings():
    from multiexit.stages.fit_cast import FitCastSettings
    from multiexit.stages.generate import GenerateSettings
    from multiexit.stages.lm_eval import LambadaBuildSettings, LmEvalSettings
    from multiexit.stages.prepare import PrepareSettings
    from multiexit.stages.score import ScoreSettings

    plan = build_plan(_with(_tiny(), ["datasets", "news", "shards"], 2), SCHEMA)
    generate = GenerateSettings.from_json(plan.generate_spec("smollm2", "news", "acd-original-6-a0.1", 1))
    assert (generate.method, generate.shard, generate.num_shards, generate.batch_size, generate.max_new_tokens) == ("acd", 1, 2, 4, 12)
    assert generate.params["alpha"] == 0.1 and generate.device == "cpu"
    assert generate.dataset == {"name": "lee_background", "num_prompts": 4, "prompt_tokens": 16, "min_reference_tokens": 16,
                                "max_reference_tokens": 32}
    assert generate.prompts == "results/tiny/prompts/news/smollm2.jsonl" and generate.min_new_tokens == 0
    assert generate.dtype == "auto"
    cast = FitCastSettings.from_json(plan.cast_spec("smollm2"))
    assert cast.layers == (6,) and cast.num_positions == 256 and cast.batch_size == FitCastSettings.batch_size
    assert PrepareSettings.from_json(plan.prepare_spec("smollm2")).exits == (6, 15)
    score = ScoreSettings.from_json(plan.score_spec())
    assert score.featurizer == "results/tiny/smollm2/base" and score.batch_size == 4
    assert LambadaBuildSettings.from_json(plan.lambada_spec("lambada_news")).num_examples == 8
    lm = LmEvalSettings.from_json(plan.lm_eval_spec("smollm2", "lambada_news", "acd-original-6"))
    assert lm.batch_size == 4 and lm.seed == 0 and "contrast_alpha=0.1" in lm.model_args


def test_batch_size_has_one_default():
    from multiexit.stages.generate import GenerateSettings

    config = _tiny()
    del config["resources"]["generate"]["batch_size"]
    plan = build_plan(config, SCHEMA)
    spec = json.loads(plan.generate_spec("smollm2", "news", "greedy", 0))
    assert spec["batch_size"] == GenerateSettings.batch_size


BAD = [
    ("unknown packaged model", ["models", "smollm2", "source"], "package:nope", "models.smollm2.source"),
    ("device torch cannot parse", ["device"], "gpu0", "device"),
    ("batch size zero", ["resources", "generate", "batch_size"], 0, "resources.generate.batch_size"),
    ("batch size mistyped", ["resources", "score", "batch_size"], "big", "metrics.batch_size"),
    ("cast option unknown", ["models", "smollm2", "cast", "options", "positions"], 3, "models.smollm2.cast.options.positions"),
    ("cast option out of range", ["models", "smollm2", "cast", "options", "ridge"], -1, "models.smollm2.cast.options.ridge"),
    ("lambada build option", ["lm_eval", "tasks", 0, "build", "num_examples"], 0, "lm_eval.tasks[0].build.num_examples"),
    ("lm-eval alpha", ["lm_eval", "alpha"], 2, "lm_eval.alpha"),
    ("lm-eval limit", ["lm_eval", "limit"], 0, "lm_eval.limit"),
    ("dataset shards", ["datasets", "news", "shards"], 0, "datasets.news.shards"),
    ("dataset new tokens", ["datasets", "news", "new_tokens"], "many", "datasets.news.new_tokens"),
    ("dataset field value", ["datasets", "news", "prompt_tokens"], 0, "datasets.news.prompt_tokens"),
]


@pytest.mark.parametrize("what,path,value,key", BAD, ids=[case[0] for case in BAD])
def test_bad_stage_settings_name_the_key(what, path, value, key):
    with pytest.raises(ConfigError) as info:
        build_plan(_with(_tiny(), path, value), SCHEMA)
    assert info.value.key == key, str(info.value)


def test_library_never_imports_scripts_or_workflow():
    for path in (REPO / "src" / "multiexit").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("scripts", "workflow") for n in names), path
        assert "SCRIPTS_DIR" not in path.read_text() and "spec_from_file_location" not in path.read_text(), path


def test_rules_hold_no_path_literals_and_run_snakemakes_interpreter():
    for rule_file in (REPO / "workflow" / "rules").glob("*.smk"):
        text = "\n".join(line for line in rule_file.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert "{R}" not in text and "results/" not in text, rule_file
    # the rules' `python` is the interpreter Snakemake runs under, also when no venv is activated
    assert 'os.path.dirname(sys.executable)' in (REPO / "Snakefile").read_text()


def test_demo_plan_loads_no_script(monkeypatch):
    before = set(sys.modules)
    build_plan(load_config_files(DEMO), SCHEMA)
    assert not [m for m in set(sys.modules) - before if m.startswith("_pipeline_check")]


def test_building_a_plan_imports_neither_torch_nor_transformers():
    """The Snakefile builds the plan in every Snakemake process (twice in every SLURM job): torch and transformers
    (3.3 s of the tiny config's 3.65 s Snakefile here) load on first use, not for the plan's checks."""
    import subprocess

    code = (
        "import sys\n"
        "from multiexit.pipeline import build_plan, load_config_files\n"
        f"for path in {[str(TINY), str(DEMO), str(REPO / 'config' / 'paper.yaml')]!r}:\n"
        f"    build_plan(load_config_files(path), {str(SCHEMA)!r})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_lm_eval_pairs_per_model_and_symbolic_layers():
    config = _tiny()
    config["lm_eval"]["acd"] = {"smollm2": [["original", "middle"], ["top", 6]]}
    config["lm_eval"]["exits"] = False
    config["models"]["smollm2"]["exits"] = [6, 15, 30]
    config["models"]["smollm2"].pop("cast")
    plan = build_plan(config, SCHEMA)
    assert {r.variant for r in plan.lm_eval_runs} == {"original", "acd-original-15", "acd-30-6"}


@pytest.mark.parametrize("acd, key, text", [
    ({"smollm2": [["top", "top"]]}, "lm_eval.acd.smollm2[0]", "same layer"),
    ({"gpt2": [["original", 6]]}, "lm_eval.acd.gpt2", "not benchmarked"),
    ({"smollm2": [["original", 40]]}, "lm_eval.acd.smollm2[0].lower", "outside"),
    ([["original", 7]], "lm_eval.acd[0].lower", "no exit head"),
])
def test_bad_lm_eval_pairs_name_the_key(acd, key, text):
    with pytest.raises(ConfigError) as info:
        build_plan(_with(_tiny(), ["lm_eval", "acd"], acd), SCHEMA)
    assert info.value.key == key and text in str(info.value), str(info.value)


def test_decoding_datasets_restrict_jobs_and_manifest():
    config = _with(_tiny(), ["datasets", "other"], {"name": "lee_background", "num_prompts": 4, "new_tokens": 8})
    config["decoding"][1]["datasets"] = ["other"]
    plan = build_plan(config, SCHEMA)
    assert plan.setting("smollm2", "greedy").datasets == ("news", "other")
    assert plan.setting("smollm2", "acd-original-6-a0.1").datasets == ("other",)
    scores = {(d, label) for _, d, label in plan.score_jobs()}
    assert scores == {("news", "greedy"), ("other", "greedy"), ("other", "acd-original-6-a0.1")}
    assert {(g["dataset"], g["label"]) for g in plan.manifest()["generations"]} == scores
    assert {(d, label) for _, d, label, _ in plan.generation_jobs()} == scores
    config["decoding"][1]["datasets"] = ["other", "nope"]
    with pytest.raises(ConfigError) as err:
        build_plan(config, SCHEMA)
    assert err.value.key == "decoding[1].datasets[1]"


def test_hf_cache_dtype_and_min_new_tokens():
    from multiexit.stages.fit_cast import FitCastSettings
    from multiexit.stages.generate import GenerateSettings

    plan = build_plan(_tiny(), SCHEMA)
    assert plan.hf_cache is None and plan.hf_env() == "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"
    assert "dtype" not in plan.lm_eval_model_args("smollm2", "lambada_news", "original")
    config = _with(_with(_tiny(), ["hf_cache"], "/shared/hf cache"), ["dtype"], "bfloat16")
    config["datasets"]["news"]["min_new_tokens"] = 12
    plan = build_plan(config, SCHEMA)
    assert plan.hf_env() == "HF_HOME='/shared/hf cache' HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"
    generate = GenerateSettings.from_json(plan.generate_spec("smollm2", "news", "greedy", 0))
    assert generate.dtype == "bfloat16" and generate.min_new_tokens == 12
    assert FitCastSettings.from_json(plan.cast_spec("smollm2")).dtype == "bfloat16"
    assert json.loads(plan.train_spec("smollm2"))["dtype"] == "bfloat16"
    assert "dtype=bfloat16" in plan.lm_eval_model_args("smollm2", "lambada_news", "original")
    with pytest.raises(ConfigError) as err:
        build_plan(_with(config, ["datasets", "news", "min_new_tokens"], 13), SCHEMA)
    assert err.value.key == "datasets.news.min_new_tokens"
    with pytest.raises(ConfigError) as err:
        build_plan(_with(config, ["dtype"], "float8"), SCHEMA)
    assert err.value.key == "dtype"


def test_paper_config_plans_with_cd_protocol_running_to_full_length():
    plan = build_plan(load_config_files(REPO / "config" / "paper.yaml"), SCHEMA)
    assert plan.stages["datasets"]["wikitext-cd"]["min_new_tokens"] == 256
    assert plan.stages["datasets"]["wikitext"]["min_new_tokens"] == 0
    assert plan.settings["gpt2-xl"][0].datasets == ("wikitext-cd",)
