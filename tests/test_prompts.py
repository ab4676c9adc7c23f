"""Prompt protocols on tiny copies of the Hub datasets (tests/data/hub, read through datasets.load_dataset).

Every expected count and first prompt below is worked out by hand from tests/data/make_hub_fixtures.py,
whose paragraphs are built from words GPT-2 encodes as one token each.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))
from make_hub_fixtures import words  # noqa: E402

from multiexit.inputs.prompts import PromptSetSettings, build_prompt_set  # noqa: E402
from multiexit.settings import ConfigError  # noqa: E402
from multiexit.stages.prompts import meta_path, prepare_prompt_set, read_prompt_set  # noqa: E402

HUB = Path(__file__).parent / "data" / "hub"
WIKITEXT = {"name": "wikitext-103", "path": str(HUB / "wikitext")}
BOOKS = {"name": "bookcorpus", "path": str(HUB / "bookcorpus"), "hub_config": "plain_text"}
NEWS = {"name": "wikinews", "path": str(HUB / "roots_en_wikinews")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets-cache"))


def _build(spec, tokenizer, cache):
    return build_prompt_set(PromptSetSettings.from_dict(spec, "dataset"), tokenizer, cache)


def test_acd_wikitext_lines_words_and_replacements(gpt2_tokenizer, cache):
    prompts, stats, source = _build({**WIKITEXT, "protocol": "acd", "num_prompts": None}, gpt2_tokenizer, cache)
    # validation rows 3 (61 words), 8 (51), 12 (200) have more than 50 words; row 4 has exactly 50
    assert stats.as_dict() == {"rows": 14, "scanned": 4, "usable": 3, "selected": 3}
    assert [p.id for p in prompts] == ["wikitext-103/validation/3", "wikitext-103/validation/8", "wikitext-103/validation/12"]
    first = prompts[0]
    assert first.prompt == "The 1,000-strong army, he said (in 1990): " + words(25)  # 7 + 25 = 32 words
    assert first.reference == words(21, 25)
    assert list(first.prompt_ids) == gpt2_tokenizer(first.prompt)["input_ids"]
    assert source["splits"] == ["validation"] and source["config"] == "wikitext-103-raw-v1"


def test_acd_sampling_is_the_authors_random_sample(gpt2_tokenizer, cache):
    prompts, stats, _ = _build({**WIKITEXT, "protocol": "acd", "num_prompts": 2}, gpt2_tokenizer, cache)
    assert random.Random(0).sample(range(3), 2) == [1, 2]  # run_inference.py's draw over the 3 usable rows
    assert [p.id for p in prompts] == ["wikitext-103/validation/8", "wikitext-103/validation/12"]
    assert prompts[0].prompt == words(32, 2) and stats.selected == 2


def test_acd_too_few_rows_names_the_counts(gpt2_tokenizer, cache):
    with pytest.raises(ValueError, match=r"only 3 of 14 rows are usable \(more than 50 words\); num_prompts=4 requested"):
        _build({**WIKITEXT, "protocol": "acd", "num_prompts": 4}, gpt2_tokenizer, cache)


def test_acd_bookcorpus_rows(gpt2_tokenizer, cache):
    prompts, stats, _ = _build({**BOOKS, "protocol": "acd", "num_prompts": None}, gpt2_tokenizer, cache)
    assert stats.as_dict() == {"rows": 30, "scanned": 4, "usable": 3, "selected": 3}  # rows 4, 17, 25 (26 has 50)
    assert [p.id for p in prompts] == ["bookcorpus/train/4", "bookcorpus/train/17", "bookcorpus/train/25"]
    assert prompts[0].prompt == "he didn't know, but " + words(28)
    assert prompts[0].reference == words(22, 28)


def test_acd_wikinews_main_text(gpt2_tokenizer, cache):
    prompts, stats, _ = _build({**NEWS, "protocol": "acd", "num_prompts": None}, gpt2_tokenizer, cache)
    assert stats.as_dict() == {"rows": 5, "scanned": 4, "usable": 3, "selected": 3}
    assert [p.id for p in prompts] == ["wikinews/train/1", "wikinews/train/2", "wikinews/train/3"]
    # the longest ':'-segment is the main text; the Wikinews boilerplate is removed
    assert [p.prompt for p in prompts] == [words(32, 1), words(32, 2), words(32, 4)]


def test_cd_wikitext_validation_then_test_with_bos(gpt2_tokenizer, cache):
    prompts, stats, source = _build({**WIKITEXT, "protocol": "cd", "num_prompts": None}, gpt2_tokenizer, cache)
    # 14 validation + 4 test rows; only validation/12 (1 + 200 + 2 tokens) and test/2 (1 + 170 + 2) reach 160
    assert stats.as_dict() == {"rows": 18, "scanned": 18, "usable": 2, "selected": 2}
    assert source["splits"] == ["validation", "test"]
    assert [p.id for p in prompts] == ["wikitext-103/validation/12", "wikitext-103/test/2"]
    first = prompts[0]
    assert first.prompt_ids[0] == gpt2_tokenizer.bos_token_id and len(first.prompt_ids) == 32
    assert first.prompt == " " + words(31, 3)
    assert first.reference == " " + words(169, 34) + " \n"
    one, _, _ = _build({**WIKITEXT, "protocol": "cd", "num_prompts": 1}, gpt2_tokenizer, cache)
    assert [p.id for p in one] == ["wikitext-103/validation/12"]  # the first usable rows, in order


def test_tokens_protocol_on_wikitext_lines_and_book_documents(gpt2_tokenizer, cache):
    prompts, stats, _ = _build({**WIKITEXT, "protocol": "tokens", "num_prompts": None, "min_reference_tokens": 20},
                               gpt2_tokenizer, cache)
    assert stats.usable == 2 and stats.rows == 14  # rows 3 and 12 have 32 + 20 tokens after detokenisation
    assert {p.id for p in prompts} == {"wikitext-103/validation/3", "wikitext-103/validation/12"}
    assert all(len(p.prompt_ids) == 32 for p in prompts)
    books, stats, _ = _build({**BOOKS, "protocol": "tokens", "num_prompts": None, "min_reference_tokens": 20},
                             gpt2_tokenizer, cache)
    assert stats.rows == 2 and sorted(p.id for p in books) == ["bookcorpus/train/doc0", "bookcorpus/train/doc1"]


@pytest.mark.parametrize(
    "data, key, text",
    [
        ({"name": "nope"}, "dataset.name", "unknown name 'nope'"),
        ({}, "dataset.name", "required"),
        ({"name": "wikitext-103", "prompt_len": 3}, "dataset.prompt_len", "unknown setting"),
        ({"name": "wikitext-103", "protocol": "paper"}, "dataset.protocol", "one of"),
        ({"name": "wikitext-103", "protocol": "acd", "prompt_tokens": 16}, "dataset.prompt_tokens", "fixes its own cut"),
        ({"name": "wikitext-103", "protocol": "cd", "seed": 3}, "dataset.seed", "no seed"),
        ({"name": "local"}, "dataset.path", "needs a path"),
        ({"name": "wikitext-103", "num_prompts": 0}, "dataset.num_prompts", ">= 1"),
    ],
)
def test_bad_requests_name_the_key(data, key, text):
    with pytest.raises(ConfigError) as info:
        PromptSetSettings.from_dict(data, "dataset")
    assert info.value.key == key and text in str(info.value)


def test_prompt_set_file_is_stable_and_complete(gpt2_tokenizer, cache, tmp_path):
    spec = {**WIKITEXT, "protocol": "acd", "num_prompts": 2}
    a, b = tmp_path / "a" / "gpt2.jsonl", tmp_path / "b" / "gpt2.jsonl"
    meta = prepare_prompt_set(spec, gpt2_tokenizer, a, cache_dir=cache)
    prepare_prompt_set(spec, gpt2_tokenizer, b, cache_dir=cache)
    assert a.read_bytes() == b.read_bytes()  # same ids, prompts and token ids across runs
    assert meta["counts"] == {"rows": 14, "scanned": 4, "usable": 3, "selected": 2}
    assert meta["protocol"]["new_tokens"] == 100 and "run_inference.py" in meta["protocol"]["source"]
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert set(rows[0]) == {"id", "prompt", "reference", "prompt_ids"}
    assert [p.id for p in read_prompt_set(a)] == ["wikitext-103/validation/8", "wikitext-103/validation/12"]
    a.write_text(a.read_text().splitlines()[0] + "\n")  # a truncated file is refused
    with pytest.raises(ValueError, match="1 rows but its sidecar records 2"):
        read_prompt_set(a)
    meta_path(b).unlink()
    with pytest.raises(ValueError, match="sidecar .* is missing"):
        read_prompt_set(b)


def test_prepare_prompts_script(gpt2_tokenizer, cache, tmp_path):
    import importlib.util

    script = Path(__file__).parents[1] / "scripts" / "prepare_prompts.py"
    module_spec = importlib.util.spec_from_file_location("prepare_prompts", script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    tokenizer_dir = tmp_path / "tok"
    gpt2_tokenizer.save_pretrained(tokenizer_dir)
    out = tmp_path / "fields.jsonl"
    assert module.main(["--tokenizer", str(tokenizer_dir), "--output", str(out), "--cache-dir", cache,
                        "--name", "bookcorpus", "--path", BOOKS["path"], "--hub-config", "plain_text",
                        "--protocol", "acd", "--num-prompts", "2"]) == 0
    spec_out = tmp_path / "spec.jsonl"
    spec = json.dumps({**BOOKS, "protocol": "acd", "num_prompts": 2})
    assert module.main(["--tokenizer", str(tokenizer_dir), "--output", str(spec_out), "--cache-dir", cache, "--spec", spec]) == 0
    assert out.read_text() == spec_out.read_text() and len(out.read_text().splitlines()) == 2
    with pytest.raises(SystemExit):
        module.main(["--tokenizer", str(tokenizer_dir), "--output", str(out), "--name", "nope"])


def test_cc100_training_text_through_the_text_builder(monkeypatch):
    """The head-training corpus: CC-100's layout (paragraph lines, blank line between documents) via datasets' text builder."""
    import multiexit.inputs.corpora as corpora

    monkeypatch.setattr(corpora, "CC100_URL", str(HUB / "cc100" / "{lang}.txt"))
    docs = list(corpora.stream_hub_documents("cc100:en"))
    assert docs == [words(12) + "\n" + words(8, 3), words(20, 5), "\n".join([words(6, 1), words(7, 2), words(9, 4)])]


def test_training_chunks_without_separator(gpt2_tokenizer):
    """doc_separator none: documents' ids concatenated directly ([ACD] head_training_utils.group_texts)."""
    from multiexit.inputs.corpora import load_token_chunks

    eos = gpt2_tokenizer.eos_token_id
    joined = load_token_chunks("lee_background", gpt2_tokenizer, 64, train_tokens=64 * 40, seed=1, separator="none")
    marked = load_token_chunks("lee_background", gpt2_tokenizer, 64, train_tokens=64 * 40, seed=1)
    assert int((joined.train == eos).sum()) == 0 and int((marked.train == eos).sum()) > 0
    with pytest.raises(ValueError, match="separator: must be 'eos' or 'none'"):
        load_token_chunks("lee_background", gpt2_tokenizer, 64, train_tokens=640, separator="nl")
