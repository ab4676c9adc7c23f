"""Training text for exit heads and cast matrices: corpora -> fixed-length token chunks.

A corpus is named by a short spec string:

* ``cc100`` or ``cc100:<lang>`` -- CC-100 (the paper's training data), streamed from its
  original release (``https://data.statmt.org/cc-100/<lang>.txt.xz``) through the
  ``datasets`` "text" builder; documents are separated by blank lines.
* ``wikitext-103`` (also ``wikitext-2``) -- ``Salesforce/wikitext`` raw, streamed from the Hub;
  an article starts at each top-level `` = Title = `` line.
* ``hub:<dataset>[:<config>][@<split>][#<field>]`` -- any streamed Hub dataset with a text field.
* ``lee_background`` (older spelling ``lee``) -- the English news articles shipped with gensim (one per line);
  ``lee_test`` -- gensim's 50 held-out Lee articles.
* a local file or folder: ``.txt``/``.cor`` (documents separated by blank lines; a file without
  blank lines holds one document per line), ``.jsonl`` (a ``text`` field per line), a folder =
  all such files in sorted order. Several specs can be joined with ``+``.

Documents are shuffled with the seed where the whole corpus is local (streams go through a seeded
shuffle buffer of documents), the first documents up to ``eval_tokens`` form the
held-out slice and the rest the training slice; each slice is concatenated (EOS between
documents, or nothing: ``separator="none"``) and cut into ``seq_len``-token chunks (the remainder
is dropped).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from multiexit._lazy import LazyModule
from multiexit.io import iter_jsonl

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")

CC100_URL = "https://data.statmt.org/cc-100/{lang}.txt.xz"
LOCAL_SUFFIXES = (".txt", ".cor", ".jsonl", ".text")

# The one default of each training-text setting: the functions below and the stages' settings
# (DataSettings, FitCastSettings) take these.
DEFAULT_CORPUS = "lee_background"  # our choice: gensim ships it, so the default needs no download
SEPARATORS = ("eos", "none")  # between documents: the tokenizer's EOS, or nothing (the ACD authors' group_texts)
SEPARATOR = "eos"  # our choice
SHUFFLE_BUFFER = 10_000  # documents in the shuffle buffer of a streamed corpus: our choice
PROMPT_FIELD, TARGET_FIELD = "prompt", "target"  # the fields of a task-data JSONL line


def gensim_test_data() -> Path:
    """gensim's ``test/test_data`` folder (found without importing gensim): the one place the Lee corpus is located."""
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Lee corpus ships with gensim, which is not installed (pip install gensim)")
    return Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"


def lee_corpus_path(test: bool = False) -> Path:
    """gensim's Lee news corpus: ``lee_background.cor`` (~300 articles) or, with ``test``, ``lee.cor`` (50)."""
    path = gensim_test_data() / ("lee.cor" if test else "lee_background.cor")
    if not path.is_file():
        raise FileNotFoundError(f"the Lee corpus is not at {path}; reinstall gensim")
    return path


# Named local corpora: "lee_background" is the Lee corpus' one name ("lee" is an older spelling).
NAMED_LOCAL = {
    "lee_background": lambda: lee_corpus_path(),
    "lee": lambda: lee_corpus_path(),
    "lee_test": lambda: lee_corpus_path(test=True),
}


