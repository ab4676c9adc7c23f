"""Quality metrics of open-ended generations: repetition/diversity, MAUVE, coherence, lengths, perplexity.

Each metric follows a named reference (see ``docs/metrics.md`` for the files):

* **rep-n / diversity** as SimCTG's ``measure_repetition_and_diversity`` (``simctg/evaluation.py``, also
  called by the Contrastive Decoding evaluation script): a text is ``text.strip().split()``; the n-grams
  of each text are counted *within that text* -- SimCTG's loop stops before the text's last n-gram --
  and unique / total counts are summed over texts; rep-n = round(100 * (1 - unique / total), 2) and
  diversity = prod_n (1 - rep-n / 100), with the rounded rep-n. Two uses, under distinct names:

  - ``*_simctg``: the function called once on the whole list (SimCTG, Contrastive Decoding);
  - ``*_per_text``: the function called on each text alone, as the ACD authors' ``auto_metrics.py``
    does; a text too short for it (SimCTG divides by zero) has diversity 0, and the mean is over
    every text.

* **MAUVE** (``mauve-text``'s ``compute_mauve`` on features computed here; the Contrastive Decoding
  protocol): reference and generation are tokenised with the featurizer's tokenizer and both cut to
  the same ``max_tokens`` (128); pairs where either side is shorter are dropped (count reported).
  Features are the featurizer's final-layer hidden state at the last token (default ``gpt2``; any local
  HF folder works). Scaling factor 5, seed 25.

* **coherence** as SimCSE's tool (``simcse/tool.py``, called by the ACD authors' ``auto_metrics.py``):
  cosine similarity of the embeddings of generation and prompt, texts truncated to 128 tokens, pooler
  output for supervised checkpoints and the CLS hidden state for unsupervised ones (``unsup`` in the
  name); a local sentence-transformers folder is an offline stand-in.

* lengths, share of texts stopped before the limit (``stop_reason == "eos"``), optional perplexity of the
  continuation given the prompt under an evaluator LM.

Per-prompt metrics (per-text diversity, coherence, lengths) also get a seeded 95% percentile bootstrap
interval of their mean over prompts (``metrics["intervals"]``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from multiexit.settings import Settings, check_device, setting

DEFAULT_NS = (2, 3, 4)
DEFAULT_FEATURIZER = "gpt2"
DEFAULT_COHERENCE_MODEL = "princeton-nlp/sup-simcse-bert-base-uncased"
SIMCSE_MAX_TOKENS = 128  # simcse/tool.py: SimCSE.encode(max_length=128)
COHERENCE_POOLERS = ("auto", "cls", "cls_before_pooler")
# The one default of each scoring setting: ScoreSettings' fields and the functions below both take these.
MAUVE_MAX_TOKENS = 128  # ContrastiveDecoding text-generation/eval_script.py: tgt_len = 128
MAUVE_SCALING_FACTOR = 5.0  # mauve-text compute_mauve's default mauve_scaling_factor
MAUVE_SEED = 25  # mauve-text compute_mauve's default k-means seed
MAUVE_NUM_BUCKETS = "auto"  # mauve-text compute_mauve's default: n / 10 buckets
BATCH_SIZE = 32  # texts per forward pass of the MAUVE featurizer and the coherence encoder: our choice
BOOTSTRAP_RESAMPLES = 1000  # our choice
BOOTSTRAP_SEED = 0  # our choice


# ------------------------------------------------------------------------------ repetition / diversity


def simctg_tokens(text: str) -> list[str]:
    """SimCTG's tokenisation: strip, then split on runs of whitespace (newlines included)."""
    return text.strip().split()


def simctg_ngram_counts(text: str, n: int) -> tuple[int, int]:
    """(unique, total) n-grams of one text as SimCTG counts them.

    SimCTG slides a window ``[start, start + n)`` while ``start + n < len(tokens)``, so the text's last
    n-gram is never counted: a text of L words has max(0, L - n) n-grams, not L - n + 1.
    """
    tokens = simctg_tokens(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n)]
    return len(set(grams)), len(grams)


def simctg_rep(unique: int, total: int) -> float:
    """rep-n in percent, rounded to 2 decimals as SimCTG rounds it (before the diversity product)."""
    return round((1.0 - unique / total) * 100, 2)


