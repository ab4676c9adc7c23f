"""Prompt datasets: catalog requests, detokenisation, local formats, seeded sampling, clear errors."""

from __future__ import annotations

import json

import pytest

from multiexit.inputs.prompts import (
    CATALOG,
    DatasetRequest,
    build_prompts,
    group_wikitext_articles,
    load_prompts,
    read_documents,
    special_prefix_ids,
    wikitext_detokenize,
)


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


def test_group_wikitext_articles_drops_headings_and_splits_at_titles():
    lines = [" \n", " = Valkyria = \n", " \n", " Senjo is a game . \n", " = = Gameplay = = \n", " It is fun . \n",
             " = = = Deep = = = \n", " More . \n", " = Other = \n", " Text . \n"]
    articles = list(group_wikitext_articles(lines))
    assert articles == [(0, "Valkyria", "Senjo is a game .\nIt is fun .\nMore ."), (1, "Other", "Text .")]


def _words(n, start=0):
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_local_jsonl_prompts_keep_ids_and_cut_tokens(tmp_path, gpt2_tokenizer):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": _words(80, 100 * i), "doc": f"d{i}"} for i in range(6)] + [{"text": _words(10), "doc": "short"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    request = DatasetRequest.from_dict({"name": "local", "path": str(path), "id_field": "doc", "num_prompts": 4,
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
    other = load_prompts(DatasetRequest.from_dict({**request.as_dict(), "seed": 4}), gpt2_tokenizer)
    assert [p.id for p in other] != [p.id for p in prompts]


def test_text_blocks_and_default_ids(tmp_path, gpt2_tokenizer):
    path = tmp_path / "docs.txt"
    path.write_text(f"{_words(50)}\n\n{_words(50, 200)}\n  \n{_words(3)}\n")
    docs = read_documents(DatasetRequest(name="local", path=str(path)))
    assert [d.id for d in docs] == ["docs.txt/0", "docs.txt/1", "docs.txt/2"]
    assert docs[1].text == _words(50, 200)
    prompts = load_prompts({"name": "local", "path": str(path), "num_prompts": 2, "prompt_tokens": 4, "min_reference_tokens": 10},
                           gpt2_tokenizer)
    assert sorted(p.id for p in prompts) == ["docs.txt/0", "docs.txt/1"]


def test_local_wikitext_detokenisation_applies_when_requested(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text(json.dumps({"text": "The 1 @,@ 000 @-@ strong army ."}) + "\n")
    docs = read_documents(DatasetRequest(name="local", path=str(path), detokenize="wikitext"))
    assert docs[0].text == "The 1,000-strong army."


def test_gensim_lee_news_prompts(gpt2_tokenizer):
    prompts = load_prompts({"name": "gensim-lee", "num_prompts": 5}, gpt2_tokenizer)
    assert len(prompts) == 5
    assert all(p.id.startswith("gensim-lee/") for p in prompts)
    assert all(len(p.prompt_ids) == 32 for p in prompts)
    assert all(len(gpt2_tokenizer(p.reference)["input_ids"]) >= 120 for p in prompts)


def test_bos_is_prepended_for_tokenizers_that_add_it(gemma3_tokenizer):
    gemma = gemma3_tokenizer  # the real Gemma 3 tokenizer, without converting the model's weights
    assert special_prefix_ids(gemma) == [gemma.bos_token_id]
    prompts = load_prompts({"name": "gensim-lee", "num_prompts": 2}, gemma)
    assert prompts[0].prompt_ids[0] == gemma.bos_token_id and len(prompts[0].prompt_ids) == 33


def test_hub_entries_name_real_datasets():
    assert CATALOG["wikitext-103"].path == "wikitext" and CATALOG["wikitext-103"].hub_config == "wikitext-103-raw-v1"
    assert CATALOG["wikitext-103"].split == "validation" and CATALOG["wikitext-103"].detokenize == "wikitext"
    for name in ("wikinews", "bookcorpus", "cc-news"):
        assert CATALOG[name].source == "hub" and "/" in CATALOG[name].path


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "nope"}, "unknown name 'nope'"),
        ({"path": "x"}, "missing key 'name'"),
        ({"name": "gensim-lee", "prompt_len": 3}, "unknown key(s) ['prompt_len']"),
        ({"name": "local"}, "'path' is required"),
        ({"name": "gensim-lee", "num_prompts": 0}, "num_prompts must be a positive integer"),
        ({"name": "gensim-lee", "prompt_tokens": "32"}, "prompt_tokens must be a positive integer"),
        ({"name": "gensim-lee", "format": "csv"}, "format must be one of"),
        ({"name": "gensim-lee", "min_reference_tokens": 100, "max_reference_tokens": 50}, "max_reference_tokens (50) < min_reference_tokens"),
    ],
)
def test_bad_requests_are_named_errors(data, message):
    with pytest.raises(ValueError) as err:
        DatasetRequest.from_dict(data)
    assert message in str(err.value)


