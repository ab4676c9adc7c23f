"""Prompt sets for open-ended generation: a corpus catalog, named prompt protocols, prompt/reference cuts.

A prompt set is built from a :class:`PromptSetSettings` (a catalog name, overrides such as a local
``path``, and a *protocol*) and the generating model's tokenizer. Three protocols exist
(:data:`PROTOCOLS`); each names the source file it follows:

``acd``
    The ACD authors' code (IBM/auto-contrastive-generation at commit d0a7925):
    ``data_processing/dataset_catalog.py`` names the Hub datasets, ``preprocessing_functions.py``
    keeps a row only if it has more than 50 whitespace-separated words (WikiNews: its main text,
    the longest ``':'``-separated segment) and applies per-dataset string replacements, and
    ``run_inference.py`` draws ``random.Random(0).sample(range(n), k)`` of the usable rows and
    prompts with the first 32 *words* (``--num_prompt_tokens 32`` joined from ``text.split()``),
    generating ``--max_new_tokens 100``. The reference (the words after the prompt) is our
    addition: that code keeps none.
``cd``
    The Contrastive Decoding code (XiangLi1999/ContrastiveDecoding, ``text-generation/run_generation.py``):
    for WikiText-103 the validation and test lines in that order, each prefixed with the BOS token
    text, kept when they have at least 160 tokens; the first 2000 (here: ``num_prompts``) in order;
    the prompt is the first 32 token ids (BOS included) and the reference the rest of the line
    (``eval_script.py`` scores the continuation after the prompt). For other corpora the same
    file's ``load_prompts_simple``: ASCII-only text with at least 150 tokens, 32-token prefix, first
    rows in order. ``--length 256`` in the repository's README gives 256 new tokens.
``tokens`` (our choice, the default)
    For local corpora: detokenised documents drawn in the order of a seeded permutation; the prompt
    is the first ``prompt_tokens`` tokens and only documents whose continuation reaches
    ``min_reference_tokens`` are usable.

Hub corpora are read through ``datasets.load_dataset`` into its memory-mapped Arrow cache and
scanned column-wise in batches (the ``text`` column only); rows are fetched by index, so a
74-million-row corpus is never materialised as Python objects. A local folder laid out like the
Hub repository (``README.md`` with ``configs:`` and parquet files) passed as ``path`` goes through
the very same call, which is how the tests exercise the Hub path offline.

Too few usable rows, a missing text field or an unknown option is a ``ValueError`` naming the
key and the counts, raised before any model work, never a silently shorter prompt set.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from multiexit.io import iter_jsonl
from multiexit.settings import ConfigError, Settings, setting

# ------------------------------------------------------------------------------ catalog


@dataclass(frozen=True)
class CatalogEntry:
    """How to read one named corpus."""

    source: str  # "hub" | "jsonl" | "text" | "lines" | "auto"
    path: str | None = None  # Hub dataset id or local file (None: resolved at load time)
    hub_config: str | None = None
    split: str = "train"
    revision: str | None = None
    text_field: str = "text"
    id_field: str | None = None
    detokenize: str | None = None  # "wikitext" or None (tokens protocol only)
    rows_per_document: int = 1  # tokens protocol: consecutive rows joined into one document
    rules: str | None = None  # which per-dataset rules of the acd / cd protocols apply
    gated: bool = False
    description: str = ""


LEE_NAME = "lee_background"

CATALOG: dict[str, CatalogEntry] = {
    "wikitext-103": CatalogEntry(
        "hub", "Salesforce/wikitext", "wikitext-103-raw-v1", "validation", None, "text", None, "wikitext", 1, "wikitext",
        description="WikiText-103 (raw), one row per line of the article stream (the ACD code loads 'wikitext', "
                    "which the Hub now serves as Salesforce/wikitext)",
    ),
    "wikinews": CatalogEntry(
        "hub", "bigscience-data/roots_en_wikinews", None, "train", None, "text", None, None, 1, "wikinews", True,
        description="ROOTS English Wikinews (gated: accept the BigScience terms on the Hub and log in), as in the ACD code",
    ),
    "wikinews-open": CatalogEntry(
        "hub", "izumi-lab/wikinews-en-20230728", None, "train", None, "text", None, None, 1, None,
        description="English Wikinews dump of 2023-07-28 (not gated; our choice, not the ACD source)",
    ),
    "bookcorpus": CatalogEntry(
        "hub", "bookcorpus/bookcorpus", None, "train", None, "text", None, None, 20, "bookcorpus",
        description="BookCorpus, one sentence per row (tokens protocol: 20 consecutive rows form one document)",
    ),
    "cc-news": CatalogEntry(
        "hub", "vblagoje/cc_news", None, "train", None, "text", None, None, 1, None, description="CC-News articles",
    ),
    LEE_NAME: CatalogEntry(
        "lines", None, None, "train", None, "text", None, None, 1, None,
        description="gensim's test_data/lee_background.cor: ~300 Australian news articles, one per line (offline demo)",
    ),
    "local": CatalogEntry(
        "auto", None, None, "train", None, "text", None, None, 1, None,
        description="a local file: .jsonl (one JSON object per line), .parquet, or plain text (blank-line-separated documents)",
    ),
}
# Older spellings of the Lee corpus, accepted and mapped to LEE_NAME.
ALIASES = {"gensim-lee": LEE_NAME, "lee": LEE_NAME}


@dataclass(frozen=True)
class Protocol:
    name: str
    unit: str  # what prompt_tokens counts
    new_tokens: int  # the protocol's generation length (the pipeline's datasets.<name>.new_tokens)
    source: str
    description: str


PROTOCOLS: dict[str, Protocol] = {
    "acd": Protocol(
        "acd", "words", 100,
        "IBM/auto-contrastive-generation@d0a7925: autocontrastive_gen/run_inference.py, "
        "data_processing/dataset_catalog.py, data_processing/preprocessing_functions.py",
        "rows with more than 50 words (WikiNews: main text), the authors' replacements, "
        "random.Random(seed).sample of the usable rows, first 32 words as prompt",
    ),
    "cd": Protocol(
        "cd", "tokens", 256,
        "XiangLi1999/ContrastiveDecoding: text-generation/run_generation.py (prompts), README.md (--length 256), "
        "text-generation/eval_script.py (reference = continuation after the prompt)",
        "WikiText-103 validation+test lines with BOS and >= 160 tokens, first rows in order, 32-token prompts; "
        "other corpora: ASCII text with >= 150 tokens",
    ),
    "tokens": Protocol(
        "tokens", "tokens", 256, "our choice",
        "detokenised documents in seeded order; prompt_tokens-token prompt, reference of "
        "min_reference_tokens..max_reference_tokens tokens",
    ),
}

_DEFAULT_PROMPT_TOKENS = 32
_DEFAULT_MIN_REFERENCE = 128
_DEFAULT_MAX_REFERENCE = 256


def _check_name(value: str) -> None:
    if ALIASES.get(value, value) not in CATALOG:
        raise ValueError(f"unknown name {value!r}; catalog: {', '.join(sorted(CATALOG))}")


@dataclass(frozen=True)
class PromptSetSettings(Settings):
    """Which rows to read and how to cut them into prompts (JSON-serialisable; the prompt-set job's spec).

    ``name`` is a :data:`CATALOG` key; ``path`` etc. override the catalog entry (``path`` is
    required for ``local``; for a Hub corpus it may be a Hub id or a local folder laid out like the
    Hub repository). ``num_prompts=None`` takes every usable row.
    """

    name: str = setting(help="catalog name: " + ", ".join(sorted(CATALOG)), check=_check_name)
    protocol: str = setting("tokens", "prompt protocol: acd (the ACD authors' code), cd (Contrastive Decoding's), tokens (ours)",
                            choices=tuple(PROTOCOLS))
    path: str | None = setting(None, "local file/folder, or a Hub dataset id overriding the catalog's")
    format: str | None = setting(None, "jsonl, text, lines, parquet or hub (default: the catalog's; by suffix for local)",
                                 choices=("jsonl", "text", "lines", "parquet", "hub"))
    hub_config: str | None = setting(None, "Hub dataset config (default: the catalog's)")
    split: str | None = setting(None, "split; 'validation+test' joins splits in that order (default: the catalog's/protocol's)")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit; default: the catalog's)")
    text_field: str | None = setting(None, "text column (default: text)")
    id_field: str | None = setting(None, "column holding a document id (default: <name>/<split>/<row>)")
    detokenize: str | None = setting(None, "tokens protocol: wikitext or none (default: the catalog's)", choices=("wikitext", "none"))
    num_prompts: int | None = setting(64, "prompts to draw (null: every usable row)", minimum=1)
    prompt_tokens: int = setting(_DEFAULT_PROMPT_TOKENS, "prompt length in the protocol's unit (acd: words)", minimum=1)
    min_reference_tokens: int = setting(_DEFAULT_MIN_REFERENCE, "tokens protocol: shortest usable reference", minimum=1)
    max_reference_tokens: int | None = setting(_DEFAULT_MAX_REFERENCE, "tokens protocol: reference cut (null: all)", minimum=1)
    seed: int = setting(0, "sampling seed (acd: random.Random(seed).sample; tokens: numpy permutation)")

    def __post_init__(self):
        if self.name == "local" and not self.path:
            raise ValueError("path: dataset 'local' needs a path (a .jsonl, .parquet or text file)")
        if self.max_reference_tokens is not None and self.max_reference_tokens < self.min_reference_tokens:
            raise ValueError(f"max_reference_tokens: {self.max_reference_tokens} < min_reference_tokens ({self.min_reference_tokens})")
        if self.protocol in ("acd", "cd"):
            fixed = {"prompt_tokens": _DEFAULT_PROMPT_TOKENS, "min_reference_tokens": _DEFAULT_MIN_REFERENCE,
                     "max_reference_tokens": _DEFAULT_MAX_REFERENCE, "detokenize": None}
            for key, default in fixed.items():
                if getattr(self, key) != default:
                    raise ValueError(f"{key}: protocol {self.protocol!r} fixes its own cut and filters "
                                     f"({PROTOCOLS[self.protocol].description}); remove {key} or use protocol 'tokens'")
        if self.protocol == "cd" and self.seed != 0:
            raise ValueError("seed: protocol 'cd' takes the first usable rows in order; it has no seed")

    # -- helpers
    def catalog_name(self) -> str:
        return ALIASES.get(self.name, self.name)

    def validate(self) -> None:
        """Re-check every field (for instances built directly rather than through from_dict)."""
        type(self).from_dict(self.as_dict(), "dataset")

    def entry(self) -> CatalogEntry:
        """The catalog entry with this request's overrides applied."""
        name = self.catalog_name()
        base = CATALOG[name]
        path = self.path or base.path
        if name == LEE_NAME and path is None:
            from multiexit.inputs.corpora import lee_corpus_path

            path = str(lee_corpus_path())
        source = self.format or base.source
        if self.path and base.source == "hub" and self.format is None:
            source = "hub"  # a Hub id or a local copy of the Hub repository
        if source == "auto":
            suffix = Path(str(path)).suffix
            source = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(suffix, "text")
        split = self.split or base.split
        if self.split is None and self.protocol == "cd" and base.rules == "wikitext":
            split = "validation+test"  # run_generation.py concatenates both splits
        detok = base.detokenize if self.detokenize is None else (None if self.detokenize == "none" else self.detokenize)
        return CatalogEntry(
            source=source, path=path,
            hub_config=self.hub_config if self.hub_config is not None else base.hub_config,
            split=split, revision=self.revision if self.revision is not None else base.revision,
            text_field=self.text_field or base.text_field,
            id_field=self.id_field if self.id_field is not None else base.id_field,
            detokenize=detok, rows_per_document=base.rows_per_document, rules=base.rules,
            gated=base.gated and self.path is None, description=base.description,
        )


@dataclass(frozen=True)
class Prompt:
    """One prompt: its row id, prompt text and token ids, and the human continuation."""

    id: str
    prompt: str
    reference: str
    prompt_ids: tuple[int, ...] = field(repr=False)

    def as_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "reference": self.reference, "prompt_ids": list(self.prompt_ids)}


