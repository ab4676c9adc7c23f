"""Cast matrices (Din et al., "Jump to conclusions"): linear maps from layer l to the top layer.

For each cast layer ``l`` we fit ``W_l`` by least squares so that ``W_l @ norm(h_l) ~= h_top``, where
``norm`` is the model's final norm and ``h_top`` the base model's last hidden state (already
normed), on token positions sampled from a text corpus. The SHARED_PROJECTION_CAST_OUTPUTS mode
of :mod:`multiexit.model.modeling` then reads exit ``l`` as ``original_head(W_l @ norm(h_l))``.

The fit streams: only ``X^T X``, ``X^T Y`` and ``Y`` moments are accumulated (float64), so the
number of positions is not limited by memory. R^2 (fraction of the top state's variance the map
explains, pooled over hidden dimensions) is reported on the fitting positions and on held-out
positions, next to the R^2 of the identity map (the logit lens' implicit assumption).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from multiexit._lazy import LazyModule
from multiexit.inputs.corpora import DEFAULT_CORPUS, validate_corpus_spec
from multiexit.model.config import ORIGINAL, VocabularyProjectionMode
from multiexit.settings import Settings, check_device, setting

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")
nn = LazyModule("torch.nn")


@dataclass(frozen=True)
class FitCastSettings(Settings):
    """Settings of one cast fit (the pipeline's ``cast.layers`` and ``cast.options``; ``scripts/fit_cast.py``'s options)."""

    layers: tuple[int, ...] = setting(help="layers to fit casts for (1..L-1)", minimum=1)
    data: str = setting(DEFAULT_CORPUS, "corpus spec: wikitext-103, cc100[:lang], hub:..., lee_background, or a local file/folder",
                        check=validate_corpus_spec)
    tokenizer: str | None = setting(None, "tokenizer source if the model folder has none ('gpt2' = offline GPT-2 tokenizer)")
    seq_len: int = setting(128, "tokens per text chunk the model reads", minimum=2)
    num_positions: int = setting(25_000, "token positions used for the fit, per layer", minimum=1)
    heldout_positions: int = setting(5_000, "other positions for the held-out R^2", minimum=1)
    corpus_tokens: int | None = setting(None, "tokens to read from the corpus (default: just enough for the positions)", minimum=1)
    eval_tokens: int = setting(0, "hold out the first documents (as train_heads does) and report each exit's held-out CE / "
                                  "top-1 through its cast and the logit lens (0: off)", minimum=0)
    skip_first: int = setting(1, "leading positions of each chunk never sampled (1: the attention-sink position)", minimum=0)
    ridge: float = setting(0.0, "ridge penalty (per position) for the least-squares fit", minimum=0)
    batch_size: int = setting(16, "chunks per forward pass", minimum=1)
    seed: int = setting(0, "seed of corpus shuffling and position sampling")
    device: str = setting("cpu", "torch device (auto: cuda if available, else cpu)", check=check_device)
    dtype: str = setting("float32", "model dtype (auto: bfloat16 on a bf16 GPU, else float32)", choices=("auto", "float32", "bfloat16", "float16"))

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("layers: expected at least one cast layer")
        if self.skip_first >= self.seq_len:
            raise ValueError(f"skip_first: must be below seq_len ({self.seq_len}), got {self.skip_first}")


@dataclass
class LinearFitStats:
    """Running sufficient statistics of a multi-output linear regression Y ~ X B (no intercept)."""

    dim_in: int
    dim_out: int
    xtx: torch.Tensor = None
    xty: torch.Tensor = None
    yty_trace: float = 0.0
    y_sum: torch.Tensor = None
    count: int = 0

    def __post_init__(self):
        self.xtx = torch.zeros(self.dim_in, self.dim_in, dtype=torch.float64)
        self.xty = torch.zeros(self.dim_in, self.dim_out, dtype=torch.float64)
        self.y_sum = torch.zeros(self.dim_out, dtype=torch.float64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.dim_in).to("cpu", torch.float64)
        y = y.detach().reshape(-1, self.dim_out).to("cpu", torch.float64)
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.yty_trace += float((y * y).sum())
        self.y_sum += y.sum(0)
        self.count += x.shape[0]

    def solve(self, ridge: float = 0.0) -> torch.Tensor:
        """B (dim_in, dim_out) minimising ||Y - X B||^2 + ridge * n * ||B||^2."""
        if self.count == 0:
            raise ValueError("cast fit: no positions collected")
        a = self.xtx.clone()
        if ridge:
            a += ridge * self.count * torch.eye(self.dim_in, dtype=torch.float64)
        return torch.linalg.lstsq(a, self.xty, driver="gelsd").solution

    def residual(self, b: torch.Tensor) -> float:
        """Sum of squared residuals of ``b`` on the collected positions."""
        b = b.to(torch.float64)
        return float(self.yty_trace - 2 * (b * self.xty).sum() + (b * (self.xtx @ b)).sum())

    def total(self) -> float:
        return float(self.yty_trace - (self.y_sum * self.y_sum).sum() / max(self.count, 1))

    def r2(self, b: torch.Tensor) -> float:
        return 1.0 - self.residual(b) / self.total()


def fit_linear_map(x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0) -> tuple[torch.Tensor, float]:
    """W (dim_out, dim_in) with y ~= x @ W.T by least squares, and its R^2 (in-sample)."""
    stats = LinearFitStats(x.shape[-1], y.shape[-1])
    stats.update(x, y)
    b = stats.solve(ridge)
    return b.T.contiguous(), stats.r2(b)


def sample_positions(num_chunks: int, seq_len: int, count: int, seed: int,
                     skip_first: int = FitCastSettings.skip_first) -> dict[int, torch.Tensor]:
    """``count`` distinct (chunk, position) pairs drawn uniformly (positions < skip_first excluded), by chunk."""
    usable = seq_len - skip_first
    if usable <= 0:
        raise ValueError(f"skip_first: {skip_first} leaves no positions in chunks of {seq_len}")
    total = num_chunks * usable
    if count > total:
        raise ValueError(f"num_positions: {count} requested but the corpus has only {total} usable positions")
    flat = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]
    chunks, positions = flat // usable, flat % usable + skip_first
    by_chunk: dict[int, list[int]] = {}
    for c, p in zip(chunks.tolist(), positions.tolist()):
        by_chunk.setdefault(c, []).append(p)
    return {c: torch.tensor(sorted(ps)) for c, ps in sorted(by_chunk.items())}


@dataclass
class CastFitResult:
    weights: dict[int, torch.Tensor]  # layer -> (hidden, hidden), for nn.Linear (y = W x)
    metrics: dict = field(default_factory=dict)


def fit_cast_matrices(
    model,
    chunks: torch.Tensor,
    layers: Sequence[int],
    num_positions: int = FitCastSettings.num_positions,
    heldout_positions: int = FitCastSettings.heldout_positions,
    seed: int = FitCastSettings.seed,
    batch_size: int = FitCastSettings.batch_size,
    ridge: float = FitCastSettings.ridge,
    skip_first: int = FitCastSettings.skip_first,
    progress: bool = True,
) -> CastFitResult:
    """Fit W_l for ``layers`` on positions sampled from ``chunks`` (LongTensor n x seq_len).

    ``num_positions`` positions are used for the fit and ``heldout_positions`` other ones for the
    held-out R^2 (the same positions for every layer).
    """
    with torch.no_grad():  # (not a decorator: torch is imported on first use)
        from tqdm.auto import tqdm

        top = model.num_exit_layers
        layers = sorted(set(int(l) for l in layers))
        bad = [l for l in layers if not 1 <= l < top]
        if bad:
            raise ValueError(f"layers: cast layers must be in 1..{top - 1} (the top layer needs no cast), got {bad}")
        if num_positions < 1 or heldout_positions < 0:
            raise ValueError(f"num_positions / heldout_positions: need >= 1 / >= 0, got {num_positions} / {heldout_positions}")
        n, seq_len = chunks.shape
        picked = sample_positions(n, seq_len, num_positions + heldout_positions, seed, skip_first)
        # the first num_positions of a seeded shuffle of all picked pairs fit, the rest are held out
        pairs = [(c, int(p)) for c, ps in picked.items() for p in ps]
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed + 1)).tolist()
        heldout_set = {pairs[i] for i in order[num_positions:]}

        hidden = model.config.get_text_config().hidden_size
        fit = {l: LinearFitStats(hidden, hidden) for l in layers}
        held = {l: LinearFitStats(hidden, hidden) for l in layers}
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        chunk_ids = list(picked)
        for start in tqdm(range(0, len(chunk_ids), batch_size), desc="cast: collect states", disable=not progress):
            ids = chunk_ids[start:start + batch_size]
            input_ids = chunks[ids].to(device)
            _, states = model.exit_states([*layers, ORIGINAL], input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                          use_cache=False)
            top_state = states[ORIGINAL].float()
            rows, cols, is_held = [], [], []
            for row, c in enumerate(ids):
                for p in picked[c].tolist():
                    rows.append(row)
                    cols.append(p)
                    is_held.append((c, p) in heldout_set)
            rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
            held_mask = torch.tensor(is_held)
            y = top_state[rows_t, cols_t]
            for layer in layers:
                x = states[layer].float()[rows_t, cols_t]
                fit[layer].update(x[~held_mask], y[~held_mask])
                if held_mask.any():
                    held[layer].update(x[held_mask], y[held_mask])
        model.train(was_training)

        weights, per_layer = {}, {}
        identity = torch.eye(hidden, dtype=torch.float64)
        for layer in layers:
            b = fit[layer].solve(ridge)
            weights[layer] = b.T.contiguous().float()
            per_layer[str(layer)] = {
                "r2_fit": fit[layer].r2(b),
                "r2_heldout": held[layer].r2(b) if held[layer].count else None,
                "r2_identity_heldout": held[layer].r2(identity) if held[layer].count else None,
                "positions_fit": fit[layer].count,
                "positions_heldout": held[layer].count,
            }
        metrics = {"layers": per_layer, "num_positions": num_positions, "heldout_positions": heldout_positions,
                   "seed": seed, "ridge": ridge, "skip_first": skip_first, "top_layer": top}
        return CastFitResult(weights=weights, metrics=metrics)


def add_cast_matrices(model, weights: dict[int, torch.Tensor]) -> None:
    """Install fitted casts into ``model`` and record them in its config (``cast_layer_indices``).

    A model without trained heads also gets ``vocab_projection_mode=SHARED_PROJECTION_CAST_OUTPUTS``
    and ``lm_head_layer_indices`` = the cast layers (the layout the core library creates for that
    mode); a model with heads keeps its LAYER_SPECIFIC_PROJECTION layout and gains the casts.
    """
    from multiexit.model.modeling import cast_name  # here: the plan imports this module for its settings only

    hidden = model.config.get_text_config().hidden_size
    param = next(model.parameters())
    for layer, weight in weights.items():
        if tuple(weight.shape) != (hidden, hidden):
            raise ValueError(f"cast layer {layer}: expected a {hidden}x{hidden} matrix, got {tuple(weight.shape)}")
        linear = nn.Linear(hidden, hidden, bias=False).to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight.to(param.dtype))
        linear.weight.requires_grad = False
        model.name_to_cast_matrix[cast_name(layer)] = linear
    cast_layers = sorted(set(model.cast_layers) | {int(l) for l in weights})
    model.config.cast_layer_indices = cast_layers
    if not model.exit_head_layers:
        model.config.vocab_projection_mode = VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS.value
        model.config.lm_head_layer_indices = list(cast_layers)


def run_cast_fit(model_source: str, output_dir, settings: FitCastSettings, metrics_path=None) -> dict:
    """Load ``model_source`` (a base model or a multi-exit checkpoint), fit casts, save model + casts to ``output_dir``.

    With ``settings.eval_tokens`` > 0 the first documents (the same held-out slice that ``train_heads`` uses with
    the same corpus, seed and seq_len) are kept out of the fit, and the next-token cross-entropy /
    top-1 accuracy of each exit read through its cast and through the logit lens are reported on them.
    """
    import json
    from pathlib import Path

    from multiexit.model.config import MultiExitConfiguration
    from multiexit.inputs.models import load_model, resolve_model_source
    from multiexit.inputs.corpora import load_token_chunks
    from multiexit.io import atomic_write_text
    from multiexit.stages.train_heads import load_tokenizer, save_trained_model

    s = settings
    layers, corpus, seq_len, skip_first, seed, batch_size = s.layers, s.data, s.seq_len, s.skip_first, s.seed, s.batch_size
    num_positions, heldout_positions, eval_tokens = s.num_positions, s.heldout_positions, s.eval_tokens
    source = resolve_model_source(model_source)
    tokenizer = load_tokenizer(source, s.tokenizer)
    model, _ = load_model(source, device=s.device, dtype=s.dtype, multi_exit_config=MultiExitConfiguration(), tokenizer=False)
    top = model.num_exit_layers
    bad = [l for l in layers if not 1 <= l < top]
    if bad:
        raise ValueError(f"layers: cast layers must be in 1..{top - 1}, got {bad}")
    usable = seq_len - skip_first
    needed = s.corpus_tokens or int((num_positions + heldout_positions) * seq_len / usable * 1.05) + seq_len
    chunks = load_token_chunks(corpus, tokenizer, seq_len, train_tokens=needed, eval_tokens=eval_tokens, seed=seed)
    result = fit_cast_matrices(model, chunks.train, layers, num_positions=num_positions, heldout_positions=heldout_positions,
                               seed=seed, batch_size=batch_size, ridge=s.ridge, skip_first=skip_first)
    add_cast_matrices(model, result.weights)
    metrics = {"model": model_source, "corpus": chunks.summary(), **result.metrics}
    if eval_tokens:
        from multiexit.stages.train_heads import evaluate_readers, heldout_batches

        cast_mode = VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS
        readers = {f"cast:{l}": (l, cast_mode) for l in layers}
        readers.update({f"lens:{l}": (l, VocabularyProjectionMode.SHARED_PROJECTION_DIRECT) for l in layers})
        readers["original"] = ("original", None)
        scores = evaluate_readers(model, heldout_batches(chunks.heldout, batch_size), readers, desc="cast: evaluate")
        metrics["heldout_lm"] = {
            str(l): {"cast": scores[f"cast:{l}"], "logit_lens": scores[f"lens:{l}"]} for l in layers
        }
        metrics["heldout_lm"]["original"] = scores["original"]
    output_dir = Path(output_dir)
    save_trained_model(model, output_dir, tokenizer, extra_files={"cast_fit.json": json.dumps(metrics, indent=2)})
    if metrics_path:
        atomic_write_text(Path(metrics_path), json.dumps(metrics, indent=2))
    return metrics
