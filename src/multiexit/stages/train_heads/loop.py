"""The training loop: model preparation (exit heads initialised, body frozen), the seeded data order,
:func:`train_exits` under :class:`accelerate.Accelerator`, and resumable checkpoints.

Periodic checkpoints hold the trainable weights, optimizer, scheduler, every process's RNG states,
the step (= data position: the data order is a fixed function of the seed) and the loss history, so a
killed run restarted with the same settings continues where its last checkpoint left off and ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from multiexit.io import atomic_directory
from multiexit.model.config import ORIGINAL, MultiExitConfiguration
from multiexit.model.modeling import AutoMultiExitModel, head_name
from multiexit.seeding import seed_everything
from multiexit.stages.train_heads.objective import ExitObjective
from multiexit.stages.train_heads.settings import HeadTrainingSettings

# chunks per forward pass of the cast fit behind init='cast' (not a setting; our choice)
CAST_INIT_BATCH = 8


# ----------------------------------------------------------------------------------- model
def untie_output_head(model) -> None:
    """Give the output head its own copy of the weights (so training it leaves the embeddings alone)."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = False


def init_exit_heads(model, layers: Sequence[int], init: str, seed: int, casts: dict | None = None) -> None:
    """Initialise the heads at ``layers``: ``random`` (seeded normal, std=initializer_range), ``warm`` (a copy
    of the original head) or ``cast`` (the original head folded with the cast map: W_head @ A_l, so that
    the head reads exactly what ``original_head(A_l h_l)`` reads; the top layer, which needs no cast,
    gets the original head). ``casts`` maps layer -> A_l (hidden x hidden), as :func:`fit_cast_matrices`.
    """
    original = model.get_output_embeddings().weight.detach()
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config.get_text_config(), "initializer_range", 0.02) or 0.02)
    with torch.no_grad():
        for layer in layers:
            weight = model.name_to_lm_exit_head[head_name(layer)].weight
            if init == "warm" or (init == "cast" and layer == model.num_exit_layers):
                weight.copy_(original)
            elif init == "cast":
                folded = original.double() @ casts[layer].to(original.device, torch.float64)
                weight.copy_(folded.to(weight.dtype))
            elif init == "random":
                weight.copy_(torch.randn(weight.shape, generator=generator, dtype=torch.float32).mul_(std))


def fit_casts_for_init(model, chunks: torch.Tensor, layers: Sequence[int], config: HeadTrainingSettings) -> dict:
    """Least-squares cast maps A_l (layer l -> top) for ``init='cast'``, fitted on training ``chunks``."""
    from multiexit.stages.fit_cast import fit_cast_matrices

    below_top = [layer for layer in layers if layer < model.num_exit_layers]
    if not below_top:
        return {}
    # the first chunks that hold cast_positions positions (each chunk's first position is never used): the
    # forward passes, not the solve, are the cost, so the fit reads no more text than it needs
    per_chunk = chunks.shape[1] - 1
    chunks = chunks[:math.ceil(config.cast_positions / per_chunk)]
    result = fit_cast_matrices(model, chunks, below_top, num_positions=min(config.cast_positions, chunks.shape[0] * per_chunk),
                               heldout_positions=0, seed=config.seed, batch_size=CAST_INIT_BATCH, progress=False)
    return result.weights


def prepare_model_for_training(source: str, config: HeadTrainingSettings, cast_chunks: torch.Tensor | None = None,
                               **hf_kwargs):
    """Load ``source`` as a multi-exit model with heads at ``config.layers`` initialised per ``config.init``.

    ``init='cast'`` fits the cast maps on ``cast_chunks`` (LongTensor n x seq_len of training text) first.
    """
    layers = config.layers
    multi_exit_config = MultiExitConfiguration(
        lm_head_layer_indices=layers or None,
        use_original_head=False,
        freeze_parameters=config.freeze_base,
    )
    model = AutoMultiExitModel.from_pretrained(source, multi_exit_config, **hf_kwargs)
    bad = [layer for layer in layers if layer > model.num_exit_layers]
    if bad:
        raise ValueError(f"exits: layers {bad} are outside 1..{model.num_exit_layers}")
    if config.init == "keep":
        missing = [layer for layer in layers if layer not in model.exit_head_layers]
        if missing:
            raise ValueError(f"init='keep': {source} has no trained heads at {missing}")
    elif config.init == "cast":
        if cast_chunks is None:
            raise ValueError("init: 'cast' fits cast maps on language-model text; give training chunks (not task data)")
        init_exit_heads(model, layers, "cast", config.seed, fit_casts_for_init(model, cast_chunks, layers, config))
    else:
        init_exit_heads(model, layers, config.init, config.seed)
    if ORIGINAL in config.exits:
        untie_output_head(model)
        if config.freeze_base:
            model.get_output_embeddings().weight.requires_grad = True
    return model