@dataclass
class PromptStats:
    """What a protocol saw: rows read, rows usable, prompts drawn (for the sidecar and error messages)."""

    rows: int = 0
    usable: int = 0
    selected: int = 0
    scanned: int = 0  # rows examined (cd stops at the first num_prompts usable rows)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "scanned": self.scanned, "usable": self.usable, "selected": self.selected}


# ------------------------------------------------------------------------------ detokenisation

_WIKITEXT_RULES = [
    (re.compile(r" @([-,.])@ "), r"\1"),  # 1 @,@ 000 -> 1,000 ; state @-@ of -> state-of
    (re.compile(r" ([.,;:!?%)\]}])"), r"\1"),  # no space before closing punctuation
    (re.compile(r"([(\[{$]) "), r"\1"),  # no space after opening brackets / currency
    (re.compile(r" (n't|'s|'re|'ve|'m|'ll|'d)\b"), r"\1"),  # clitics
    (re.compile(r"\s+\n"), "\n"),
    (re.compile(r"[ \t]{2,}"), " "),
]
_QUOTED = re.compile(r'" ([^"\n]*?) "')


def wikitext_detokenize(text: str) -> str:
    """Our WikiText detokeniser (tokens protocol): ``' @-@ '`` -> ``'-'``, ``' @,@ '`` -> ``','``,
    ``' @.@ '`` -> ``'.'``, no space before punctuation / clitics, ``" quoted "`` -> ``"quoted"``."""
    text = _QUOTED.sub(r'"\1"', text)
    for pattern, replacement in _WIKITEXT_RULES:
        text = pattern.sub(replacement, text)
    return text.strip()