def _simctg(counts: dict[int, tuple[int, int]]) -> tuple[dict[int, float], float] | None:
    """rep-n per n and diversity from summed counts; ``None`` where SimCTG would divide by zero."""
    if any(total == 0 for _unique, total in counts.values()):
        return None
    reps = {n: simctg_rep(unique, total) for n, (unique, total) in counts.items()}
    diversity = 1.0
    for n in counts:
        diversity *= 1 - reps[n] / 100
    return reps, diversity


def _check_ns(ns) -> tuple[int, ...]:
    ns = tuple(ns)
    if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns):
        raise ValueError(f"ns must be positive integers, got {ns!r}")
    return ns


def per_text_diversity(texts: Sequence[str], ns: Sequence[int] = DEFAULT_NS) -> list[float]:
    """Diversity of each text alone (SimCTG on ``[text]``), 0 for a text too short for it (ACD code)."""
    ns = _check_ns(ns)
    out = []
    for text in texts:
        scored = _simctg({n: simctg_ngram_counts(text, n) for n in ns})
        out.append(0.0 if scored is None else scored[1])
    return out


def repetition_metrics(texts: Sequence[str], ns: Sequence[int] = DEFAULT_NS) -> dict:
    """rep-n and diversity: SimCTG over the list (``*_simctg``) and per text as the ACD code (``*_per_text``).

    ``rep_{n}_per_text`` is the mean rep-n over the texts SimCTG can score alone (our choice: the ACD
    code records no rep-n); ``diversity_per_text`` is the mean over all texts with too-short texts at 0.
    ``n_texts_too_short`` counts texts with at most max(ns) words (SimCTG alone divides by zero).
    A value SimCTG cannot compute (every text too short for some n) is ``None``.
    """
    ns = _check_ns(ns)
    per_text = [{n: simctg_ngram_counts(text, n) for n in ns} for text in texts]
    summed = {n: (sum(c[n][0] for c in per_text), sum(c[n][1] for c in per_text)) for n in ns}
    pooled = _simctg(summed)
    alone = [_simctg(c) for c in per_text]
    scored = [a for a in alone if a is not None]
    result: dict = {}
    for n in ns:
        result[f"rep_{n}_simctg"] = None if pooled is None else pooled[0][n]
    result["diversity_simctg"] = None if pooled is None else pooled[1]
    for n in ns:
        result[f"rep_{n}_per_text"] = float(np.mean([a[0][n] for a in scored])) if scored else None
    result["diversity_per_text"] = float(np.mean([0.0 if a is None else a[1] for a in alone])) if texts else None
    result["n_texts_too_short"] = len(alone) - len(scored)
    result["n_texts"] = len(texts)
    return result


# ------------------------------------------------------------------------------ bootstrap


def bootstrap_interval(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = 0.95) -> dict | None:
    """Percentile bootstrap interval of the mean over items (prompts): resample items with replacement.

    Returns ``{"low", "high", "n", "resamples", "seed", "level"}``, or ``None`` without values.
    """
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[idx].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"low": float(low), "high": float(high), "n": int(values.size), "resamples": int(resamples), "seed": int(seed), "level": level}


# ------------------------------------------------------------------------------ lengths


def length_values(rows: Sequence[dict]) -> dict[str, list[float]]:
    """Per-text lengths: new tokens, whitespace words, stopped early (1/0), empty (1/0)."""
    return {
        "mean_new_tokens": [float(r["n_new_tokens"]) for r in rows],
        "mean_words": [float(len(r["generation"].split())) for r in rows],
        "share_stopped_early": [float(r["stop_reason"] == "eos") for r in rows],
        "share_empty": [float(not r["generation"].strip()) for r in rows],
    }


def length_metrics(rows: Sequence[dict]) -> dict:
    if not rows:
        return {"n_texts": 0, "mean_new_tokens": None, "mean_words": None, "share_stopped_early": None, "share_empty": None}
    return {"n_texts": len(rows), **{key: float(np.mean(values)) for key, values in length_values(rows).items()}}


# ------------------------------------------------------------------------------ models


def load_causal_lm(name_or_path: str, device: str = "auto"):
    """A plain HF causal LM + tokenizer in float32 (``package:<name>`` resolves to the converted packaged model)."""
    from multiexit.inputs.models import load_model

    return load_model(name_or_path, device=device, dtype="float32", multi_exit=False)


# ------------------------------------------------------------------------------ MAUVE


