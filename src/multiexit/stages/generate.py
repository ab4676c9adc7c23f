"""Open-ended generation runs: one model x one decoding setting x one prompt set -> JSONL + sidecar.

Each output row is ``{id, prompt, reference, generation, n_new_tokens, stop_reason}``:

* ``generation`` is the decoded continuation (special tokens removed, cut at the first EOS);
* ``n_new_tokens`` counts the continuation's tokens before EOS (EOS itself and padding excluded);
* ``stop_reason`` is ``"eos"`` when the model ended the text before the limit, else ``"length"``.

Next to ``<name>.jsonl`` a sidecar ``<name>.meta.json`` records the decoding setting (method and
full parameter dict, whatever method the registry of :mod:`multiexit.decoding.registry` holds), the model,
the dataset request, seed, batch size, shard layout, library versions, device, weight dtype, wall
time and tokens/s.

Prompts are split into ``num_shards`` contiguous shards and one call produces one shard (the
pipeline runs each shard as its own job and merges them with :func:`merge_shards`; a run with
``num_shards=1`` is its own single shard). After every batch the finished rows and the random
generators' state are checkpointed in ``<output>.partial.json``; a killed job restarts from its
finished batches, and the resumed file is identical to an uninterrupted one. A batch that runs out
of GPU memory is split into halves (recursively) instead of failing the job. Every file is written
under a temporary name and renamed when complete, so a partial file never looks finished.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import platform
import random
import sys
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

import multiexit.decoding.registry as decoding
from multiexit._lazy import LazyModule
from multiexit.io import atomic_write_text, read_jsonl
from multiexit.inputs.models import DTYPE_NAMES, check_dtype_name, dtype_name, load_model
from multiexit.inputs.prompts import PromptSetSettings, Prompt, load_prompts
from multiexit.decoding.registry import DecodingSetting, derived_settings, parse_decoding
from multiexit.seeding import seed_everything
from multiexit.settings import Settings, check_device, setting

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")

ROW_FIELDS = ("id", "prompt", "reference", "generation", "n_new_tokens", "stop_reason")


# ------------------------------------------------------------------------------ small utilities


def rows_to_jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps({k: row[k] for k in ROW_FIELDS}, ensure_ascii=False) + "\n" for row in rows)


def meta_path(output: str | Path) -> Path:
    """``results/x.jsonl`` -> ``results/x.meta.json``."""
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{stem}.meta.json")


def shard_bounds(n_items: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` of shard ``shard`` when ``n_items`` are cut into ``num_shards`` near-equal parts."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard}")
    base, extra = divmod(n_items, num_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def shard_seed(seed: int, shard: int) -> int:
    """The seed of one shard: independent of batch size, worker and whether earlier shards ran here."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


def library_versions() -> dict:
    import transformers

    from multiexit import __version__

    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__, "multiexit": __version__}
    # read from the installed distributions' metadata: the same strings as their ``__version__``, without the
    # 2-3 s a generation job spent importing ``datasets`` (and with it pandas and pyarrow) only to ask
    for module in ("datasets", "tokenizers"):
        try:
            versions[module] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - optional
            pass
    return versions


# ------------------------------------------------------------------------------ the run


DTYPE_CHOICES = ("auto", *DTYPE_NAMES)


