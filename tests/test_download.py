"""The download stage, offline: what it would fetch for the paper config, and the gated-dataset errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiexit.pipeline import load_config_files
from multiexit.stages import download
from multiexit.stages.download import DownloadError, Fetch, fetch_all, fetch_list, lm_eval_task_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper_items():
    return fetch_list(load_config_files(REPO / "config" / "paper.yaml"))


def test_paper_fetch_list(paper_items):
    got = {(i.kind, i.repo_id, i.config, i.splits, i.gated) for i in paper_items}
    assert got == {
        ("model", "IBM/gpt2-medium-multiexit", None, (), False),
        ("model", "IBM/gpt-neo-125m-multiexit", None, (), False),
        ("model", "gpt2-xl", None, (), False),
        ("model", "gpt2", None, (), False),
        # acd reads validation, cd validation+test: one item with both splits
        ("dataset", "Salesforce/wikitext", "wikitext-103-raw-v1", ("validation", "test"), False),
        ("dataset", "bigscience-data/roots_en_wikinews", None, ("train",), True),
        ("dataset", "bookcorpus/bookcorpus", None, ("train",), False),
        ("dataset", "EleutherAI/lambada_openai", "default", (), False),
        ("dataset", "EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", (), False),
        ("dataset", "baber/piqa", None, (), False),
        ("dataset", "allenai/winogrande", "winogrande_xl", (), False),
        ("dataset", "Rowan/hellaswag", None, (), False),
        ("dataset", "allenai/ai2_arc", "ARC-Easy", (), False),
        ("model", "princeton-nlp/sup-simcse-bert-base-uncased", None, (), False),  # the coherence model
    }  # the featurizer is model:gpt2, already a config model


def test_retrain_overlay_lists_the_training_corpus():
    config = load_config_files(REPO / "config" / "paper.yaml", REPO / "config" / "paper-retrain.yaml")
    items = fetch_list(config)
    assert ("url", "https://data.statmt.org/cc-100/en.txt.xz") in {(i.kind, i.repo_id) for i in items}
    assert {"gpt2-medium", "EleutherAI/gpt-neo-125m"} <= {i.repo_id for i in items if i.kind == "model"}


def test_lm_eval_task_yaml_with_include(tmp_path):
    (tmp_path / "base.yaml").write_text("dataset_path: org/data\ndataset_name: cfg\nprocess_docs: !function utils.p\n")
    (tmp_path / "t.yaml").write_text("include: base.yaml\ntask: my_task\n")
    assert lm_eval_task_dataset("my_task", tmp_path) == ("org/data", "cfg")
    with pytest.raises(DownloadError, match="no task YAML"):
        lm_eval_task_dataset("other", tmp_path)


def test_gated_dataset_without_token_fails_before_fetching(paper_items, monkeypatch, tmp_path):
    fetched = []
    monkeypatch.setattr(download, "_token", lambda: None)
    monkeypatch.setattr(download, "_fetch_one", lambda item, home, token: fetched.append(item))
    with pytest.raises(DownloadError) as info:
        fetch_all(paper_items, tmp_path, log=lambda *_: None)
    text = str(info.value)
    assert "bigscience-data/roots_en_wikinews" in text and "datasets.wikinews" in text
    assert "huggingface-cli login" in text and "HF_TOKEN" in text
    assert fetched == []


def _response(status: int, url: str):
    import httpx2  # the HTTP client huggingface_hub's errors are built on

    return httpx2.Response(status, request=httpx2.Request("GET", url))


def test_gated_repo_error_from_the_hub_is_named(monkeypatch, tmp_path):
    from huggingface_hub.errors import GatedRepoError

    def refuse(item, home, token):
        raise GatedRepoError("403 Client Error: cannot access gated repo",
                             response=_response(403, f"https://huggingface.co/api/models/{item.repo_id}"))

    monkeypatch.setattr(download, "_token", lambda: "hf_x")
    monkeypatch.setattr(download, "_fetch_one", refuse)
    item = Fetch("model", "org/gated-model", key="models.m.source")
    with pytest.raises(DownloadError, match=r"model 'org/gated-model' \(models.m.source\) is gated: .*huggingface-cli login"):
        fetch_all([item], tmp_path, log=lambda *_: None)


def test_gated_dataset_error_from_datasets_is_named(monkeypatch, tmp_path):
    from datasets.exceptions import DatasetNotFoundError

    def refuse(item, home, token):
        raise DatasetNotFoundError(f"Dataset '{item.repo_id}' is a gated dataset on the Hub. You must be authenticated to access it.")

    monkeypatch.setattr(download, "_token", lambda: "hf_x")
    monkeypatch.setattr(download, "_fetch_one", refuse)
    item = Fetch("dataset", "org/gated-data", None, ("train",), key="datasets.x")
    with pytest.raises(DownloadError, match=r"dataset 'org/gated-data' \(datasets.x\) is gated"):
        fetch_all([item], tmp_path, log=lambda *_: None)


def test_fetch_goes_to_the_given_cache_and_skips_urls(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(download, "_token", lambda: None)
    monkeypatch.setattr(download, "_fetch_one", lambda item, home, token: calls.append((item.repo_id, home)))
    items = [Fetch("model", "gpt2", key="k"), Fetch("url", "https://data.statmt.org/cc-100/en.txt.xz", key="t")]
    report = fetch_all(items, tmp_path, log=lambda *_: None)
    assert calls == [("gpt2", tmp_path)]
    assert [r["status"] for r in report] == ["fetched", "skipped"]


def test_download_script_dry_run(capsys):
    import importlib.util

    script = REPO / "scripts" / "download.py"
    spec = importlib.util.spec_from_file_location("download_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--configfile", str(REPO / "config" / "paper.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "bigscience-data/roots_en_wikinews" in out and "(gated)" in out


@pytest.mark.parametrize("config", ["config/config.yaml", "tests/data/tiny_config.yaml"])
def test_offline_configs_have_nothing_to_fetch(config, tmp_path, capsys, monkeypatch):
    """The download job of the demo and tiny configs (local and package sources only) succeeds offline, fetching nothing."""
    import importlib.util
    import json

    from multiexit.pipeline import build_plan

    plan = build_plan(load_config_files(REPO / config), REPO / "workflow" / "schemas" / "config.schema.yaml")
    spec = importlib.util.spec_from_file_location("download_script", REPO / "scripts" / "download.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = tmp_path / "report.json"
    assert script.main(["--items-json", plan.download_spec(), "--output", str(report)]) == 0
    assert "nothing to fetch" in capsys.readouterr().out
    assert json.loads(report.read_text()) == {"hf_cache": None, "items": []}