def test_missing_text_field_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"missing text field 'text'; fields present: \['body'\]"):
        read_documents(DatasetRequest(name="local", path=str(path)))


def test_too_few_usable_documents_is_an_error(tmp_path, gpt2_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": _words(n)}) + "\n" for n in (10, 200, 20)))
    with pytest.raises(ValueError, match=r"only 1 of 3 documents have at least 32 prompt \+ 128 reference tokens; 2 requested"):
        load_prompts({"name": "local", "path": str(path), "num_prompts": 2}, gpt2_tokenizer)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        read_documents(DatasetRequest(name="local", path=str(tmp_path / "none.jsonl")))


def test_build_prompts_without_limit_takes_all_usable(gpt2_tokenizer):
    from multiexit.inputs.prompts import Document

    docs = [Document(f"d{i}", _words(60 if i % 2 else 5)) for i in range(6)]
    prompts = build_prompts(docs, gpt2_tokenizer, DatasetRequest(name="local", path="x", num_prompts=None, prompt_tokens=4, min_reference_tokens=40))
    assert sorted(p.id for p in prompts) == ["d1", "d3", "d5"]


def test_hub_entries_read_a_datasets_table(monkeypatch):
    """The Hub code path on a real ``datasets.Dataset`` (the download itself is replaced: no network here)."""
    import datasets

    import multiexit.inputs.prompts as data

    tables = {
        "wikitext": datasets.Dataset.from_dict({"text": [
            "", " = Valkyria = \n", "", " The 1 @,@ 000 @-@ strong army . \n", " = = Plot = = \n", " It won . \n",
            " = Other = \n", " Second article , here . \n"]}),
        "bookcorpus/bookcorpus": datasets.Dataset.from_dict({"text": [f"sentence {i} ." for i in range(45)]}),
        "vblagoje/cc_news": datasets.Dataset.from_dict({"title": ["a", "b"], "text": ["first story", "second story"]}),
    }
    seen = []

    def fake_load(entry):
        seen.append((entry.path, entry.hub_config, entry.split))
        return tables[entry.path]

    monkeypatch.setattr(data, "_load_hub", fake_load)
    wiki = read_documents(DatasetRequest(name="wikitext-103"))
    assert seen[-1] == ("wikitext", "wikitext-103-raw-v1", "validation")
    assert [(d.id, d.text) for d in wiki] == [("wikitext-103/validation/0", "The 1,000-strong army.\nIt won."),
                                             ("wikitext-103/validation/1", "Second article, here.")]
    books = read_documents(DatasetRequest(name="bookcorpus"))
    assert [d.id for d in books] == ["bookcorpus/train/0", "bookcorpus/train/1", "bookcorpus/train/2"]
    assert books[0].text.startswith("sentence 0 . sentence 1 .") and books[2].text == " ".join(f"sentence {i} ." for i in range(40, 45))
    news = read_documents(DatasetRequest(name="cc-news", id_field="title"))
    assert [(d.id, d.text) for d in news] == [("a", "first story"), ("b", "second story")]
    with pytest.raises(ValueError, match=r"missing text field 'body'"):
        read_documents(DatasetRequest(name="cc-news", text_field="body"))