@dataclass(frozen=True)
class GenerateSettings(Settings):
    """One generation job: the decoding setting, the prompt set and how to run it (the rule's ``--spec``).

    Every default of the generation stage lives here (the pipeline's ``resources.generate.batch_size``
    and ``device`` only override them).
    """

    method: str = setting(help="decoding method name (see the list below)", check=decoding.check_method)
    dataset: dict = setting(help='prompt set as a JSON object, e.g. \'{"name": "wikitext-103", "num_prompts": 2000}\'')
    params: dict | None = setting(None, "decoding parameters as a JSON object (default: the method's defaults)")
    seed: int = setting(0, "generation seed; shard i is seeded from (seed, i)")
    num_shards: int = setting(1, "number of contiguous prompt shards", minimum=1)
    shard: int | None = setting(None, "the shard to produce (0-based); may be left out when num_shards is 1", minimum=0)
    max_new_tokens: int = setting(256, "new tokens per prompt", minimum=1)
    min_new_tokens: int = setting(0, "least new tokens per prompt: EOS cannot end a row earlier (0: no floor)", minimum=0)
    prompts: str | None = setting(None, "prompt-set JSONL written by scripts/prepare_prompts.py (its sidecar's request must "
                                        "be `dataset`); default: build the prompt set here")
    batch_size: int = setting(32, "prompts per left-padded batch", minimum=1)
    device: str = setting("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...", check=check_device)
    dtype: str = setting("auto", "model weights dtype (auto: bfloat16 on a bf16 GPU, else float32)", choices=DTYPE_CHOICES)

    def __post_init__(self) -> None:
        if self.shard is not None and self.shard >= self.num_shards:
            raise ValueError(f"shard: must be in 0..{self.num_shards - 1}, got {self.shard}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens: {self.min_new_tokens} is larger than max_new_tokens ({self.max_new_tokens})")

    def make_run(self, model: str) -> "GenerationRun":
        """The run of ``model`` with these settings (decoding and dataset validated here)."""
        prompt_set = None
        if self.prompts is not None:
            from multiexit.stages.prompts import prompt_set_identity

            prompt_set = prompt_set_identity(self.prompts)
            request = PromptSetSettings.from_dict(self.dataset, "dataset").as_dict()
            if prompt_set["request"] != request:
                raise ValueError(f"prompts: {self.prompts} was built for {prompt_set['request']}, not for this dataset {request}")
        return make_run(model, self.method, self.params, self.dataset, seed=self.seed, max_new_tokens=self.max_new_tokens,
                        min_new_tokens=self.min_new_tokens, batch_size=self.batch_size, num_shards=self.num_shards,
                        dtype=self.dtype, prompt_set=prompt_set)

    def load_prompts(self) -> list[Prompt] | None:
        """The prompt set of ``prompts`` (None without one: :func:`run_generation` builds it)."""
        if self.prompts is None:
            return None
        from multiexit.stages.prompts import read_prompt_set

        return read_prompt_set(self.prompts)