# The ACD authors' per-dataset string replacements (preprocessing_functions.py at d0a7925), in order.
ACD_WIKITEXT_REPLACEMENTS = (
    (" 's ", "'s "), ("s ' ", "s' "), (" , ", ", "), (" ( ", " ("), (" )", ")"), (" : ", ": "), (" ; ", "; "),
    (" . ", ". "), (" %", "%"), (" @-@ ", "-"), (" @.@ ", "."), (" @,@ ", ","),
)
ACD_BOOKCORPUS_REPLACEMENTS = (
    (" '", "'"), (" , ", ", "), (" .", "."), (" ?", "?"), (" n't", "n't"), (" : ", ": "), (" ; ", "; "),
    (" ( ", " ("), (" )", ")"), (" %", "%"),
)
ACD_WIKINEWS_BOILERPLATE = "Pillars of Wikinews writing Writing an article "
ACD_MIN_WORDS = 50  # usable: strictly more words than this


def _replace_all(text: str, pairs) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def wikinews_main_text(text: str) -> str:
    """The ACD code's WikiNews main text: the longest ``':'``-separated segment, stripped (ties: the later one)."""
    return sorted(text.split(":"), key=len)[-1].strip()


def acd_usable_text(rules: str | None, raw: str | None) -> str | None:
    """The ACD code's filter and preprocessing for one row: the text to prompt from, or None when unusable."""
    if raw is None:
        return None
    if rules == "wikinews":
        main = wikinews_main_text(raw)
        if len(main.split()) <= ACD_MIN_WORDS:
            return None
        return main.replace(ACD_WIKINEWS_BOILERPLATE, "")
    if len(raw.split()) <= ACD_MIN_WORDS:
        return None
    if rules == "wikitext":
        return _replace_all(raw, ACD_WIKITEXT_REPLACEMENTS)
    if rules == "bookcorpus":
        return _replace_all(raw, ACD_BOOKCORPUS_REPLACEMENTS)
    return raw  # another corpus: the filter only


