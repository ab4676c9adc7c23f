"""Build a LAMBADA-format jsonl (one ``{"text": ...}`` per line, the target is the final word) from real text.

LAMBADA passages end with a word that is hard to guess from the last sentence alone but
easy given the wider context. Offline we approximate that with news articles: each example
is a window of consecutive sentences from one article whose final sentence ends in an
alphabetic word whose stem (first five letters) already occurs earlier in the window, so
predicting it needs the context, as in LAMBADA. Trailing punctuation is removed so the final space-separated word
is the target, exactly like ``EleutherAI/lambada_openai``'s ``text`` field.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from dataclasses import dataclass

from multiexit.inputs.corpora import lee_corpus_path
from multiexit.io import atomic_open
from multiexit.settings import Settings, setting

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_WORD = re.compile(r"^[A-Za-z]{3,}$")
# reporting verbs end a large share of news sentences and need no context; skip them as targets
_SKIP_TARGETS = frozenset({"said", "says", "told"})
STEM_LETTERS = 5


def _stem(word: str) -> str:
    return re.sub(r"[^a-z]", "", word.lower())[:STEM_LETTERS]


def default_sources() -> list[Path]:
    """gensim's Lee news corpus: ``lee_background.cor`` (300 articles) and ``lee.cor`` (50), one per line."""
    return [lee_corpus_path(), lee_corpus_path(test=True)]


def split_sentences(article: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(article.split())) if s.strip()]


def _candidates(sentences: list[str], min_context_words: int, max_context_words: int) -> list[str]:
    """Every LAMBADA-style passage one article offers (in article order)."""
    passages = []
    for end in range(1, len(sentences)):
        final = sentences[end].rstrip(".!?\"')] ").split(" ")
        if len(final) < 2 or not _WORD.match(final[-1]) or final[-1].lower() in _SKIP_TARGETS:
            continue
        target = final[-1]
        window: list[str] = [" ".join(final)]
        words = len(final) - 1
        start = end
        while start > 0 and words < min_context_words:
            start -= 1
            window.insert(0, sentences[start])
            words += len(sentences[start].split(" "))
        if words < min_context_words:
            continue
        text = " ".join(window)
        tokens = text.split(" ")
        if len(tokens) - 1 > max_context_words:
            tokens = tokens[-(max_context_words + 1):]
            text = " ".join(tokens)
        if _stem(target) in {_stem(w) for w in tokens[:-1]}:
            passages.append(text)
    return passages


@dataclass(frozen=True)
class LambadaBuildSettings(Settings):
    """How to build a local LAMBADA-style file (the pipeline's ``lm_eval.tasks[i].build``; ``scripts/make_lambada_local.py``)."""

    source: tuple[str, ...] = setting((), "text files with one document per line (default: gensim lee_background.cor + lee.cor)")
    num_examples: int | None = setting(None, "seeded sample of this size (default: all)", minimum=1)
    per_article: int | None = setting(None, "at most this many examples per document", minimum=1)
    min_context_words: int = setting(60, "fewest words of context before the target", minimum=1)
    max_context_words: int = setting(160, "most words of context before the target", minimum=1)
    seed: int = setting(1234, "seed of the sample")

    def __post_init__(self) -> None:
        if self.max_context_words < self.min_context_words:
            raise ValueError(f"max_context_words: must be >= min_context_words ({self.min_context_words}), got {self.max_context_words}")

    def build(self) -> list[dict]:
        return build_lambada_examples(list(self.source) or None, num_examples=self.num_examples, per_article=self.per_article,
                                      min_context_words=self.min_context_words, max_context_words=self.max_context_words,
                                      seed=self.seed)


def build_lambada_examples(
    sources: str | Path | list[str | Path] | None = None,
    *,
    num_examples: int | None = LambadaBuildSettings.num_examples,
    per_article: int | None = LambadaBuildSettings.per_article,
    min_context_words: int = LambadaBuildSettings.min_context_words,
    max_context_words: int = LambadaBuildSettings.max_context_words,
    seed: int = LambadaBuildSettings.seed,
) -> list[dict]:
    """LAMBADA-style examples from text files with one document per line.

    ``sources`` defaults to :func:`default_sources` (about 320 examples). At most
    ``per_article`` examples come from one document (None: all); ``num_examples=None``
    keeps every example, otherwise a seeded sample of that size in corpus order.
    Raises ValueError if the sources yield fewer examples than requested.
    Each row is ``{"text": passage, "source": "<file>:<line>"}``.
    """
    for name, value in (("min_context_words", min_context_words), ("max_context_words", max_context_words)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if max_context_words < min_context_words:
        raise ValueError(f"max_context_words ({max_context_words}) must be >= min_context_words ({min_context_words})")
    for name, value in (("num_examples", num_examples), ("per_article", per_article)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
    if sources is None:
        paths = default_sources()
    elif isinstance(sources, (str, Path)):
        paths = [Path(sources)]
    else:
        paths = [Path(p) for p in sources]
    if not paths:
        raise ValueError("sources: expected at least one text file")
    for path in paths:
        if not path.is_file():
            raise ValueError(f"sources: file not found: {path}")
    rng = random.Random(seed)
    pool: list[tuple[int, int, int, str]] = []
    for file_index, path in enumerate(paths):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for doc_index, line in enumerate(lines):
            passages = _candidates(split_sentences(line), min_context_words, max_context_words)
            if per_article is not None and len(passages) > per_article:
                keep = sorted(rng.sample(range(len(passages)), per_article))
                passages = [passages[i] for i in keep]
            pool += [(file_index, doc_index, i, text) for i, text in enumerate(passages)]
    if num_examples is not None:
        if len(pool) < num_examples:
            raise ValueError(
                f"num_examples: {', '.join(map(str, paths))} yield only {len(pool)} examples; asked for {num_examples}"
            )
        pool = sorted(rng.sample(pool, num_examples))
    return [{"text": text, "source": f"{paths[f].name}:{doc + 1}"} for f, doc, _, text in pool]


def write_jsonl(rows: list[dict], output: str | Path) -> Path:
    """Write rows as jsonl atomically (a temp file renamed into place)."""
    output = Path(output)
    with atomic_open(output) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return output