def trainable_parameters(model) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------- data order
class EpochOrder(Dataset):
    """Items of ``base`` in a fixed seeded order, reshuffled every epoch, repeated ``epochs`` times."""

    def __init__(self, base: Dataset, epochs: int, seed: int):
        self.base = base
        self.n = len(base)
        self.epochs = epochs
        self.seed = seed
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n * self.epochs

    def __getitem__(self, index: int):
        epoch, offset = divmod(index, self.n)
        if epoch not in self._orders:
            self._orders[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        return self.base[int(self._orders[epoch][offset])]


class ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


# ----------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints (written atomically as ``step-NNNNNNNN``), oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    done = [p for p in checkpoint_dir.glob("step-*") if p.is_dir() and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


# ----------------------------------------------------------------------------------- training
@dataclass
class TrainingResult:
    steps: int
    tokens: int
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    seconds: float = 0.0
    tokens_per_second: float = 0.0


def plan_steps(config: HeadTrainingSettings, num_items: int, tokens_per_item: float, num_processes: int) -> int:
    items_per_step = config.batch_size * config.grad_accum * num_processes
    if config.max_steps is not None:
        return config.max_steps
    if config.max_tokens is not None:
        return max(1, math.ceil(config.max_tokens / (items_per_step * tokens_per_item)))
    steps = num_items * (config.epochs or 1) // items_per_step  # whole steps; epochs run on into each other
    if steps < 1:
        raise ValueError(
            f"batch_size: {num_items} training items cannot fill one step of {items_per_step} "
            f"(batch_size x grad_accum x processes); lower batch_size or add data"
        )
    return steps


def train_exits(
    model,
    train_items,
    config: HeadTrainingSettings,
    collate_fn: Callable,
    checkpoint_dir: str | Path | None = None,
    accelerator=None,
    tokens_per_item: float | None = None,
    fingerprint_extra: dict | None = None,
    log: Callable[[str], None] = print,
) -> TrainingResult:
    """Train ``config.exits`` of ``model`` on ``train_items`` (a sequence of dataset items).

    Resumes from the newest complete checkpoint in ``checkpoint_dir`` (if any) whose fingerprint
    matches; returns the per-step history (loss per exit, tokens, learning rate).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
    if config.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("mixed_precision: fp16 needs a GPU; use bf16 or no on CPU")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    num_processes = accelerator.num_processes
    if tokens_per_item is None:
        sample = [train_items[i] for i in range(min(64, len(train_items)))]
        tokens_per_item = float(np.mean([int((collate_fn([item])["labels"][0, 1:] != -100).sum()) for item in sample]))
    total_steps = plan_steps(config, len(train_items), tokens_per_item, num_processes)
    per_process_batches = total_steps * config.grad_accum
    needed_items = per_process_batches * config.batch_size * num_processes
    epochs = max(1, math.ceil(needed_items / len(train_items)))
    fingerprint = config.fingerprint({"num_processes": num_processes, "total_steps": total_steps,
                                      "train_items": len(train_items), **(fingerprint_extra or {})})

    seed_everything(config.seed)
    ordered = EpochOrder(ListDataset(train_items), epochs, config.seed)
    loader = DataLoader(ordered, batch_size=config.batch_size, shuffle=False, drop_last=True, collate_fn=collate_fn)
    objective = ExitObjective(model, config.exits, config.objective)
    model.train(not config.freeze_base)  # a frozen body runs as at inference (no dropout)
    params = list(trainable_parameters(model).values())
    if not params:
        raise ValueError("exits: nothing to train (no parameter requires grad)")
    names = list(trainable_parameters(model).keys())
    decay = [p for n, p in zip(names, params) if p.ndim >= 2]
    no_decay = [p for n, p in zip(names, params) if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
    )
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps)
    # the scheduler stays unprepared: accelerate would step a prepared one num_processes times per step,
    # while total_steps here already counts global steps
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    unwrapped = accelerator.unwrap_model(objective).model

    start_step, history, resumed_from, tokens_seen = 0, [], None, 0
    if checkpoint_dir is not None:
        found = list_checkpoints(checkpoint_dir)
        if found:
            latest = found[-1]
            state = json.loads((latest / "state.json").read_text())
            if state["fingerprint"] != fingerprint:
                diff = sorted(k for k in set(state["fingerprint"]) | set(fingerprint)
                              if state["fingerprint"].get(k) != fingerprint.get(k))
                raise ValueError(
                    f"checkpoint_dir: {latest} was written by a run with different settings ({', '.join(diff)}); "
                    "use a fresh checkpoint folder or the original settings"
                )
            weights = load_file(str(latest / "trainable.safetensors"))
            current = trainable_parameters(unwrapped)
            with torch.no_grad():
                for name, value in weights.items():
                    current[name].copy_(value.to(current[name].device))
            optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location="cpu", weights_only=False))
            scheduler.load_state_dict(torch.load(latest / "scheduler.pt", map_location="cpu", weights_only=False))
            rng = torch.load(latest / "rng.pt", map_location="cpu", weights_only=False)
            _set_rng_state(rng[accelerator.process_index])
            start_step, history, tokens_seen = state["step"], state["history"], state["tokens"]
            resumed_from = start_step
            log(f"resuming from {latest} (step {start_step}/{total_steps})")

    def save_checkpoint(step: int) -> None:
        rng_states = gather_object([_rng_state()])
        if accelerator.is_main_process:
            target = checkpoint_dir / f"step-{step:08d}"
            with atomic_directory(target) as staging:
                weights = {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(unwrapped).items()}
                save_file(weights, str(staging / "trainable.safetensors"))
                torch.save(optimizer.state_dict(), staging / "optimizer.pt")
                torch.save(scheduler.state_dict(), staging / "scheduler.pt")
                torch.save(rng_states, staging / "rng.pt")
                (staging / "state.json").write_text(json.dumps(
                    {"step": step, "tokens": tokens_seen, "history": history, "fingerprint": fingerprint}))
            for old in list_checkpoints(checkpoint_dir)[:-config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    batches = accelerator.skip_first_batches(loader, start_step * config.grad_accum) if start_step else loader
    iterator = iter(batches)
    labels_ = [str(e) for e in config.exits]
    progress = tqdm(total=total_steps, initial=start_step, desc="train exits", disable=not accelerator.is_local_main_process,
                    dynamic_ncols=True)
    started = time.perf_counter()
    run_tokens = 0
    for step in range(start_step, total_steps):
        step_losses = torch.zeros(len(config.exits), device=accelerator.device)
        step_tokens = torch.zeros((), device=accelerator.device)
        for micro in range(config.grad_accum):
            batch = next(iterator)
            sync = micro == config.grad_accum - 1
            context = accelerator.no_sync(objective) if not sync and num_processes > 1 else contextlib.nullcontext()
            with context:
                total, per_exit = objective(batch["input_ids"], batch["attention_mask"], batch["labels"])
                accelerator.backward(total / config.grad_accum)
            step_losses += per_exit.float() / config.grad_accum
            step_tokens += (batch["labels"][:, 1:] != -100).sum()
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped this step
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_losses = accelerator.reduce(step_losses, reduction="mean")
        step_tokens = int(accelerator.reduce(step_tokens, reduction="sum"))
        tokens_seen += step_tokens
        run_tokens += step_tokens
        losses = {label: float(v) for label, v in zip(labels_, step_losses.tolist())}
        history.append({"step": step + 1, "tokens": tokens_seen, "lr": float(scheduler.get_last_lr()[0]),
                        "loss": float(sum(losses.values())), "exit_losses": losses})
        elapsed = time.perf_counter() - started
        progress.set_postfix(loss=f"{history[-1]['loss']:.3f}", tok_s=f"{run_tokens / max(elapsed, 1e-9):.0f}")
        progress.update(1)
        if config.throttle_seconds:
            time.sleep(config.throttle_seconds)
        if checkpoint_dir is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 \
                and step + 1 < total_steps:
            save_checkpoint(step + 1)
    progress.close()
    seconds = time.perf_counter() - started
    model.eval()
    return TrainingResult(steps=total_steps, tokens=tokens_seen, history=history, resumed_from=resumed_from,
                          seconds=seconds, tokens_per_second=run_tokens / max(seconds, 1e-9))


# ----------------------------------------------------------------------------------- outputs
def save_trained_model(model, output_dir: str | Path, tokenizer=None, extra_files: dict | None = None) -> Path:
    """Save ``model`` (safetensors, exits in config.json) and its tokenizer atomically to ``output_dir``."""
    output_dir = Path(output_dir)
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return output_dir


def config_digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