# ------------------------------------------------------------------------------ reading rows


class Rows:
    """The rows of one corpus (one or more splits): length, text by index, stable id by index.

    Backed by a memory-mapped ``datasets.Dataset``; :meth:`scan` reads the text column in Arrow
    batches and yields only rows passing a cheap length test, so Python sees few strings.
    """

    def __init__(self, name: str, parts: list[tuple[str, object]], entry: CatalogEntry, source_info: dict):
        self.name = name
        self.parts = parts  # [(split, datasets.Dataset)]
        self.entry = entry
        self.source_info = source_info
        self.offsets = np.cumsum([0] + [len(ds) for _, ds in parts])
        for split, ds in parts:
            if entry.text_field not in ds.column_names:
                raise ValueError(f"dataset {name!r} split {split!r}: missing text field {entry.text_field!r}; "
                                 f"fields present: {ds.column_names}")
            if entry.id_field is not None and entry.id_field not in ds.column_names:
                raise ValueError(f"dataset {name!r} split {split!r}: missing id field {entry.id_field!r}; "
                                 f"fields present: {ds.column_names}")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return part, index - int(self.offsets[part])

    def text(self, index: int) -> str | None:
        part, row = self._locate(index)
        return self.parts[part][1][row][self.entry.text_field]

    def texts(self, start: int, stop: int) -> list[str | None]:
        return [self.text(i) for i in range(start, stop)]

    def row_id(self, index: int) -> str:
        part, row = self._locate(index)
        split, ds = self.parts[part]
        if self.entry.id_field is not None:
            return str(ds[row][self.entry.id_field])
        return f"{self.name}/{split}/{row}"

    def scan(self, min_chars: int = 0, batch_size: int = 65_536) -> Iterator[tuple[int, str | None]]:
        """``(index, text)`` of every row in order whose text has at least ``min_chars`` characters."""
        import pyarrow.compute as pc

        for part, (_split, ds) in enumerate(self.parts):
            base = int(self.offsets[part])
            arrow = ds.select_columns([self.entry.text_field]).with_format("arrow")
            start = 0
            for batch in arrow.iter(batch_size=batch_size):
                column = batch.column(self.entry.text_field)
                if min_chars > 0:
                    keep = pc.fill_null(pc.greater_equal(pc.utf8_length(column), min_chars), False)
                    where = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
                    values = pc.take(column, where).to_pylist() if len(where) else []
                else:
                    where = np.arange(len(column))
                    values = column.to_pylist()
                for offset, value in zip(where, values):
                    yield base + start + int(offset), value
                start += len(column)


