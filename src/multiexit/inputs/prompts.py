"""Prompt sets for open-ended generation: a dataset catalog, detokenisation, prompt/reference construction.

A prompt set is built from a :class:`DatasetRequest` (a catalog name or a local file plus the
prompt protocol) and the *generating model's* tokenizer:

* documents are read from the Hub (``datasets.load_dataset``), a local JSONL file (one object per
  line with a text field), a local text file (one document per blank-line-separated block), or a
  one-document-per-line file (gensim's ``lee_background.cor`` news articles, the offline demo);
* wikitext tokenisation artefacts are undone (``@-@``, ``@,@``, ``@.@``, spaces before punctuation);
* the prompt is the first ``prompt_tokens`` tokens of a document (default 32) and the reference is
  the human continuation right after it; only documents whose continuation reaches
  ``min_reference_tokens`` (default 128, the MAUVE length) are usable;
* ``num_prompts`` usable documents are drawn in the order of a seeded permutation, so the same
  seed, corpus and tokenizer always give the same prompts, each keeping its document id.

Too few usable documents, a missing text field or an unknown option is a ``ValueError`` raised
before any model work, never a silently shorter run.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

import numpy as np

from multiexit.settings import Settings


@dataclass(frozen=True)
class CatalogEntry:
    """How to read one named corpus."""

    source: str  # "hub" | "jsonl" | "text" | "lines"
    path: str | None = None  # Hub dataset name or local file (None: resolved at load time)
    hub_config: str | None = None
    split: str = "train"
    text_field: str = "text"
    id_field: str | None = None
    detokenize: str | None = None  # "wikitext" or None
    group: str | None = None  # "wikitext_articles" | "rows:<k>" (k consecutive rows per document) | None
    description: str = ""


def _gensim_lee_path() -> str:
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    if not path.is_file():
        raise FileNotFoundError(f"gensim's lee_background.cor not found at {path}; install gensim")
    return str(path)


CATALOG: dict[str, CatalogEntry] = {
    "wikitext-103": CatalogEntry(
        "hub", "wikitext", "wikitext-103-raw-v1", "validation", "text", None, "wikitext", "wikitext_articles",
        "WikiText-103 (raw) validation articles; lines grouped into articles at ' = Title = ' headings",
    ),
    "wikinews": CatalogEntry(
        "hub", "izumi-lab/wikinews-en-20230728", None, "train", "text", None, None, None,
        "English Wikinews dump (2023-07-28)",
    ),
    "bookcorpus": CatalogEntry(
        "hub", "bookcorpus/bookcorpus", None, "train", "text", None, None, "rows:20",
        "BookCorpus; the Hub copy has one sentence per row, so 20 consecutive rows form one document",
    ),
    "cc-news": CatalogEntry(
        "hub", "vblagoje/cc_news", None, "train", "text", None, None, None, "CC-News articles",
    ),
    "gensim-lee": CatalogEntry(
        "lines", None, None, "train", "text", None, None, None,
        "gensim's lee_background.cor: ~300 Australian news articles, one per line (offline demo)",
    ),
    "local": CatalogEntry(
        "auto", None, None, "train", "text", None, None, None,
        "a local file: .jsonl (one JSON object per line) or plain text (documents separated by blank lines)",
    ),
}


@dataclass(frozen=True)
class DatasetRequest(Settings):
    """Which documents to read and how to turn them into prompts (all JSON-serialisable).

    ``name`` is a :data:`CATALOG` key; any other field overrides the catalog entry
    (``path`` is required for ``local``). ``num_prompts=None`` takes every usable document.
    """

    name: str
    path: str | None = None
    format: str | None = None  # jsonl | text | lines | hub (default: the catalog's, or by file suffix for local)
    hub_config: str | None = None
    split: str | None = None
    text_field: str | None = None
    id_field: str | None = None
    detokenize: str | None = None  # "wikitext" | "none"
    num_prompts: int | None = 64
    prompt_tokens: int = 32
    min_reference_tokens: int = 128
    max_reference_tokens: int | None = 256
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict, key: str = "") -> "DatasetRequest":
        """Validated request; a ConfigError (a ValueError) naming ``key`` and the bad field."""
        try:
            return cls._from_dict(data)
        except (TypeError, ValueError) as err:
            raise cls.error_for(str(err), key, data) from None

    @classmethod
    def _from_dict(cls, data: dict) -> "DatasetRequest":
        if not isinstance(data, dict):
            raise ValueError(f"dataset: expected a JSON object, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"dataset: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
        if "name" not in data:
            raise ValueError(f"dataset: missing key 'name'; catalog: {', '.join(sorted(CATALOG))}")
        request = cls(**data)
        request.validate()
        return request

    @classmethod
    def from_json(cls, text: str) -> "DatasetRequest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"dataset: not valid JSON ({err}): {text!r}") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        if self.name not in CATALOG:
            raise ValueError(f"dataset: unknown name {self.name!r}; catalog: {', '.join(sorted(CATALOG))}")
        if self.name == "local" and not self.path:
            raise ValueError("dataset 'local': key 'path' is required (a .jsonl or text file)")
        if self.format is not None and self.format not in ("jsonl", "text", "lines", "hub"):
            raise ValueError(f"dataset: format must be one of jsonl, text, lines, hub; got {self.format!r}")
        if self.detokenize is not None and self.detokenize not in ("wikitext", "none"):
            raise ValueError(f"dataset: detokenize must be 'wikitext' or 'none', got {self.detokenize!r}")
        for key in ("prompt_tokens", "min_reference_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"dataset: {key} must be a positive integer, got {value!r}")
        for key in ("num_prompts", "max_reference_tokens"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"dataset: {key} must be a positive integer or null, got {value!r}")
        if self.max_reference_tokens is not None and self.max_reference_tokens < self.min_reference_tokens:
            raise ValueError(
                f"dataset: max_reference_tokens ({self.max_reference_tokens}) < min_reference_tokens ({self.min_reference_tokens})"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"dataset: seed must be an integer, got {self.seed!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def entry(self) -> CatalogEntry:
        """The catalog entry with this request's overrides applied."""
        base = CATALOG[self.name]
        source = self.format or base.source
        path = self.path or base.path
        if self.name == "gensim-lee" and path is None:
            path = _gensim_lee_path()
        if source == "auto":
            source = "jsonl" if str(path).endswith((".jsonl", ".json")) else "text"
        detok = base.detokenize if self.detokenize is None else (None if self.detokenize == "none" else self.detokenize)
        return CatalogEntry(
            source=source,
            path=path,
            hub_config=self.hub_config if self.hub_config is not None else base.hub_config,
            split=self.split or base.split,
            text_field=self.text_field or base.text_field,
            id_field=self.id_field if self.id_field is not None else base.id_field,
            detokenize=detok,
            group=base.group,
            description=base.description,
        )


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class Prompt:
    """One prompt: its document id, prompt text and token ids, and the human continuation."""

    id: str
    prompt: str
    reference: str
    prompt_ids: tuple[int, ...] = field(repr=False)


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
    """Undo WikiText's tokenisation: ``' @-@ '`` -> ``'-'``, ``' @,@ '`` -> ``','``, ``' @.@ '`` -> ``'.'``,
    no space before punctuation / clitics, and ``" quoted "`` -> ``"quoted"``."""
    text = _QUOTED.sub(r'"\1"', text)
    for pattern, replacement in _WIKITEXT_RULES:
        text = pattern.sub(replacement, text)
    return text.strip()