# ----------------------------------------------------------------------------------- documents
def _blocks(lines: Iterable[str]) -> Iterator[str]:
    """Blank-line separated blocks of ``lines`` (each block one document)."""
    block: list[str] = []
    for line in lines:
        line = line.rstrip("\n")
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def read_local_documents(path: str | Path) -> list[str]:
    """Documents of a local text file or folder (see the module docstring for the formats)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise ValueError(f"corpus: folder {path} holds no {'/'.join(LOCAL_SUFFIXES)} files")
        return [doc for f in files for doc in read_local_documents(f)]
    if not path.is_file():
        raise ValueError(f"corpus: no such file or folder {str(path)!r}")
    if path.suffix == ".jsonl":
        docs = []
        for number, record in iter_jsonl(path, errors="replace"):
            if "text" not in record:
                raise ValueError(f"corpus: {path}:{number} has no 'text' field")
            docs.append(str(record["text"]))
        return [d for d in docs if d.strip()]
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if any(not line.strip() for line in lines[:-1]):
        return list(_blocks(lines))
    return [line.strip() for line in lines if line.strip()]


def wikitext_articles(rows: Iterable[dict]) -> Iterator[str]:
    """WikiText's line stream (rows with a ``text`` field) grouped into articles, for training text.

    A new article starts at each top-level `` = Title = `` line; headings and paragraphs are kept
    as they are. (Prompt sets never group: their protocols work on single lines.)
    """
    article: list[str] = []
    for row in rows:
        line = row["text"]
        stripped = line.strip()
        is_title = stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= =")
        if is_title and article:
            yield "".join(article).strip()
            article = []
        article.append(line)
    if article and "".join(article).strip():
        yield "".join(article).strip()


def buffer_shuffle(items: Iterable[str], buffer_size: int, seed: int) -> Iterator[str]:
    """Seeded shuffle of a stream through a buffer of ``buffer_size`` items (as ``datasets`` does for rows)."""
    rng = random.Random(seed)
    buffer: list[str] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def stream_hub_documents(spec: str, seed: int = 0, shuffle_buffer: int = 0) -> Iterator[str]:
    """Documents of a streamed Hub corpus (``cc100[:lang]``, ``wikitext-103``, ``hub:...``).

    Documents are assembled first (blank-line blocks for CC-100, articles for wikitext) and then
    shuffled through a seeded buffer of ``shuffle_buffer`` documents (0: stream order).
    """
    from datasets import load_dataset

    name = spec
    if name.startswith("cc100"):
        lang = name.split(":", 1)[1] if ":" in name else "en"
        dataset = load_dataset("text", data_files={"train": CC100_URL.format(lang=lang)}, split="train", streaming=True)
        docs = _blocks(row["text"] for row in dataset)
    elif name in ("wikitext-103", "wikitext-2"):
        dataset = load_dataset("Salesforce/wikitext", f"{name}-raw-v1", split="train", streaming=True)
        docs = wikitext_articles(dataset)
    elif name.startswith("hub:"):
        rest = name[4:]
        field = "text"
        if "#" in rest:
            rest, field = rest.split("#", 1)
        split = "train"
        if "@" in rest:
            rest, split = rest.split("@", 1)
        dataset_name, _, config = rest.partition(":")
        dataset = load_dataset(dataset_name, config or None, split=split, streaming=True)
        docs = (str(row[field]) for row in dataset if str(row[field]).strip())
    else:
        raise ValueError(f"corpus: unknown Hub corpus {spec!r}")
    return buffer_shuffle(docs, shuffle_buffer, seed) if shuffle_buffer else docs


def is_hub_spec(spec: str) -> bool:
    return spec.startswith(("cc100", "hub:")) or spec in ("wikitext-103", "wikitext-2")


def validate_corpus_spec(spec: str) -> None:
    """Raise ValueError for a spec that names nothing (before any compute)."""
    if not spec or not spec.strip():
        raise ValueError("corpus: empty corpus spec")
    for part in spec.split("+"):
        part = part.strip()
        if is_hub_spec(part) or part in NAMED_LOCAL:
            continue
        if not Path(part).exists():
            raise ValueError(
                f"corpus: {part!r} is neither a known corpus (cc100[:lang], wikitext-103, wikitext-2, hub:<name>, "
                f"{', '.join(NAMED_LOCAL)}) nor an existing file or folder"
            )


def iter_documents(spec: str, seed: int = 0, shuffle_buffer: int = SHUFFLE_BUFFER) -> Iterator[str]:
    """All documents named by ``spec`` (parts joined with '+'), local ones shuffled with ``seed``."""
    validate_corpus_spec(spec)
    for part in spec.split("+"):
        part = part.strip()
        if is_hub_spec(part):
            yield from stream_hub_documents(part, seed=seed, shuffle_buffer=shuffle_buffer)
            continue
        path = NAMED_LOCAL[part]() if part in NAMED_LOCAL else Path(part)
        docs = read_local_documents(path)
        random.Random(seed).shuffle(docs)
        yield from docs


# ----------------------------------------------------------------------------------- chunks
@dataclass
class TokenChunks:
    """Training and held-out chunks, each a LongTensor (n_chunks, seq_len)."""

    train: torch.Tensor
    heldout: torch.Tensor
    seq_len: int
    documents: int
    spec: str

    def summary(self) -> dict:
        return {
            "corpus": self.spec,
            "seq_len": self.seq_len,
            "documents": self.documents,
            "train_chunks": int(self.train.shape[0]),
            "train_tokens": int(self.train.numel()),
            "heldout_chunks": int(self.heldout.shape[0]),
            "heldout_tokens": int(self.heldout.numel()),
        }


def _chunk(ids: list[int], seq_len: int) -> torch.Tensor:
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def load_token_chunks(
    spec: str,
    tokenizer,
    seq_len: int,
    train_tokens: int | None = None,
    eval_tokens: int = 0,
    seed: int = 0,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    separator: str = SEPARATOR,
) -> TokenChunks:
    """Tokenise ``spec`` into held-out and training chunks of ``seq_len`` tokens.

    ``separator`` is what goes between documents: ``"eos"`` (the tokenizer's EOS, our default) or
    ``"none"`` (token ids concatenated directly, as the ACD authors' ``head_training_utils.group_texts``
    does with GPT-2's tokenizer, which adds no EOS).

    ``train_tokens=None`` reads the whole corpus (only allowed for local corpora); otherwise reading
    stops once that many training tokens (rounded up to whole chunks) are collected.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len: need at least 2 tokens per chunk, got {seq_len}")
    if eval_tokens < 0:
        raise ValueError(f"eval_tokens: must be >= 0, got {eval_tokens}")
    if train_tokens is not None and train_tokens < seq_len:
        raise ValueError(f"train_tokens: {train_tokens} is less than one chunk of seq_len={seq_len}")
    validate_corpus_spec(spec)
    if train_tokens is None and any(is_hub_spec(p.strip()) for p in spec.split("+")):
        raise ValueError(f"train_tokens: a token budget is required for streamed corpus {spec!r}")
    if separator not in SEPARATORS:
        raise ValueError(f"separator: must be {' or '.join(map(repr, SEPARATORS))}, got {separator!r}")
    eos = tokenizer.eos_token_id
    if eos is None and separator == "eos":
        raise ValueError("tokenizer: has no eos_token_id (needed to separate documents; or use separator 'none')")
    tail = [eos] if separator == "eos" else []
    eval_ids: list[int] = []
    train_ids: list[int] = []
    eval_target = -(-eval_tokens // seq_len) * seq_len if eval_tokens else 0
    train_target = None if train_tokens is None else -(-train_tokens // seq_len) * seq_len
    documents = 0
    for doc in iter_documents(spec, seed=seed, shuffle_buffer=shuffle_buffer):
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"] + tail
        documents += 1
        if len(eval_ids) < eval_target:
            eval_ids.extend(ids)
            continue
        train_ids.extend(ids)
        if train_target is not None and len(train_ids) >= train_target:
            break
    train = _chunk(train_ids if train_target is None else train_ids[:train_target], seq_len)
    heldout = _chunk(eval_ids[:eval_target], seq_len)
    if train.shape[0] == 0:
        raise ValueError(f"corpus {spec!r}: not enough text for one training chunk of {seq_len} tokens")
    if eval_tokens and heldout.shape[0] * seq_len < eval_target:
        raise ValueError(f"corpus {spec!r}: not enough text for {eval_tokens} held-out tokens")
    return TokenChunks(train=train, heldout=heldout, seq_len=seq_len, documents=documents, spec=spec)


# ----------------------------------------------------------------------------------- task data
def read_task_examples(path: str | Path, prompt_field: str = PROMPT_FIELD, target_field: str = TARGET_FIELD) -> list[dict]:
    """prompt -> target pairs from a JSONL file (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task_data: no such file {str(path)!r}")
    examples = []
    for number, record in iter_jsonl(path):
        missing = [f for f in (prompt_field, target_field) if f not in record]
        if missing:
            raise ValueError(f"task_data: {path}:{number} lacks field(s) {missing}")
        examples.append({"prompt": str(record[prompt_field]), "target": str(record[target_field])})
    if not examples:
        raise ValueError(f"task_data: {path} holds no examples")
    return examples


def encode_task_examples(examples: list[dict], tokenizer, max_len: int, append_eos: bool = True) -> list[dict]:
    """Token ids and labels (-100 on prompt tokens) of each example, truncated from the left to ``max_len``."""
    encoded = []
    for example in examples:
        prompt = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
        target = tokenizer(example["target"], add_special_tokens=False)["input_ids"]
        if append_eos and tokenizer.eos_token_id is not None:
            target = target + [tokenizer.eos_token_id]
        if not target:
            raise ValueError(f"task_data: empty target for prompt {example['prompt'][:60]!r}")
        ids = (prompt + target)[-max_len:]
        labels = ([-100] * len(prompt) + target)[-max_len:]
        encoded.append({"input_ids": ids, "labels": labels})
    return encoded


def collate_task(batch: list[dict], pad_token_id: int) -> dict:
    """Right-pad a list of encoded task examples; padding is masked out of attention and loss."""
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[row, :n] = torch.tensor(item["input_ids"])
        labels[row, :n] = torch.tensor(item["labels"])
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def collate_chunks(batch: list[torch.Tensor]) -> dict:
    input_ids = torch.stack(list(batch))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