def mauve_token_pairs(references: Sequence[str], generations: Sequence[str], tokenizer, max_tokens: int = MAUVE_MAX_TOKENS):
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


def featurize(token_ids: Sequence[Sequence[int]], model, batch_size: int = BATCH_SIZE, progress: bool = False) -> np.ndarray:
    """Final-layer hidden state at the last token of each sequence (no special tokens added).

    As ``mauve-text``'s ``featurize_tokens_from_model``, the features come from the model body
    (``base_model``, e.g. ``GPT2Model``): its last hidden state equals a causal LM's
    ``hidden_states[-1]``, without the vocabulary projection.
    """
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    model = getattr(model, "base_model", model)
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


def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, *, scaling_factor: float = MAUVE_SCALING_FACTOR,
                        seed: int = MAUVE_SEED, num_buckets=MAUVE_NUM_BUCKETS) -> float:
    """``mauve.compute_mauve`` on precomputed features (p = human references, q = generations)."""
    import mauve

    if len(p_features) < 2 or len(q_features) < 2:
        raise ValueError(f"MAUVE needs at least 2 texts on each side, got {len(p_features)} and {len(q_features)}")
    result = mauve.compute_mauve(
        p_features=np.asarray(p_features), q_features=np.asarray(q_features), mauve_scaling_factor=scaling_factor,
        seed=seed, num_buckets=num_buckets, device_id=-1, verbose=False,
    )
    return float(result.mauve)


