"""The prompt-set stage: one job per (dataset, tokenizer) writes the prompt set once; generation reads it.

``<results>/prompts/<dataset>/<model>.jsonl`` holds one row per prompt::

    {"id": "wikitext-103/validation/1234", "prompt": "...", "reference": "...", "prompt_ids": [50256, ...]}

and ``<model>.meta.json`` beside it records the request, the protocol (name, source file, new
tokens), the tokenizer, the source (Hub id, config, splits, revision, Arrow fingerprints) and the
counts (rows, rows scanned, usable rows, prompts). The sidecar is written first and the JSONL last,
each atomically, so a file that exists is complete; :func:`read_prompt_set` also checks the row
count against the sidecar.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from multiexit.inputs.prompts import PROTOCOLS, PromptSetSettings, Prompt, build_prompt_set
from multiexit.io import atomic_open, atomic_write_text, iter_jsonl


def meta_path(output: str | Path) -> Path:
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.meta.json")


def _tokenizer_info(tokenizer) -> dict:
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", "")), "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer), "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}


def load_tokenizer(source: str):
    """The tokenizer of a model folder, Hub name or ``package:<name>``."""
    from transformers import AutoTokenizer

    from multiexit.inputs.models import resolve_model_source

    return AutoTokenizer.from_pretrained(resolve_model_source(source))


def prepare_prompt_set(request: PromptSetSettings | dict, tokenizer, output: str | Path, cache_dir: str | None = None) -> dict:
    """Build the prompt set of ``request`` with ``tokenizer`` and write ``output`` (+ sidecar); returns the sidecar."""
    output = Path(output)
    if not output.name.endswith(".jsonl"):
        raise ValueError(f"output must end in .jsonl, got {output}")
    if isinstance(request, dict):
        request = PromptSetSettings.from_dict(request, "dataset")
    started = time.perf_counter()
    prompts, stats, source = build_prompt_set(request, tokenizer, cache_dir)
    protocol = PROTOCOLS[request.protocol]
    meta = {
        "kind": "prompt_set",
        "request": request.as_dict(),
        "protocol": {"name": protocol.name, "unit": protocol.unit, "new_tokens": protocol.new_tokens,
                     "source": protocol.source, "description": protocol.description},
        "tokenizer": _tokenizer_info(tokenizer),
        "source": source,
        "counts": stats.as_dict(),
        "n_prompts": len(prompts),
        "seconds": round(time.perf_counter() - started, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(meta_path(output), json.dumps(meta, indent=2) + "\n")
    with atomic_open(output) as handle:
        for prompt in prompts:
            handle.write(json.dumps(prompt.as_dict(), ensure_ascii=False) + "\n")
    return meta


def read_prompt_set(path: str | Path) -> list[Prompt]:
    """The prompts of a prompt-set file; an error when the sidecar is missing or the counts disagree."""
    path = Path(path)
    side = meta_path(path)
    if not path.is_file() or not side.is_file():
        raise ValueError(f"prompt set {path} or its sidecar {side} is missing; run the prompt-set job (scripts/prepare_prompts.py)")
    expected = json.loads(side.read_text(encoding="utf-8"))["n_prompts"]
    prompts = []
    for number, row in iter_jsonl(path):
        try:
            prompts.append(Prompt(str(row["id"]), row["prompt"], row["reference"], tuple(int(i) for i in row["prompt_ids"])))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{number}: not a prompt-set row ({err})") from None
    if len(prompts) != expected:
        raise ValueError(f"prompt set {path}: {len(prompts)} rows but its sidecar records {expected}")
    return prompts


def prompt_set_identity(path: str | Path) -> dict:
    """What identifies a prompt-set file for a generation run's fingerprint: its sidecar's request, protocol,
    source and counts, the tokenizer (its folder left out) and the file's SHA-256 (no paths, times or durations)."""
    import hashlib

    path = Path(path)
    side = meta_path(path)
    if not path.is_file() or not side.is_file():
        raise ValueError(f"prompt set {path} or its sidecar {side} is missing; run the prompt-set job (scripts/prepare_prompts.py)")
    meta = json.loads(side.read_text(encoding="utf-8"))
    tokenizer = {k: v for k, v in meta["tokenizer"].items() if k != "name_or_path"}
    return {"request": meta["request"], "protocol": meta["protocol"]["name"], "tokenizer": tokenizer, "source": meta["source"],
            "counts": meta["counts"], "n_prompts": meta["n_prompts"], "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


__all__ = ["load_tokenizer", "meta_path", "prepare_prompt_set", "prompt_set_identity", "read_prompt_set"]