def _load_hub_split(entry: CatalogEntry, split: str, cache_dir: str | None):
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("reading Hub datasets needs `pip install multiexit[eval]` (datasets)") from err
    kwargs = {"split": split}
    if entry.revision:
        kwargs["revision"] = entry.revision
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    return datasets.load_dataset(entry.path, entry.hub_config, **kwargs)


def _local_records(request: PromptSetSettings, entry: CatalogEntry) -> tuple[list[str], list[str]]:
    """(ids, texts) of a small local file (jsonl, text blocks, one document per line)."""
    path = Path(entry.path)
    if not path.is_file():
        raise ValueError(f"dataset {request.name!r}: file not found: {path}")
    prefix = path.name if request.name == "local" else request.name
    ids: list[str] = []
    texts: list[str] = []
    if entry.source == "jsonl":
        for number, row in iter_jsonl(path):
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            if entry.text_field not in row:
                raise ValueError(f"{path}:{number}: missing text field {entry.text_field!r}; fields present: {sorted(row)}")
            if not isinstance(row[entry.text_field], str):
                raise ValueError(f"{path}:{number}: text field {entry.text_field!r} is "
                                 f"{type(row[entry.text_field]).__name__}, not a string")
            if entry.id_field is not None and entry.id_field not in row:
                raise ValueError(f"{path}:{number}: missing id field {entry.id_field!r}; fields present: {sorted(row)}")
            ids.append(str(row[entry.id_field]) if entry.id_field else f"{prefix}/{number}")
            texts.append(row[entry.text_field])
    elif entry.source == "lines":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            ids.append(f"{prefix}/{number}")
            texts.append(line)
    elif entry.source == "text":
        for index, block in enumerate(re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8"))):
            ids.append(f"{prefix}/{index}")
            texts.append(block)
    else:
        raise ValueError(f"dataset: format {entry.source!r} is not a local text format")
    return ids, texts


def open_rows(request: PromptSetSettings, cache_dir: str | None = None) -> Rows:
    """The rows of the requested corpus: Hub (or a local copy of a Hub repository), parquet, or a small local file."""
    import datasets

    entry = request.entry()
    name = request.catalog_name()
    splits = entry.split.split("+")
    if entry.source == "hub":
        parts = [(split, _load_hub_split(entry, split, cache_dir)) for split in splits]
        info = {"path": entry.path, "config": entry.hub_config, "splits": splits, "revision": entry.revision,
                "fingerprints": [ds._fingerprint for _, ds in parts]}
        return Rows(name, parts, entry, info)
    if entry.source == "parquet":
        path = Path(entry.path)
        files = sorted(str(p) for p in path.glob("*.parquet")) if path.is_dir() else [str(path)]
        if not files or not all(Path(f).is_file() for f in files):
            raise ValueError(f"dataset {request.name!r}: no parquet file at {path}")
        kwargs = {"cache_dir": cache_dir} if cache_dir else {}
        ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train", **kwargs)
        prefix = path.name if request.name == "local" else name
        return Rows(prefix, [(entry.split, ds)], entry, {"path": str(path), "splits": [entry.split], "fingerprints": [ds._fingerprint]})
    ids, texts = _local_records(request, entry)
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset {request.name!r}: document ids are not unique (id field {entry.id_field!r})")
    ds = datasets.Dataset.from_dict({"id": ids, entry.text_field: texts})
    local = CatalogEntry(**{**entry.__dict__, "id_field": "id"})
    return Rows(name, [(entry.split, ds)], local, {"path": str(entry.path), "splits": [entry.split]})


# ------------------------------------------------------------------------------ protocols


def special_prefix_ids(tokenizer) -> list[int]:
    """Special tokens the tokenizer puts before a text (e.g. Gemma's ``<bos>``); [] when none."""
    probe = "Hello world"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    if len(full) > len(plain) and full[len(full) - len(plain):] == plain:
        return list(full[: len(full) - len(plain)])
    if full[: len(plain)] == plain:
        return []
    raise ValueError("tokenizer adds special tokens in a way prompts cannot reproduce")


def _too_few(request: PromptSetSettings, stats: PromptStats, rule: str) -> ValueError:
    return ValueError(
        f"dataset {request.name!r} (protocol {request.protocol}): only {stats.usable} of {stats.rows} rows are usable "
        f"({rule}); num_prompts={request.num_prompts} requested"
    )


def acd_prompts(rows: Rows, tokenizer, request: PromptSetSettings) -> tuple[list[Prompt], PromptStats]:
    rules = rows.entry.rules
    stats = PromptStats(rows=len(rows))
    usable: list[int] = []
    # more than 50 words needs at least 51 non-space characters and 50 separators
    for index, raw in rows.scan(min_chars=2 * ACD_MIN_WORDS + 1):
        stats.scanned += 1
        if acd_usable_text(rules, raw) is not None:
            usable.append(index)
    stats.usable = len(usable)
    k = request.num_prompts
    if k is not None and k > len(usable) or not usable:
        raise _too_few(request, stats, f"more than {ACD_MIN_WORDS} words")
    chosen = usable if k is None or k == len(usable) else [usable[i] for i in random.Random(request.seed).sample(range(len(usable)), k)]
    prefix = special_prefix_ids(tokenizer)
    prompts = []
    for index in chosen:
        words = acd_usable_text(rules, rows.text(index)).split()
        prompt = " ".join(words[: request.prompt_tokens])
        ids = prefix + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        prompts.append(Prompt(rows.row_id(index), prompt, " ".join(words[request.prompt_tokens:]), tuple(ids)))
    stats.selected = len(prompts)
    return prompts, stats


CD_WIKITEXT_MIN_TOKENS = 160  # run_generation.py: len(x) >= 160 (BOS included)
CD_FILE_MIN_TOKENS = 150  # run_generation.py load_prompts_simple: len(ids) < 150 skipped


def cd_prompts(rows: Rows, tokenizer, request: PromptSetSettings) -> tuple[list[Prompt], PromptStats]:
    stats = PromptStats(rows=len(rows))
    wikitext = rows.entry.rules == "wikitext"
    bos = tokenizer.bos_token
    if wikitext and bos is None:
        raise ValueError(f"dataset {request.name!r} (protocol cd): the tokenizer has no BOS token to prefix lines with")
    need = CD_WIKITEXT_MIN_TOKENS if wikitext else CD_FILE_MIN_TOKENS
    k = request.num_prompts
    prompts: list[Prompt] = []
    for index, raw in rows.scan():
        stats.scanned += 1
        if raw is None:
            continue
        if wikitext:
            text = raw.replace(" <newline>", "\n")
            if not text:
                continue
            ids = tokenizer(bos + text, add_special_tokens=False)["input_ids"]
        else:
            text = raw.encode("ascii", "ignore").decode()
            ids = tokenizer(text)["input_ids"]
        if len(ids) < need:
            continue
        stats.usable += 1
        cut = ids[: request.prompt_tokens]
        prompts.append(Prompt(rows.row_id(index), tokenizer.decode(cut, skip_special_tokens=True),
                              tokenizer.decode(ids[request.prompt_tokens:]), tuple(cut)))
        if k is not None and len(prompts) == k:
            break
    if k is not None and len(prompts) < k or not prompts:
        raise _too_few(request, stats, f"at least {need} tokens")
    stats.selected = len(prompts)
    return prompts, stats


def tokens_prompts(rows: Rows, tokenizer, request: PromptSetSettings) -> tuple[list[Prompt], PromptStats]:
    entry = rows.entry
    group = entry.rows_per_document
    n_docs = -(-len(rows) // group)
    stats = PromptStats(rows=n_docs)
    need = request.prompt_tokens + request.min_reference_tokens
    order = np.random.default_rng(request.seed).permutation(n_docs)
    prefix = special_prefix_ids(tokenizer)
    prompts: list[Prompt] = []
    for doc in order:
        start = int(doc) * group
        stop = min(start + group, len(rows))
        parts = [t.strip() for t in rows.texts(start, stop) if t]
        text = " ".join(parts) if group > 1 else (parts[0] if parts else "")
        if entry.detokenize == "wikitext":
            text = wikitext_detokenize(text)
        text = text.strip()
        stats.scanned += 1
        if not text:
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < need:
            continue
        stats.usable += 1
        cut = ids[: request.prompt_tokens]
        end = None if request.max_reference_tokens is None else request.prompt_tokens + request.max_reference_tokens
        doc_id = rows.row_id(start) if group == 1 else f"{rows.name}/{rows.parts[0][0]}/doc{int(doc)}"
        prompts.append(Prompt(doc_id, tokenizer.decode(cut), tokenizer.decode(ids[request.prompt_tokens:end]), tuple(prefix + list(cut))))
        if request.num_prompts is not None and len(prompts) == request.num_prompts:
            break
    if request.num_prompts is not None and len(prompts) < request.num_prompts or not prompts:
        raise _too_few(request, stats, f"at least {request.prompt_tokens} prompt + {request.min_reference_tokens} reference tokens")
    stats.selected = len(prompts)
    return prompts, stats


PROTOCOL_BUILDERS: dict[str, Callable] = {"acd": acd_prompts, "cd": cd_prompts, "tokens": tokens_prompts}


def build_prompt_set(request: PromptSetSettings | dict, tokenizer, cache_dir: str | None = None) -> tuple[list[Prompt], PromptStats, dict]:
    """Read the corpus and build the prompt set for ``tokenizer``: (prompts, counts, source description)."""
    if isinstance(request, dict):
        request = PromptSetSettings.from_dict(request, "dataset")
    rows = open_rows(request, cache_dir)
    prompts, stats = PROTOCOL_BUILDERS[request.protocol](rows, tokenizer, request)
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset {request.name!r}: prompt ids are not unique (id field {rows.entry.id_field!r})")
    return prompts, stats, rows.source_info


def load_prompts(request: PromptSetSettings | dict, tokenizer, cache_dir: str | None = None) -> list[Prompt]:
    """The prompt set of ``request`` for ``tokenizer`` (the generating model's)."""
    return build_prompt_set(request, tokenizer, cache_dir)[0]


def describe_catalog() -> str:
    lines = []
    for name, entry in sorted(CATALOG.items()):
        where = f"{entry.path} [{entry.hub_config or '-'}:{entry.split}]" if entry.source == "hub" else entry.source
        lines.append(f"{name}: {entry.description} ({where})")
    lines.append("protocols: " + "; ".join(f"{p.name} ({p.source})" for p in PROTOCOLS.values()))
    return "\n".join(lines)


def describe_protocols() -> str:
    return "\n".join(f"{p.name}: {p.description}; {p.new_tokens} new tokens; source: {p.source}" for p in PROTOCOLS.values())


__all__ = [
    "ALIASES",
    "CATALOG",
    "CatalogEntry",
    "ConfigError",
    "PromptSetSettings",
    "LEE_NAME",
    "PROTOCOLS",
    "Prompt",
    "PromptStats",
    "Rows",
    "acd_usable_text",
    "build_prompt_set",
    "describe_catalog",
    "describe_protocols",
    "load_prompts",
    "open_rows",
    "special_prefix_ids",
    "wikinews_main_text",
    "wikitext_detokenize",
]
