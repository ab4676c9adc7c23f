"""Quality metrics of open-ended generations: repetition/diversity, MAUVE, coherence, lengths, perplexity.

Protocol (see ``docs/metrics.md``):

* **rep-n** (n = 2, 3, 4) = 100 * (1 - unique n-grams / total n-grams) over whitespace tokens, and
  **diversity** = prod_n (1 - rep-n / 100). Two conventions, reported under distinct names:

  - ``*_pooled``: n-grams of all texts pooled into one multiset (SimCTG / Contrastive Decoding code);
    an n-gram that recurs in two different texts counts as a repetition.
  - ``*_per_text``: the value computed on each text, then averaged over texts (the ACD paper's code).
    A text with no n-gram of size n (fewer than n words, e.g. an empty generation) has no rep-n; it is
    left out of that mean, and out of the per-text diversity mean when it has fewer than max(n) words
    (the counts are reported).

* **MAUVE** (``mauve-text``'s ``compute_mauve`` on features computed here): reference and generation
  are tokenised with the featurizer's tokenizer and both cut to the same ``max_tokens`` (128); pairs
  where either side is shorter are dropped (count reported). Features are the featurizer's final-layer
  hidden state at the last token (default ``gpt2``; any local HF folder works). Scaling factor 5, seed 25.

* **coherence**: mean cosine similarity of the embeddings of prompt and generation, with SimCSE
  (``princeton-nlp/sup-simcse-bert-base-uncased``, CLS pooler output) or a local sentence-transformers folder.

* lengths, share of texts stopped before the limit (``stop_reason == "eos"``), optional perplexity of the
  continuation given the prompt under an evaluator LM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from multiexit.settings import Settings, check_device

DEFAULT_NS = (2, 3, 4)
DEFAULT_FEATURIZER = "gpt2"
DEFAULT_COHERENCE_MODEL = "princeton-nlp/sup-simcse-bert-base-uncased"


# ------------------------------------------------------------------------------ repetition / diversity


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def rep_n(text: str, n: int) -> float | None:
    """rep-n of one text (percent); ``None`` when it has no n-gram."""
    grams = ngrams(text.split(), n)
    if not grams:
        return None
    return 100.0 * (1.0 - len(set(grams)) / len(grams))


def _diversity(reps: dict[int, float | None]) -> float | None:
    if any(v is None for v in reps.values()):
        return None
    return float(np.prod([1.0 - v / 100.0 for v in reps.values()]))


def repetition_metrics(texts: Sequence[str], ns: Sequence[int] = DEFAULT_NS) -> dict:
    """rep-n and diversity in both conventions (pooled over the corpus; mean of per-text values)."""
    ns = tuple(ns)
    if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns):
        raise ValueError(f"ns must be positive integers, got {ns!r}")
    result: dict = {}
    pooled: dict[int, float | None] = {}
    per_text_values: dict[int, list[float | None]] = {}
    for n in ns:
        total, unique = 0, set()
        values = []
        for text in texts:
            grams = ngrams(text.split(), n)
            total += len(grams)
            # pooled: uniqueness is over the whole corpus (SimCTG's measure_repetition_and_diversity)
            unique.update(grams)
            values.append(100.0 * (1.0 - len(set(grams)) / len(grams)) if grams else None)
        pooled[n] = 100.0 * (1.0 - len(unique) / total) if total else None
        per_text_values[n] = values
        scored = [v for v in values if v is not None]
        result[f"rep_{n}_pooled"] = pooled[n]
        result[f"rep_{n}_per_text"] = float(np.mean(scored)) if scored else None
        result[f"n_texts_with_{n}grams"] = len(scored)
    result["diversity_pooled"] = _diversity(pooled)
    per_text_div = [
        _diversity({n: per_text_values[n][i] for n in ns}) for i in range(len(texts))
    ]
    scored_div = [v for v in per_text_div if v is not None]
    result["diversity_per_text"] = float(np.mean(scored_div)) if scored_div else None
    result["n_texts_diversity_per_text"] = len(scored_div)
    result["n_texts"] = len(texts)
    return result


# ------------------------------------------------------------------------------ lengths


def length_metrics(rows: Sequence[dict]) -> dict:
    if not rows:
        return {"n_texts": 0, "mean_new_tokens": None, "mean_words": None, "share_stopped_early": None}
    return {
        "n_texts": len(rows),
        "mean_new_tokens": float(np.mean([r["n_new_tokens"] for r in rows])),
        "mean_words": float(np.mean([len(r["generation"].split()) for r in rows])),
        "share_stopped_early": float(np.mean([r["stop_reason"] == "eos" for r in rows])),
        "share_empty": float(np.mean([not r["generation"].strip() for r in rows])),
    }


# ------------------------------------------------------------------------------ models


def _device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_causal_lm(name_or_path: str, device: str = "auto"):
    """A plain HF causal LM + tokenizer (``package:<name>`` resolves to the converted packaged model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from multiexit.inputs.models import resolve_model_source

    source = resolve_model_source(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).to(_device(device)).eval()
    return model, tokenizer


# ------------------------------------------------------------------------------ MAUVE


def mauve_token_pairs(references: Sequence[str], generations: Sequence[str], tokenizer, max_tokens: int = 128):
    """Token ids of both sides cut to ``max_tokens``; pairs where either is shorter are dropped.

    Returns ``(reference_ids, generation_ids, kept_indices)``.
    """
    if len(references) != len(generations):
        raise ValueError(f"{len(references)} references but {len(generations)} generations")
    refs, gens, kept = [], [], []
    for i, (ref, gen) in enumerate(zip(references, generations)):
        r = tokenizer(ref, add_special_tokens=False)["input_ids"]
        g = tokenizer(gen, add_special_tokens=False)["input_ids"]
        if len(r) >= max_tokens and len(g) >= max_tokens:
            refs.append(r[:max_tokens])
            gens.append(g[:max_tokens])
            kept.append(i)
    return refs, gens, kept


def featurize(token_ids: Sequence[Sequence[int]], model, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Final-layer hidden state at the last token of each sequence (no special tokens added)."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(token_ids), batch_size), desc="featurize", disable=not progress):
            batch = token_ids[start:start + batch_size]
            width = max(len(ids) for ids in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(batch):  # right padding; the last real token is read below
                ids[row, : len(seq)] = torch.tensor(list(seq))
                mask[row, : len(seq)] = 1
            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states[-1]
            last = mask.sum(dim=1).to(device) - 1
            out.append(hidden[torch.arange(len(batch), device=device), last].float().cpu().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)


def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, *, scaling_factor: float = 5.0, seed: int = 25, num_buckets="auto") -> float:
    """``mauve.compute_mauve`` on precomputed features (p = human references, q = generations)."""
    import mauve

    if len(p_features) < 2 or len(q_features) < 2:
        raise ValueError(f"MAUVE needs at least 2 texts on each side, got {len(p_features)} and {len(q_features)}")
    result = mauve.compute_mauve(
        p_features=np.asarray(p_features), q_features=np.asarray(q_features), mauve_scaling_factor=scaling_factor,
        seed=seed, num_buckets=num_buckets, device_id=-1, verbose=False,
    )
    return float(result.mauve)


def mauve_metrics(references, generations, featurizer: str = DEFAULT_FEATURIZER, *, max_tokens: int = 128,
                  scaling_factor: float = 5.0, seed: int = 25, num_buckets="auto", batch_size: int = 16,
                  device: str = "auto", progress: bool = False, featurizer_model=None) -> dict:
    """MAUVE under the Contrastive Decoding protocol; ``featurizer_model`` = (model, tokenizer) to reuse one."""
    model, tokenizer = featurizer_model or load_causal_lm(featurizer, device)
    refs, gens, kept = mauve_token_pairs(references, generations, tokenizer, max_tokens)
    result = {"mauve": None, "mauve_n_pairs": len(kept), "mauve_n_dropped": len(references) - len(kept)}
    if len(kept) >= 2:
        p = featurize(refs, model, batch_size, progress)
        q = featurize(gens, model, batch_size, progress)
        result["mauve"] = mauve_from_features(p, q, scaling_factor=scaling_factor, seed=seed, num_buckets=num_buckets)
    return result


# ------------------------------------------------------------------------------ coherence


class SentenceEncoder:
    """SimCSE-style encoder (HF model, CLS pooler output) or a sentence-transformers folder."""

    def __init__(self, name_or_path: str, device: str = "auto"):
        self.device = _device(device)
        self.name = name_or_path
        if (Path(name_or_path) / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer

            self.kind = "sentence-transformers"
            self.model = SentenceTransformer(name_or_path, device=str(self.device))
        else:
            from transformers import AutoModel, AutoTokenizer

            self.kind = "cls-pooler"
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModel.from_pretrained(name_or_path).to(self.device).eval()

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        import torch

        if self.kind == "sentence-transformers":
            return np.asarray(self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False))
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=512, return_tensors="pt").to(self.device)
                result = self.model(**enc)
                pooled = result.pooler_output if getattr(result, "pooler_output", None) is not None else result.last_hidden_state[:, 0]
                out.append(pooled.float().cpu().numpy())
        return np.concatenate(out, axis=0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def coherence_metrics(prompts, generations, model: str = DEFAULT_COHERENCE_MODEL, *, device: str = "auto", batch_size: int = 32, encoder: SentenceEncoder | None = None) -> dict:
    if len(prompts) != len(generations):
        raise ValueError(f"{len(prompts)} prompts but {len(generations)} generations")
    if not prompts:
        return {"coherence": None}
    encoder = encoder or SentenceEncoder(model, device)
    sims = cosine_rows(encoder.encode(prompts, batch_size), encoder.encode(generations, batch_size))
    return {"coherence": float(np.mean(sims)), "coherence_encoder": encoder.kind}


# ------------------------------------------------------------------------------ perplexity


def perplexity_metrics(prompts, generations, model: str, *, device: str = "auto", evaluator=None) -> dict:
    """Perplexity of each continuation given its prompt (evaluator tokenizer; corpus-level = exp(total NLL / tokens))."""
    import torch

    lm, tokenizer = evaluator or load_causal_lm(model, device)
    dev = next(lm.parameters()).device
    from multiexit.inputs.prompts import special_prefix_ids

    prefix = special_prefix_ids(tokenizer)
    total_nll, total_tokens, per_text = 0.0, 0, []
    with torch.inference_mode():
        for prompt, gen in zip(prompts, generations):
            p = prefix + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            g = tokenizer(gen, add_special_tokens=False)["input_ids"]
            if not g:
                continue
            ids = torch.tensor([p + g], device=dev)
            logits = lm(input_ids=ids).logits[0, len(p) - 1: -1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, len(p):], reduction="sum").item()
            total_nll += nll
            total_tokens += len(g)
            per_text.append(math.exp(nll / len(g)))
    return {
        "perplexity": math.exp(total_nll / total_tokens) if total_tokens else None,
        "perplexity_mean_per_text": float(np.mean(per_text)) if per_text else None,
        "perplexity_n_texts": len(per_text),
    }


# ------------------------------------------------------------------------------ one protocol


ALL_METRICS = ("diversity", "mauve", "coherence", "length", "perplexity")


@dataclass(frozen=True)
class ScoreSettings(Settings):
    """Settings of :func:`score_rows` (JSON object on the command line; the pipeline's ``metrics`` block)."""

    metrics: tuple[str, ...] = ("diversity", "mauve", "coherence", "length")
    ns: tuple[int, ...] = DEFAULT_NS
    featurizer: str = DEFAULT_FEATURIZER
    mauve_max_tokens: int = 128
    mauve_scaling_factor: float = 5.0
    mauve_seed: int = 25
    mauve_num_buckets: int | str = "auto"
    coherence_model: str = DEFAULT_COHERENCE_MODEL
    perplexity_model: str | None = None
    batch_size: int = 32
    device: str = "auto"

    @classmethod
    def from_dict(cls, data: dict | None, key: str = "") -> "ScoreSettings":
        """Validated settings; a ConfigError (a ValueError) naming ``key`` and the bad setting."""
        try:
            return cls._from_dict(data)
        except (TypeError, ValueError) as err:
            raise cls.error_for(str(err), key, data) from None

    @classmethod
    def _from_dict(cls, data: dict | None) -> "ScoreSettings":
        data = dict(data or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"score settings: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
        for key in ("metrics", "ns"):
            if key in data:
                if isinstance(data[key], str) or not isinstance(data[key], (list, tuple)):
                    raise ValueError(f"score settings: {key} must be a list, got {data[key]!r}")
                data[key] = tuple(data[key])
        settings = cls(**data)
        bad = sorted(set(settings.metrics) - set(ALL_METRICS))
        if bad:
            raise ValueError(f"score settings: unknown metric(s) {bad}; valid metrics: {', '.join(ALL_METRICS)}")
        if "perplexity" in settings.metrics and not settings.perplexity_model:
            raise ValueError("score settings: metric 'perplexity' needs 'perplexity_model' (an evaluator LM)")
        if settings.mauve_num_buckets != "auto" and (not isinstance(settings.mauve_num_buckets, int) or settings.mauve_num_buckets < 2):
            raise ValueError(f"score settings: mauve_num_buckets must be 'auto' or an integer >= 2, got {settings.mauve_num_buckets!r}")
        for key in ("mauve_max_tokens", "batch_size"):
            value = getattr(settings, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"score settings: {key} must be a positive integer, got {value!r}")
        try:
            check_device(settings.device)
        except ValueError as err:
            raise ValueError(f"score settings: device {err}") from None
        return settings

    def as_dict(self) -> dict:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def check_rows(rows: Sequence[dict], where: str = "generations") -> None:
    from multiexit.stages.generate import ROW_FIELDS

    for i, row in enumerate(rows):
        missing = [k for k in ROW_FIELDS if k not in row]
        if missing:
            raise ValueError(f"{where}: row {i} misses field(s) {missing}")


def score_rows(rows: Sequence[dict], settings: ScoreSettings | dict | None = None, *, progress: bool = False) -> dict:
    """All requested metrics of one generation file's rows (rows as written by :mod:`multiexit.stages.generate`)."""
    if not isinstance(settings, ScoreSettings):
        settings = ScoreSettings.from_dict(settings)
    check_rows(rows)
    if not rows:
        raise ValueError("generations: no rows to score")
    gens = [r["generation"] for r in rows]
    result: dict = {"n_texts": len(rows)}
    if "length" in settings.metrics:
        result.update(length_metrics(rows))
    if "diversity" in settings.metrics:
        result.update(repetition_metrics(gens, settings.ns))
    if "mauve" in settings.metrics:
        result.update(mauve_metrics(
            [r["reference"] for r in rows], gens, settings.featurizer, max_tokens=settings.mauve_max_tokens,
            scaling_factor=settings.mauve_scaling_factor, seed=settings.mauve_seed, num_buckets=settings.mauve_num_buckets,
            batch_size=settings.batch_size, device=settings.device, progress=progress,
        ))
    if "coherence" in settings.metrics:
        result.update(coherence_metrics([r["prompt"] for r in rows], gens, settings.coherence_model, device=settings.device, batch_size=settings.batch_size))
    if "perplexity" in settings.metrics:
        result.update(perplexity_metrics([r["prompt"] for r in rows], gens, settings.perplexity_model, device=settings.device))
    return result


__all__ = [
    "ALL_METRICS",
    "ScoreSettings",
    "SentenceEncoder",
    "coherence_metrics",
    "featurize",
    "length_metrics",
    "mauve_from_features",
    "mauve_metrics",
    "mauve_token_pairs",
    "ngrams",
    "perplexity_metrics",
    "rep_n",
    "repetition_metrics",
    "score_rows",
]