_WIKITEXT_TITLE = re.compile(r"^ ?= [^=].* = ?$")
_WIKITEXT_HEADING = re.compile(r"^ ?=( =)+ .* =( =)+ ?$")


def group_wikitext_articles(lines: list[str]) -> Iterator[tuple[int, str, str]]:
    """Yield ``(article_index, title, body)`` from WikiText's line stream.

    An article starts at a ``' = Title = '`` line; section headings (``' = = Section = = '``) are
    dropped and paragraphs joined by newlines.
    """
    title, body, index = None, [], -1
    for line in lines:
        stripped = line.rstrip("\n")
        if _WIKITEXT_TITLE.match(stripped) and not _WIKITEXT_HEADING.match(stripped):
            if title is not None and body:
                yield index, title, "\n".join(body)
            title, body, index = stripped.strip(" =").strip(), [], index + 1
        elif _WIKITEXT_HEADING.match(stripped) or not stripped.strip():
            continue
        else:
            if title is None:
                title, index = "", index + 1
            body.append(stripped.strip())
    if title is not None and body:
        yield index, title, "\n".join(body)


# ------------------------------------------------------------------------------ reading documents


def _rows_from_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _text_of(row: dict, entry: CatalogEntry, where: str) -> str:
    if entry.text_field not in row:
        raise ValueError(f"{where}: missing text field {entry.text_field!r}; fields present: {sorted(row)}")
    value = row[entry.text_field]
    if not isinstance(value, str):
        raise ValueError(f"{where}: text field {entry.text_field!r} is {type(value).__name__}, not a string")
    return value


def _id_of(row: dict, entry: CatalogEntry, fallback: str, where: str) -> str:
    if entry.id_field is None:
        return fallback
    if entry.id_field not in row:
        raise ValueError(f"{where}: missing id field {entry.id_field!r}; fields present: {sorted(row)}")
    return str(row[entry.id_field])


def _load_hub(entry: CatalogEntry):
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("reading Hub datasets needs `pip install multiexit[eval]` (datasets)") from err
    return datasets.load_dataset(entry.path, entry.hub_config, split=entry.split)


