"""Prompt datasets, tokens protocol: catalog requests, detokenisation, local formats, seeded sampling, clear errors.

(The acd / cd protocols and the Hub code path are tested on Hub-layout fixtures in tests/test_prompts.py.)"""

from __future__ import annotations

import json

import pytest

from multiexit.inputs.prompts import (
    CATALOG,
    PromptSetSettings,
    build_prompt_set,
    load_prompts,
    open_rows,
    special_prefix_ids,
    wikitext_detokenize,
)
from multiexit.settings import ConfigError


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("The 1 @,@ 000 @-@ strong army", "The 1,000-strong army"),
        ("It was 3 @.@ 5 m tall .", "It was 3.5 m tall."),
        ("a state @-@ of @-@ the @-@ art game", "a state-of-the-art game"),
        ("Hello , world ; fine : yes ! no ?", "Hello, world; fine: yes! no?"),
        ("He does n't know the game 's rules", "He doesn't know the game's rules"),
        ("a ( bracketed ) word and \" a quote \" here", 'a (bracketed) word and "a quote" here'),
        ("cost $ 5 , or 10 %", "cost $5, or 10%"),
        ("", ""),
    ],
)
def test_wikitext_detokenize(raw, clean):
    assert wikitext_detokenize(raw) == clean


def _words(n, start=0):
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_local_jsonl_prompts_keep_ids_and_cut_tokens(tmp_path, gpt2_tokenizer):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": _words(80, 100 * i), "doc": f"d{i}"} for i in range(6)] + [{"text": _words(10), "doc": "short"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    request = PromptSetSettings.from_dict({"name": "local", "path": str(path), "id_field": "doc", "num_prompts": 4,
                                        "prompt_tokens": 8, "min_reference_tokens": 20, "max_reference_tokens": 30, "seed": 3})
    prompts = load_prompts(request, gpt2_tokenizer)
    assert len(prompts) == 4 and len({p.id for p in prompts}) == 4
    assert "short" not in {p.id for p in prompts}
    for p in prompts:
        doc = next(r["text"] for r in rows if r["doc"] == p.id)
        ids = gpt2_tokenizer(doc)["input_ids"]
        assert list(p.prompt_ids) == ids[:8]  # GPT-2 adds no BOS
        assert p.prompt == gpt2_tokenizer.decode(ids[:8])
        assert p.reference == gpt2_tokenizer.decode(ids[8:38])
        assert doc.startswith(p.prompt + p.reference)
    # same seed -> same prompts; another seed -> another order
    again = load_prompts(request, gpt2_tokenizer)
    assert [p.id for p in again] == [p.id for p in prompts]
    other = load_prompts(PromptSetSettings.from_dict({**request.as_dict(), "seed": 4}), gpt2_tokenizer)
    assert [p.id for p in other] != [p.id for p in prompts]


def _ids_and_texts(request):
    rows = open_rows(request)
    return [rows.row_id(i) for i in range(len(rows))], [rows.text(i) for i in range(len(rows))]


def test_text_blocks_and_default_ids(tmp_path, gpt2_tokenizer):
    path = tmp_path / "docs.txt"
    path.write_text(f"{_words(50)}\n\n{_words(50, 200)}\n  \n{_words(3)}\n")
    ids, texts = _ids_and_texts(PromptSetSettings(name="local", path=str(path)))
    assert ids == ["docs.txt/0", "docs.txt/1", "docs.txt/2"]
    assert texts[1] == _words(50, 200)
    prompts = load_prompts({"name": "local", "path": str(path), "num_prompts": 2, "prompt_tokens": 4, "min_reference_tokens": 10},
                           gpt2_tokenizer)
    assert sorted(p.id for p in prompts) == ["docs.txt/0", "docs.txt/1"]


def test_local_wikitext_detokenisation_applies_when_requested(tmp_path, gpt2_tokenizer):
    path = tmp_path / "w.jsonl"
    path.write_text(json.dumps({"text": "The 1 @,@ 000 @-@ strong army . " + _words(20)}) + "\n")
    prompts = load_prompts({"name": "local", "path": str(path), "detokenize": "wikitext", "num_prompts": 1, "prompt_tokens": 6,
                            "min_reference_tokens": 4}, gpt2_tokenizer)
    assert (prompts[0].prompt + prompts[0].reference).startswith("The 1,000-strong army. w0")


