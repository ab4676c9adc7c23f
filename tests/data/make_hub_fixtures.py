#!/usr/bin/env python
"""Write tiny local copies of the Hub datasets the prompt protocols read, in the Hub's own layout.

Each folder is what ``datasets.load_dataset(<folder>, <config>, split=...)`` reads exactly as it
reads the Hub repository: a ``README.md`` whose ``configs:`` block maps splits to parquet files,
and the parquet files with the Hub's column names. Run from the repository root to regenerate::

    python tests/data/make_hub_fixtures.py

Row contents are chosen so that every count in tests/test_prompts.py can be worked out by hand:
paragraphs are built from words that GPT-2 encodes as one token each (with their leading space).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent / "hub"

# words GPT-2 encodes as a single token each (with a leading space)
VOCAB = ["the", "of", "and", "to", "in", "was", "for", "on", "with", "as", "by", "at", "from", "his", "that", "it"]


def words(n: int, start: int = 0) -> str:
    return " ".join(VOCAB[(start + i) % len(VOCAB)] for i in range(n))


def wikitext_line(body: str) -> str:
    """A WikiText raw paragraph row: leading space, trailing ' \\n' (as in the Hub's parquet)."""
    return f" {body} \n"


def write_repo(folder: Path, configs: list[dict], files: dict[str, pa.Table]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["---", "configs:"]
    for config in configs:
        lines.append(f"- config_name: {config['name']}")
        lines.append("  data_files:")
        for split, pattern in config["splits"].items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    lines += ["---", "", f"Test fixture in the layout of the Hub dataset; written by {Path(__file__).name}.", ""]
    (folder / "README.md").write_text("\n".join(lines))
    for name, table in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)


def wikitext() -> None:
    # Salesforce/wikitext, config wikitext-103-raw-v1: one string column "text", one row per line
    # the Hub's line stream: blank rows around titles and headings, paragraphs on consecutive rows
    validation = [
        "",                                                     # 0 blank
        " = Alpha Article = \n",                               # 1 title
        "",                                                     # 2
        wikitext_line("The 1 @,@ 000 @-@ strong army , he said ( in 1990 ) : " + words(46)),  # 3: 15 + 46 = 61 raw words
        wikitext_line(words(50, 1)),                            # 4: exactly 50 words (not > 50)
        "",                                                     # 5
        " = = Section = = \n",                                 # 6 heading
        "",                                                     # 7
        wikitext_line(words(51, 2)),                            # 8: 51 words
        "",                                                     # 9
        " = Beta Article = \n",                                # 10 title
        "",                                                     # 11
        wikitext_line(words(200, 3)),                           # 12: 200 words
        wikitext_line(words(10, 6)),                            # 13: 10 words
    ]
    test = ["", " = Gamma = \n", wikitext_line(words(170, 4)), wikitext_line(words(20, 5))]
    write_repo(HERE / "wikitext", [{"name": "wikitext-103-raw-v1", "splits": {
        "validation": "wikitext-103-raw-v1/validation-*", "test": "wikitext-103-raw-v1/test-*"}}], {
        "wikitext-103-raw-v1/validation-00000-of-00001.parquet": pa.table({"text": validation}),
        "wikitext-103-raw-v1/test-00000-of-00001.parquet": pa.table({"text": test}),
    })


def bookcorpus() -> None:
    # bookcorpus/bookcorpus: one string column "text", one sentence per row (lower-cased, tokenised)
    rows = [f"sentence number {i} , short ." for i in range(30)]
    rows[4] = "he did n't know , but " + words(50)   # 6 + 50 = 56 words
    rows[17] = words(80, 7)                            # 80 words
    rows[25] = words(51, 9)                            # 51 words
    rows[26] = words(50, 11)                           # 50 words: not > 50
    write_repo(HERE / "bookcorpus", [{"name": "plain_text", "splits": {"train": "plain_text/train-*"}}],
               {"plain_text/train-00000-of-00001.parquet": pa.table({"text": rows})})


def wikinews() -> None:
    # bigscience-data/roots_en_wikinews: columns "text" and "meta" (a string), split train
    rows = [
        "Short story: " + words(10),                                            # 0: main text 10 words
        "Headline here: Sunday, May 1: " + words(60, 1),                        # 1: main = the 60 words
        "Pillars of Wikinews writing Writing an article " + words(55, 2),       # 2: no colon; boilerplate dropped
        "Prefix: " + words(30, 3) + ": " + words(52, 4),                        # 3: main = the 52 words
        words(50, 5),                                                           # 4: 50 words
    ]
    meta = [json.dumps({"id": i, "url": f"https://en.wikinews.org/wiki/Story_{i}"}) for i in range(len(rows))]
    write_repo(HERE / "roots_en_wikinews", [{"name": "default", "splits": {"train": "data/train-*"}}],
               {"data/train-00000-of-00001.parquet": pa.table({"text": rows, "meta": meta})})


def cc100() -> None:
    # CC-100 (data.statmt.org/cc-100/<lang>.txt.xz): plain text, one paragraph per line, blank line between documents
    docs = [[words(12), words(8, 3)], [words(20, 5)], [words(6, 1), words(7, 2), words(9, 4)]]
    text = "\n\n".join("\n".join(paragraphs) for paragraphs in docs) + "\n"
    (HERE / "cc100").mkdir(parents=True, exist_ok=True)
    (HERE / "cc100" / "en.txt").write_text(text)


if __name__ == "__main__":
    wikitext()
    bookcorpus()
    wikinews()
    cc100()
    print(f"wrote fixtures under {HERE}")