def read_documents(request: DatasetRequest) -> list[Document]:
    """All documents of the requested corpus (detokenised, empty ones dropped), each with a stable id."""
    entry = request.entry()
    prefix = request.name if request.name != "local" else Path(entry.path).name
    docs: list[Document] = []
    if entry.source == "hub":
        table = _load_hub(entry)
        if entry.text_field not in table.column_names:
            raise ValueError(
                f"dataset {entry.path!r}: missing text field {entry.text_field!r}; fields present: {table.column_names}"
            )
        if entry.group == "wikitext_articles":
            for index, _title, body in group_wikitext_articles(table[entry.text_field]):
                docs.append(Document(f"{prefix}/{entry.split}/{index}", body))
        elif entry.group and entry.group.startswith("rows:"):
            size = int(entry.group.split(":", 1)[1])
            texts = table[entry.text_field]
            for start in range(0, len(texts), size):
                docs.append(Document(f"{prefix}/{entry.split}/{start // size}", " ".join(t.strip() for t in texts[start:start + size])))
        else:
            for index, row in enumerate(table):
                where = f"dataset {entry.path!r} row {index}"
                docs.append(Document(_id_of(row, entry, f"{prefix}/{entry.split}/{index}", where), _text_of(row, entry, where)))
    else:
        path = Path(entry.path)
        if not path.is_file():
            raise ValueError(f"dataset {request.name!r}: file not found: {path}")
        if entry.source == "jsonl":
            for number, row in _rows_from_jsonl(path):
                where = f"{path}:{number}"
                docs.append(Document(_id_of(row, entry, f"{prefix}/{number}", where), _text_of(row, entry, where)))
        elif entry.source == "lines":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                docs.append(Document(f"{prefix}/{number}", line))
        elif entry.source == "text":
            blocks = re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8"))
            docs.extend(Document(f"{prefix}/{index}", block) for index, block in enumerate(blocks))
        else:
            raise ValueError(f"dataset: format {entry.source!r} needs a Hub dataset name in 'path'")
    if entry.detokenize == "wikitext":
        docs = [Document(d.id, wikitext_detokenize(d.text)) for d in docs]
    docs = [Document(d.id, d.text.strip()) for d in docs if d.text.strip()]
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset {request.name!r}: document ids are not unique (id field {entry.id_field!r})")
    return docs


# ------------------------------------------------------------------------------ prompts


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


def build_prompts(documents: list[Document], tokenizer, request: DatasetRequest) -> list[Prompt]:
    """Draw ``request.num_prompts`` usable documents in seeded order and cut them into prompt + reference."""
    need = request.prompt_tokens + request.min_reference_tokens
    order = np.random.default_rng(request.seed).permutation(len(documents))
    prefix = special_prefix_ids(tokenizer)
    prompts: list[Prompt] = []
    for index in order:
        doc = documents[int(index)]
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) < need:
            continue
        cut = ids[: request.prompt_tokens]
        end = None if request.max_reference_tokens is None else request.prompt_tokens + request.max_reference_tokens
        prompts.append(
            Prompt(
                id=doc.id,
                prompt=tokenizer.decode(cut),
                reference=tokenizer.decode(ids[request.prompt_tokens:end]),
                prompt_ids=tuple(prefix + list(cut)),
            )
        )
        if request.num_prompts is not None and len(prompts) == request.num_prompts:
            break
    if request.num_prompts is not None and len(prompts) < request.num_prompts:
        raise ValueError(
            f"dataset {request.name!r}: only {len(prompts)} of {len(documents)} documents have at least "
            f"{request.prompt_tokens} prompt + {request.min_reference_tokens} reference tokens; "
            f"{request.num_prompts} requested"
        )
    if not prompts:
        raise ValueError(f"dataset {request.name!r}: no document has {need} tokens")
    return prompts


def load_prompts(request: DatasetRequest | dict, tokenizer) -> list[Prompt]:
    """Read the corpus and build the prompt set for ``tokenizer`` (the generating model's)."""
    if isinstance(request, dict):
        request = DatasetRequest.from_dict(request)
    request.validate()
    return build_prompts(read_documents(request), tokenizer, request)


def describe_catalog() -> str:
    lines = []
    for name, entry in sorted(CATALOG.items()):
        where = f"{entry.path} [{entry.hub_config or '-'}:{entry.split}]" if entry.source == "hub" else entry.source
        lines.append(f"{name}: {entry.description} ({where})")
    return "\n".join(lines)


__all__ = [
    "CATALOG",
    "CatalogEntry",
    "DatasetRequest",
    "Document",
    "Prompt",
    "build_prompts",
    "describe_catalog",
    "group_wikitext_articles",
    "load_prompts",
    "read_documents",
    "special_prefix_ids",
    "wikitext_detokenize",
]