@dataclass
class GenerationRun:
    """Everything that decides the content of a generation file (and so its fingerprint)."""

    model: str
    setting: DecodingSetting
    dataset: PromptSetSettings
    seed: int
    max_new_tokens: int
    batch_size: int
    num_shards: int
    dtype: str
    min_new_tokens: int = 0
    prompt_set: dict | None = None  # identity of the prompt-set file read (multiexit.stages.prompts.prompt_set_identity)

    def __post_init__(self) -> None:
        if isinstance(self.min_new_tokens, bool) or not isinstance(self.min_new_tokens, int) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be an integer in 0..max_new_tokens, got {self.min_new_tokens!r}")
        for key in ("max_new_tokens", "batch_size", "num_shards"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        check_dtype_name(self.dtype)

    def settings(self) -> dict:
        return {
            "model": self.model,
            "decoding": self.setting.as_dict(),
            "dataset": self.dataset.as_dict(),
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "prompt_set": self.prompt_set,
            "batch_size": self.batch_size,
            "num_shards": self.num_shards,
            "dtype": self.dtype,
        }

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_generation_model(model: str, device="auto", dtype="auto"):
    """The multi-exit model (original head) and its tokenizer: :func:`multiexit.inputs.models.load_model`."""
    return load_model(model, device=device, dtype=dtype)


def eos_token_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if int(item) not in ids:
                ids.append(int(item))
    return ids


def _left_pad(batch: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, width - len(ids):] = 1
    return input_ids.to(device), mask.to(device)


def _generate_batch(model, setting, input_ids, attention_mask, max_new_tokens, eos_ids, pad_id, min_new_tokens=0) -> torch.Tensor:
    return decoding.generate(
        model, setting, input_ids, attention_mask, max_new_tokens,
        eos_token_id=eos_ids if len(eos_ids) != 1 else eos_ids[0], pad_token_id=pad_id, min_new_tokens=min_new_tokens,
    )


# torch >= 2.5 names it torch.OutOfMemoryError; torch.cuda.OutOfMemoryError is the same class there
def out_of_memory_errors() -> tuple[type, ...]:
    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def generate_splitting(model, setting, input_ids, attention_mask, max_new_tokens, eos_ids, pad_id, splits: list | None = None,
                       min_new_tokens: int = 0) -> torch.Tensor:
    """:func:`_generate_batch`, splitting a batch that runs out of GPU memory into halves (recursively).

    The random generators are rewound to where the failed batch began, so a deterministic method
    gives the unsplit batch's tokens; a sampling method draws as if the halves had been the batches
    (each half loses the padding columns it does not need). The halves' new tokens are right-padded with ``pad_id`` to a common width (a shorter half
    stopped because every row reached EOS, so the padding lies after EOS). Each split's row count
    is appended to ``splits``. One row that does not fit raises the error.
    """
    device = input_ids.device
    state = _rng_state(device)
    try:
        return _generate_batch(model, setting, input_ids, attention_mask, max_new_tokens, eos_ids, pad_id, min_new_tokens)
    except out_of_memory_errors():
        rows = input_ids.shape[0]
        if rows == 1:
            raise
    # out of the except block, so the failed attempt's tensors (held by the traceback) can be freed
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if splits is not None:
        splits.append(rows)
    _set_rng_state(state, device)
    half = (rows + 1) // 2
    parts = []
    for part in (slice(0, half), slice(half, rows)):
        width = int(attention_mask[part].sum(dim=1).max())  # left padding: drop columns that pad every row of the half
        parts.append(generate_splitting(model, setting, input_ids[part, -width:], attention_mask[part, -width:],
                                        max_new_tokens, eos_ids, pad_id, splits, min_new_tokens))
    width = max(part.shape[1] for part in parts)
    return torch.cat([torch.nn.functional.pad(part, (0, width - part.shape[1]), value=pad_id) for part in parts])


def finish_row(prompt: Prompt, new_tokens: Sequence[int], eos_ids: Sequence[int], tokenizer) -> dict:
    """Cut one row of new tokens at its first EOS and decode it."""
    tokens = [int(t) for t in new_tokens]
    stop = next((i for i, tok in enumerate(tokens) if tok in eos_ids), None)
    kept = tokens if stop is None else tokens[:stop]
    return {
        "id": prompt.id,
        "prompt": prompt.prompt,
        "reference": prompt.reference,
        "generation": tokenizer.decode(kept, skip_special_tokens=True),
        "n_new_tokens": len(kept),
        "stop_reason": "eos" if stop is not None else "length",
    }


def _encode_state(state: dict) -> dict:
    return {key: base64.b64encode(value.cpu().numpy().tobytes()).decode("ascii") for key, value in state.items()}


def _decode_state(state: dict) -> dict:
    return {key: torch.frombuffer(bytearray(base64.b64decode(value)), dtype=torch.uint8) for key, value in state.items()}


def generate_rows(
    model,
    tokenizer,
    setting: DecodingSetting,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    min_new_tokens: int = 0,
    progress: bool = True,
    desc: str = "generate",
    checkpoint: str | Path | None = None,
    checkpoint_key: str = "",
) -> tuple[list[dict], dict]:
    """Generate for ``prompts`` in left-padded batches after seeding with ``seed``; returns rows and timing.

    With ``checkpoint`` the finished rows, timing and random state are saved there (JSON) after every
    batch; a later call with the same ``checkpoint_key`` continues from them (one with another key is
    discarded: the settings changed).
    The caller removes the checkpoint once its output is safely written.
    """
    from tqdm.auto import tqdm

    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    device = next(model.parameters()).device
    rows: list[dict] = []
    seconds = 0.0
    splits: list[int] = []
    seed_everything(seed)
    saved = json.loads(Path(checkpoint).read_text(encoding="utf-8")) if checkpoint is not None and Path(checkpoint).is_file() else None
    if saved is not None and saved.get("key") != checkpoint_key:
        # the pipeline reruns a job whose settings changed under the same output name: start over
        print(f"generate: {checkpoint} is from other settings ({saved.get('key')}, now {checkpoint_key}); starting over",
              file=sys.stderr)
        saved = None
    if saved is not None:
        rows, seconds, splits = saved["rows"], saved["seconds"], saved["oom_splits"]
        random.setstate((saved["random"][0], tuple(saved["random"][1]), saved["random"][2]))
        _set_rng_state(_decode_state(saved["rng"]), device)
    bar = tqdm(total=len(prompts), initial=len(rows), desc=desc, unit="prompt", disable=not progress)
    for start in range(len(rows), len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        input_ids, mask = _left_pad([p.prompt_ids for p in batch], pad_id, device)
        began = time.perf_counter()
        new = generate_splitting(model, setting, input_ids, mask, max_new_tokens, eos_ids, pad_id, splits, min_new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - began
        rows.extend(finish_row(p, new[i].tolist(), eos_ids, tokenizer) for i, p in enumerate(batch))
        if checkpoint is not None and start + batch_size < len(prompts):
            version, internal, gauss = random.getstate()
            atomic_write_text(checkpoint, json.dumps({
                "key": checkpoint_key, "rows": rows, "seconds": seconds, "oom_splits": splits,
                "random": [version, list(internal), gauss], "rng": _encode_state(_rng_state(device)),
            }))
        bar.update(len(batch))
    bar.close()
    tokens = sum(r["n_new_tokens"] for r in rows)
    return rows, {"n_prompts": len(rows), "new_tokens": tokens, "seconds": seconds, "oom_splits": splits}


def _timing_summary(parts: Sequence[dict]) -> dict:
    tokens = sum(p["new_tokens"] for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    return {
        "n_prompts": sum(p["n_prompts"] for p in parts),
        "new_tokens": tokens,
        "generation_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 3) if seconds > 0 else None,
    }


def _meta(run: GenerationRun, shards: list[int], parts: list[dict], device: torch.device, dtype: torch.dtype, extra: dict | None = None) -> dict:
    method = decoding.METHODS[run.setting.method]
    return {
        "kind": "generation",
        "fingerprint": run.fingerprint(),
        "settings": run.settings(),
        "decoding_description": method.description,
        "shards": shards,
        "device": str(device),
        "torch_dtype": dtype_name(dtype),
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **_timing_summary(parts),
        "shard_timings": parts,
        **(extra or {}),
    }


def checkpoint_path(output: str | Path) -> Path:
    """``results/x.jsonl`` -> ``results/x.partial.json`` (finished batches of an interrupted run)."""
    return meta_path(output).with_name(meta_path(output).name.replace(".meta.json", ".partial.json"))


def run_generation(
    run: GenerationRun,
    output: str | Path,
    *,
    shard: int | None = None,
    device: str = "auto",
    progress: bool = True,
    model_and_tokenizer: tuple | None = None,
    prompts: Sequence[Prompt] | None = None,
) -> Path:
    """Produce shard ``shard`` of ``run`` as ``output`` (JSONL) and its sidecar; returns ``output``.

    ``shard`` may be omitted when ``run.num_shards == 1``. The shards of a multi-shard run are
    separate calls (the pipeline's jobs), merged with :func:`merge_shards`. Finished batches are
    checkpointed in ``<output>.partial.json`` (see :func:`generate_rows`): rerunning a killed call
    resumes there. ``model_and_tokenizer`` / ``prompts`` let a caller reuse an already loaded
    model or prompt set; ``device`` and ``run.dtype`` are resolved by :mod:`multiexit.inputs.models`.
    """
    output = Path(output)
    if not output.name.endswith(".jsonl"):
        raise ValueError(f"output must end in .jsonl, got {output}")
    if shard is None:
        if run.num_shards != 1:
            raise ValueError(f"shard: this run has {run.num_shards} shards; produce each with shard=i and merge them")
        shard = 0
    if not 0 <= shard < run.num_shards:
        raise ValueError(f"shard must be in 0..{run.num_shards - 1}, got {shard}")
    if model_and_tokenizer is None:
        model_and_tokenizer = load_generation_model(run.model, device, run.dtype)
    model, tokenizer = model_and_tokenizer
    param = next(model.parameters())
    if prompts is None:
        prompts = load_prompts(run.dataset, tokenizer)
    if len(prompts) < run.num_shards:
        raise ValueError(f"num_shards ({run.num_shards}) is larger than the number of prompts ({len(prompts)})")

    # what a method resolves from the model (DoLa's candidate layers, the CD amateur's size...)
    # and the search it runs (None: the method's own loop), spelled out whatever the default
    derived = {"decoding_derived": derived_settings(model, run.setting), "decoding_search": run.setting.search_dict()}
    start, end = shard_bounds(len(prompts), run.num_shards, shard)
    checkpoint = checkpoint_path(output)
    rows, timing = generate_rows(
        model, tokenizer, run.setting, prompts[start:end],
        max_new_tokens=run.max_new_tokens, min_new_tokens=run.min_new_tokens, batch_size=run.batch_size,
        seed=shard_seed(run.seed, shard),
        progress=progress, desc=f"{run.setting.method} shard {shard + 1}/{run.num_shards}",
        checkpoint=checkpoint, checkpoint_key=f"{run.fingerprint()}/shard-{shard}",
    )
    # sidecar first: the JSONL (what pipelines wait for) appears last
    atomic_write_text(meta_path(output), json.dumps(_meta(run, [shard], [timing], param.device, param.dtype, derived), indent=2) + "\n")
    atomic_write_text(output, rows_to_jsonl(rows))
    checkpoint.unlink(missing_ok=True)
    return output


def merge_shards(shard_outputs: Sequence[str | Path], output: str | Path) -> Path:
    """Concatenate shard files written with ``shard=i`` (all shards of one run, any order) into ``output``."""
    metas = []
    for path in shard_outputs:
        side = meta_path(path)
        if not Path(path).is_file() or not side.is_file():
            raise ValueError(f"merge: {path} or its sidecar {side} is missing")
        metas.append((json.loads(side.read_text()), Path(path)))
    prints = {m["fingerprint"] for m, _ in metas}
    if len(prints) != 1:
        raise ValueError(f"merge: shards come from different runs (fingerprints {sorted(prints)})")
    num_shards = metas[0][0]["settings"]["num_shards"]
    found = sorted(s for m, _ in metas for s in m["shards"])
    if found != list(range(num_shards)):
        raise ValueError(f"merge: expected shards 0..{num_shards - 1} exactly once, got {found}")
    metas.sort(key=lambda item: item[0]["shards"][0])
    text = "".join(path.read_text(encoding="utf-8") for _, path in metas)
    merged = dict(metas[0][0])
    parts = [t for m, _ in metas for t in m["shard_timings"]]
    merged.update(_timing_summary(parts), shards=found, shard_timings=parts, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write_text(meta_path(output), json.dumps(merged, indent=2) + "\n")
    atomic_write_text(output, text)
    return Path(output)


def make_run(
    model: str,
    method: str,
    params: dict | None,
    dataset: PromptSetSettings | dict,
    **kwargs,
) -> GenerationRun:
    """Validate everything (decoding name/params, dataset request, sizes) before any model work.

    ``kwargs`` not given take :class:`GenerateSettings`' defaults.
    """
    setting = parse_decoding(method, params)
    request = dataset if isinstance(dataset, PromptSetSettings) else PromptSetSettings.from_dict(dataset)
    request.validate()
    defaults = {f.name: f.default for f in fields(GenerateSettings) if f.name in _RUN_FIELDS}
    return GenerationRun(model=model, setting=setting, dataset=request, **{**defaults, **kwargs})


_RUN_FIELDS = ("seed", "max_new_tokens", "min_new_tokens", "batch_size", "num_shards", "dtype")


__all__ = [
    "GenerateSettings",
    "GenerationRun",
    "ROW_FIELDS",
    "atomic_write_text",
    "eos_token_ids",
    "finish_row",
    "generate_rows",
    "load_generation_model",
    "make_run",
    "merge_shards",
    "meta_path",
    "read_jsonl",
    "run_generation",
    "generate_splitting",
    "checkpoint_path",
    "shard_bounds",
    "shard_seed",
]