def mauve_metrics(references, generations, featurizer: str = DEFAULT_FEATURIZER, *, max_tokens: int = MAUVE_MAX_TOKENS,
                  scaling_factor: float = MAUVE_SCALING_FACTOR, seed: int = MAUVE_SEED, num_buckets=MAUVE_NUM_BUCKETS,
                  batch_size: int = BATCH_SIZE,
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
    """Sentence embeddings as SimCSE's tool computes them, or through a sentence-transformers folder.

    HF encoder (SimCSE): texts tokenised with padding and truncation to ``max_tokens`` (SimCSE: 128);
    ``pooler`` ``cls`` = the pooler output (SimCSE's choice for supervised checkpoints),
    ``cls_before_pooler`` = the last hidden state at [CLS] (its choice for unsupervised ones); ``auto``
    picks as SimCSE does, by ``unsup`` in the model name. A folder with ``modules.json`` is encoded by
    ``SentenceTransformer.encode`` with its own pooling, its sequence length capped at ``max_tokens``
    (offline stand-in; our choice).
    """

    def __init__(self, name_or_path: str, device: str = "auto", *, max_tokens: int = SIMCSE_MAX_TOKENS, pooler: str = "auto"):
        if pooler not in COHERENCE_POOLERS:
            raise ValueError(f"coherence pooler must be one of {', '.join(COHERENCE_POOLERS)}, got {pooler!r}")
        from multiexit.inputs.models import resolve_device

        self.device = resolve_device(device)
        self.name = name_or_path
        self.max_tokens = max_tokens
        if (Path(name_or_path) / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer

            self.kind = "sentence-transformers"
            self.pooler = "sentence-transformers"
            self.model = SentenceTransformer(name_or_path, device=str(self.device))
            self.model.max_seq_length = min(self.model.max_seq_length or max_tokens, max_tokens)
        else:
            from transformers import AutoModel, AutoTokenizer

            self.pooler = pooler if pooler != "auto" else ("cls_before_pooler" if "unsup" in name_or_path else "cls")
            self.kind = self.pooler
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModel.from_pretrained(name_or_path).to(self.device).eval()

    def encode(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        import torch

        if self.kind == "sentence-transformers":
            return np.asarray(self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False))
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt").to(self.device)
                result = self.model(**enc, return_dict=True)
                if self.pooler == "cls":
                    if getattr(result, "pooler_output", None) is None:
                        raise ValueError(f"coherence model {self.name}: no pooler output; use pooler 'cls_before_pooler'")
                    pooled = result.pooler_output
                else:
                    pooled = result.last_hidden_state[:, 0]
                out.append(pooled.float().cpu().numpy())
        return np.concatenate(out, axis=0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def coherence_per_text(prompts, generations, encoder: SentenceEncoder, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Cosine similarity of each generation's embedding with its own prompt's."""
    if len(prompts) != len(generations):
        raise ValueError(f"{len(prompts)} prompts but {len(generations)} generations")
    if not prompts:
        return np.zeros(0)
    return cosine_rows(encoder.encode(generations, batch_size), encoder.encode(prompts, batch_size))


def coherence_metrics(prompts, generations, model: str = DEFAULT_COHERENCE_MODEL, *, device: str = "auto", batch_size: int = BATCH_SIZE,
                      encoder: SentenceEncoder | None = None, max_tokens: int = SIMCSE_MAX_TOKENS, pooler: str = "auto") -> dict:
    """Mean over texts of cos(embedding(generation), embedding(prompt)) (SimCSE ``similarity``)."""
    if len(prompts) != len(generations):
        raise ValueError(f"{len(prompts)} prompts but {len(generations)} generations")
    if not prompts:
        return {"coherence": None}
    encoder = encoder or SentenceEncoder(model, device, max_tokens=max_tokens, pooler=pooler)
    sims = coherence_per_text(prompts, generations, encoder, batch_size)
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

    metrics: tuple[str, ...] = setting(
        ("diversity", "mauve", "coherence", "length"), "list from diversity, mauve, coherence, length, perplexity")
    ns: tuple[int, ...] = setting(DEFAULT_NS, "n-gram sizes of rep-n")
    featurizer: str = setting(DEFAULT_FEATURIZER, "MAUVE featurizer LM: Hub name or local folder (gpt2-large selectable)")
    mauve_max_tokens: int = setting(
        MAUVE_MAX_TOKENS, "reference and generation cut to this many featurizer tokens; shorter pairs dropped")
    mauve_scaling_factor: float = setting(MAUVE_SCALING_FACTOR, "MAUVE scaling factor")
    mauve_seed: int = setting(MAUVE_SEED, "k-means seed")
    mauve_num_buckets: int | str = setting(MAUVE_NUM_BUCKETS, "'auto' (= n/10) or an integer")
    coherence_model: str = setting(
        DEFAULT_COHERENCE_MODEL, "SimCSE Hub name / folder (CLS pooler output) or a sentence-transformers folder")
    coherence_max_tokens: int = setting(
        SIMCSE_MAX_TOKENS, "texts cut to this many coherence-encoder tokens (SimCSE's tool: 128)")
    coherence_pooler: str = setting("auto", "auto, cls or cls_before_pooler: the coherence encoder's sentence vector")
    perplexity_model: str | None = setting(None, "evaluator LM for metric 'perplexity' (required with it)")
    bootstrap_resamples: int = setting(BOOTSTRAP_RESAMPLES, "bootstrap resamples of the 95% intervals of per-prompt metrics")
    bootstrap_seed: int = setting(BOOTSTRAP_SEED, "bootstrap seed")
    batch_size: int = setting(BATCH_SIZE, "featurizer / encoder batch size")
    device: str = setting("auto", "auto, cpu, cuda, ...")

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
        try:
            _check_ns(settings.ns)
        except ValueError as err:
            raise ValueError(f"score settings: {err}") from None
        if "perplexity" in settings.metrics and not settings.perplexity_model:
            raise ValueError("score settings: metric 'perplexity' needs 'perplexity_model' (an evaluator LM)")
        if settings.mauve_num_buckets != "auto" and (not isinstance(settings.mauve_num_buckets, int) or settings.mauve_num_buckets < 2):
            raise ValueError(f"score settings: mauve_num_buckets must be 'auto' or an integer >= 2, got {settings.mauve_num_buckets!r}")
        if settings.coherence_pooler not in COHERENCE_POOLERS:
            raise ValueError(f"score settings: coherence_pooler must be one of {', '.join(COHERENCE_POOLERS)}, got {settings.coherence_pooler!r}")
        for key in ("mauve_max_tokens", "coherence_max_tokens", "batch_size", "bootstrap_resamples"):
            value = getattr(settings, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"score settings: {key} must be a positive integer, got {value!r}")
        if isinstance(settings.bootstrap_seed, bool) or not isinstance(settings.bootstrap_seed, int) or settings.bootstrap_seed < 0:
            raise ValueError(f"score settings: bootstrap_seed must be a non-negative integer, got {settings.bootstrap_seed!r}")
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
    """All requested metrics of one generation file's rows (rows as written by :mod:`multiexit.stages.generate`).

    Numbers at the top level; ``"intervals"`` maps each per-prompt metric to its bootstrap interval.
    """
    if not isinstance(settings, ScoreSettings):
        settings = ScoreSettings.from_dict(settings)
    check_rows(rows)
    if not rows:
        raise ValueError("generations: no rows to score")
    gens = [r["generation"] for r in rows]
    result: dict = {"n_texts": len(rows)}
    per_prompt: dict[str, Sequence[float]] = {}
    if "length" in settings.metrics:
        result.update(length_metrics(rows))
        per_prompt.update(length_values(rows))
    if "diversity" in settings.metrics:
        result.update(repetition_metrics(gens, settings.ns))
        per_prompt["diversity_per_text"] = per_text_diversity(gens, settings.ns)
    if "mauve" in settings.metrics:
        result.update(mauve_metrics(
            [r["reference"] for r in rows], gens, settings.featurizer, max_tokens=settings.mauve_max_tokens,
            scaling_factor=settings.mauve_scaling_factor, seed=settings.mauve_seed, num_buckets=settings.mauve_num_buckets,
            batch_size=settings.batch_size, device=settings.device, progress=progress,
        ))
    if "coherence" in settings.metrics:
        encoder = SentenceEncoder(settings.coherence_model, settings.device, max_tokens=settings.coherence_max_tokens,
                                  pooler=settings.coherence_pooler)
        sims = coherence_per_text([r["prompt"] for r in rows], gens, encoder, settings.batch_size)
        result.update({"coherence": float(np.mean(sims)), "coherence_encoder": encoder.kind})
        per_prompt["coherence"] = [float(v) for v in sims]
    if "perplexity" in settings.metrics:
        result.update(perplexity_metrics([r["prompt"] for r in rows], gens, settings.perplexity_model, device=settings.device))
    result["intervals"] = {
        key: bootstrap_interval(values, resamples=settings.bootstrap_resamples, seed=settings.bootstrap_seed)
        for key, values in per_prompt.items()
    }
    return result


def read_generations(path: str | Path) -> list[dict]:
    """The rows of a generation JSONL, checked (ValueError naming the file and the bad row)."""
    from multiexit.io import read_jsonl

    if not Path(path).is_file():
        raise ValueError(f"generation file not found: {path}")
    rows = read_jsonl(path)
    check_rows(rows, str(path))
    return rows


def write_score_file(generations: str | Path, output: str | Path, settings: ScoreSettings, *,
                     rows: Sequence[dict] | None = None, progress: bool = False) -> dict:
    """Score one generation file and write its score file atomically; returns the file's content.

    The score file holds the generation file's path, its ``setting`` (:func:`setting_values` of the
    generation sidecar, where there is one), the ``metrics``, the scoring ``settings``, the whole
    sidecar as ``generation`` and the time it was ``created``. ``rows``: the file's rows, if read already.
    """
    import json
    from datetime import datetime, timezone

    from multiexit.io import atomic_write_text
    from multiexit.stages.generate import meta_path

    rows = read_generations(generations) if rows is None else rows
    metrics = score_rows(rows, settings, progress=progress)
    side = meta_path(generations)
    sidecar = json.loads(side.read_text()) if side.is_file() else None
    report = {
        "generations": str(generations),
        "setting": setting_values(sidecar),
        "metrics": metrics,
        "settings": settings.as_dict(),
        "generation": sidecar,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    return report


def setting_values(sidecar: dict | None) -> dict:
    """The decoding setting of a generation run as flat values, from its ``.meta.json`` sidecar.

    ``method``, every other key of the sidecar's ``decoding`` block (e.g. ``search``), every decoding
    parameter, and ``seed``; unknown keys are carried as they are.
    """
    settings = (sidecar or {}).get("settings") or {}
    decoding = settings.get("decoding") or {}
    values: dict = {}
    for key, value in decoding.items():
        if key != "params":
            values[key] = value
    for key, value in (decoding.get("params") or {}).items():
        values.setdefault(key, value)
    if "seed" in settings:
        values["seed"] = settings["seed"]
    return values


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
    "bootstrap_interval",
    "coherence_per_text",
    "length_values",
    "per_text_diversity",
    "perplexity_metrics",
    "read_generations",
    "repetition_metrics",
    "score_rows",
    "setting_values",
    "simctg_ngram_counts",
    "simctg_rep",
    "simctg_tokens",
    "write_score_file",
]