def test_lee_news_prompts_one_name_and_old_spellings(gpt2_tokenizer):
    prompts = load_prompts({"name": "lee_background", "num_prompts": 5}, gpt2_tokenizer)
    assert len(prompts) == 5
    assert all(p.id.startswith("lee_background/") for p in prompts)
    assert all(len(p.prompt_ids) == 32 for p in prompts)
    assert all(len(gpt2_tokenizer(p.reference)["input_ids"]) >= 120 for p in prompts)
    old = load_prompts({"name": "gensim-lee", "num_prompts": 5}, gpt2_tokenizer)
    assert [p.prompt for p in old] == [p.prompt for p in prompts]


def test_bos_is_prepended_for_tokenizers_that_add_it(gemma3_tokenizer):
    gemma = gemma3_tokenizer  # the real Gemma 3 tokenizer, without converting the model's weights
    assert special_prefix_ids(gemma) == [gemma.bos_token_id]
    prompts = load_prompts({"name": "lee_background", "num_prompts": 2}, gemma)
    assert prompts[0].prompt_ids[0] == gemma.bos_token_id and len(prompts[0].prompt_ids) == 33


def test_hub_entries_name_the_sources_datasets():
    wiki = CATALOG["wikitext-103"]
    assert (wiki.path, wiki.hub_config, wiki.split, wiki.rules) == ("Salesforce/wikitext", "wikitext-103-raw-v1", "validation", "wikitext")
    assert CATALOG["wikinews"].path == "bigscience-data/roots_en_wikinews" and CATALOG["wikinews"].gated
    assert CATALOG["bookcorpus"].path == "bookcorpus/bookcorpus" and CATALOG["bookcorpus"].rules == "bookcorpus"
    assert PromptSetSettings(name="wikitext-103", protocol="cd").entry().split == "validation+test"


@pytest.mark.parametrize(
    "data, key, message",
    [
        ({"name": "nope"}, "name", "unknown name 'nope'"),
        ({"path": "x"}, "name", "required setting is missing"),
        ({"name": "lee_background", "prompt_len": 3}, "prompt_len", "unknown setting"),
        ({"name": "local"}, "path", "needs a path"),
        ({"name": "lee_background", "num_prompts": 0}, "num_prompts", ">= 1"),
        ({"name": "lee_background", "prompt_tokens": "32"}, "prompt_tokens", "an integer"),
        ({"name": "lee_background", "format": "csv"}, "format", "one of"),
        ({"name": "lee_background", "min_reference_tokens": 100, "max_reference_tokens": 50}, "max_reference_tokens",
         "50 < min_reference_tokens (100)"),
    ],
)
def test_bad_requests_are_named_errors(data, key, message):
    with pytest.raises(ConfigError) as err:
        PromptSetSettings.from_dict(data)
    assert err.value.key == key and message in str(err.value)


def test_missing_text_field_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"missing text field 'text'; fields present: \['body'\]"):
        open_rows(PromptSetSettings(name="local", path=str(path)))


def test_too_few_usable_documents_is_an_error(tmp_path, gpt2_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": _words(n)}) + "\n" for n in (10, 200, 20)))
    with pytest.raises(ValueError, match=r"only 1 of 3 rows are usable \(at least 32 prompt \+ 128 reference tokens\); "
                                         r"num_prompts=2 requested"):
        load_prompts({"name": "local", "path": str(path), "num_prompts": 2}, gpt2_tokenizer)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        open_rows(PromptSetSettings(name="local", path=str(tmp_path / "none.jsonl")))


def test_without_limit_every_usable_document_is_taken(tmp_path, gpt2_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": _words(60 if i % 2 else 5), "doc": f"d{i}"}) + "\n" for i in range(6)))
    prompts, stats, _ = build_prompt_set({"name": "local", "path": str(path), "id_field": "doc", "num_prompts": None,
                                          "prompt_tokens": 4, "min_reference_tokens": 40}, gpt2_tokenizer)
    assert sorted(p.id for p in prompts) == ["d1", "d3", "d5"]
    assert stats.as_dict() == {"rows": 6, "scanned": 6, "usable": 3, "selected": 3}


def test_local_parquet_file(tmp_path, gpt2_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": [_words(60, 100 * i) for i in range(3)]}), path)
    prompts = load_prompts({"name": "local", "path": str(path), "num_prompts": 3, "prompt_tokens": 4,
                            "min_reference_tokens": 40}, gpt2_tokenizer, cache_dir=str(tmp_path / "cache"))
    assert sorted(p.id for p in prompts) == ["docs.parquet/train/0", "docs.parquet/train/1", "docs.parquet/train/2"]
