"""Training exit heads of a multi-exit model (language modelling, task-specific, or KL-to-final).

One forward pass of the (by default frozen) body feeds every exit; the loss is the sum over
exits of a token-mean objective:

* ``ce``: next-token cross-entropy against the labels (the paper's objective);
* ``kl``: KL(final-layer distribution || exit distribution), tuned-lens style distillation.

Exits are layer numbers (1..L) and optionally ``'original'``: fine-tuning the model's own output
head (untied from the input embeddings first, so the body stays as it was).

The loop runs under :class:`accelerate.Accelerator`, so the same code trains on CPU, one GPU,
or data-parallel on several GPUs under ``accelerate launch`` / ``torchrun``. Periodic
checkpoints hold the trainable weights, optimizer, scheduler, every process's RNG states, the
step (= data position: the data order is a fixed function of the seed) and the loss history,
so a killed run restarted with the same arguments continues where its last checkpoint left off
and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from multiexit.io import atomic_directory, atomic_write_text
from multiexit.model.config import ORIGINAL, MultiExitConfiguration, VocabularyProjectionMode
from multiexit.model.modeling import AutoMultiExitModel, head_name

OBJECTIVES = ("ce", "kl")
INITS = ("random", "warm", "keep")
MIXED_PRECISION = ("no", "bf16", "fp16")
Exit = int | str


# ----------------------------------------------------------------------------------- settings
@dataclass
class HeadTrainingConfig:
    """Settings of one head-training run (defaults: the paper's AdamW, lr 2e-4, linear schedule, batch 16)."""

    exits: Sequence[Exit]
    objective: str = "ce"
    init: str = "random"
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    max_steps: int | None = None
    max_tokens: int | None = None
    batch_size: int = 16  # per process, per micro-batch
    grad_accum: int = 1
    max_grad_norm: float | None = None
    mixed_precision: str = "no"
    freeze_base: bool = True
    seed: int = 0
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints (0: none)
    keep_checkpoints: int = 2
    throttle_seconds: float = 0.0  # testing aid: sleep after each step (makes kill-and-resume testable)

    def __post_init__(self) -> None:
        self.exits = parse_exits(self.exits)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: unknown {self.objective!r}; allowed: {', '.join(OBJECTIVES)}")
        if self.init not in INITS:
            raise ValueError(f"init: unknown {self.init!r}; allowed: {', '.join(INITS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: unknown {self.mixed_precision!r}; allowed: {', '.join(MIXED_PRECISION)}")
        if self.objective == "kl" and ORIGINAL in self.exits:
            raise ValueError("exits: 'original' cannot be trained with objective='kl' (it is the distillation target)")
        for name in ("batch_size", "grad_accum", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: must be >= 1, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {self.max_tokens}")
        if self.max_steps is not None and self.max_tokens is not None:
            raise ValueError("max_steps and max_tokens: give one of them, not both")

    @property
    def layers(self) -> list[int]:
        return sorted(e for e in self.exits if e != ORIGINAL)

    def fingerprint(self, extra: dict | None = None) -> dict:
        """Everything a resumed run must share with the run that wrote the checkpoint."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "keep_checkpoints", "throttle_seconds")}
        keep["exits"] = [str(e) for e in self.exits]
        return {**keep, **(extra or {})}


def parse_exits(exits) -> list[Exit]:
    """'6,12,original' / [6, 12, 'original'] -> [6, 12, 'original'] (validated, no duplicates)."""
    if isinstance(exits, str):
        exits = [p for p in exits.replace(";", ",").split(",") if p.strip()]
    parsed: list[Exit] = []
    for value in exits:
        if isinstance(value, str) and value.strip().lower() == ORIGINAL:
            parsed.append(ORIGINAL)
        elif isinstance(value, int) and not isinstance(value, bool):
            parsed.append(value)
        elif isinstance(value, str) and value.strip().isdigit():
            parsed.append(int(value.strip()))
        else:
            raise ValueError(f"exits: expected layer numbers or 'original', got {value!r}")
    if not parsed:
        raise ValueError("exits: expected at least one exit")
    if len(set(map(str, parsed))) != len(parsed):
        raise ValueError(f"exits: duplicates in {parsed}")
    return sorted((e for e in parsed if e != ORIGINAL)) + ([ORIGINAL] if ORIGINAL in parsed else [])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def init_exit_heads(model, layers: Sequence[int], init: str, seed: int) -> None:
    """Warm start (copy of the original head) or seeded random init (normal, std=initializer_range)."""
    original = model.get_output_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config.get_text_config(), "initializer_range", 0.02) or 0.02)
    with torch.no_grad():
        for layer in layers:
            weight = model.name_to_lm_exit_head[head_name(layer)].weight
            if init == "warm":
                weight.copy_(original.detach())
            elif init == "random":
                weight.copy_(torch.randn(weight.shape, generator=generator, dtype=torch.float32).mul_(std))


def prepare_model_for_training(source: str, config: HeadTrainingConfig, **hf_kwargs):
    """Load ``source`` as a multi-exit model with heads at ``config.layers`` initialised per ``config.init``."""
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
    else:
        init_exit_heads(model, layers, config.init, config.seed)
    if ORIGINAL in config.exits:
        untie_output_head(model)
        if config.freeze_base:
            model.get_output_embeddings().weight.requires_grad = True
    return model


def trainable_parameters(model) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------- objective
def body_states(model, input_ids, attention_mask, layers: Sequence[int]) -> dict:
    """One body pass: final-normed states of ``layers`` (key = layer) and the top state (key = 'top')."""
    top = model.num_exit_layers
    intermediate = sorted({int(l) for l in layers if l != ORIGINAL and int(l) < top})
    with model.capture_layers(intermediate) as captured:
        outputs = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    states = {layer: model.final_transform(captured[layer]) for layer in intermediate}
    states["top"] = outputs.last_hidden_state
    return states


def read_exit(model, states: dict, exit_: Exit, mode=VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION) -> torch.Tensor:
    """Logits of one exit from :func:`body_states` (``'original'`` = the model's own head on the top state)."""
    if exit_ == ORIGINAL:
        return model.original_head_logits(states["top"])
    state = states["top"] if exit_ == model.num_exit_layers else states[exit_]
    return model.project_exit(exit_, state, mode)


def exit_logits(model, input_ids, attention_mask, exits: Sequence[Exit], mode=VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION,
                with_final: bool = False) -> dict:
    """Vocabulary logits of each exit (and 'final' = the original head on the top layer) from one body pass."""
    states = body_states(model, input_ids, attention_mask, [e for e in exits if e != ORIGINAL])
    logits = {exit_: read_exit(model, states, exit_, mode) for exit_ in exits}
    if with_final:
        logits["final"] = logits[ORIGINAL] if ORIGINAL in logits else model.original_head_logits(states["top"])
    return logits


def _shifted(logits: torch.Tensor, labels: torch.Tensor):
    return logits[:, :-1].float(), labels[:, 1:]


def kl_to_final(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean KL(teacher || student) over the positions that predict a counted label."""
    mask = labels[:, 1:] != -100
    s = torch.log_softmax(student[:, :-1].float(), dim=-1)[mask]
    t = torch.log_softmax(teacher[:, :-1].float().detach(), dim=-1)[mask]
    return (t.exp() * (t - s)).sum(-1).mean()


class ExitObjective(nn.Module):
    """Wraps a multi-exit model so that ``forward(batch)`` returns the training loss (what DDP wraps)."""

    def __init__(self, model, exits: Sequence[Exit], objective: str = "ce"):
        super().__init__()
        self.model = model
        self.exits = list(exits)
        self.objective = objective

    def forward(self, input_ids, attention_mask, labels):
        logits = exit_logits(self.model, input_ids, attention_mask, self.exits, with_final=self.objective == "kl")
        losses = {}
        for exit_ in self.exits:
            if self.objective == "ce":
                losses[exit_] = self.model.loss_function(
                    logits=logits[exit_], labels=labels, vocab_size=self.model.config.get_text_config().vocab_size
                )
            else:
                losses[exit_] = kl_to_final(logits[exit_], logits["final"], labels)
        total = torch.stack([losses[e] for e in self.exits]).sum()
        return total, torch.stack([losses[e].detach() for e in self.exits])


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_readers(model, batches: Sequence[dict], readers: dict, desc: str | None = None) -> dict:
    """Held-out next-token cross-entropy (nats), perplexity and top-1 accuracy of several exit readers.

    ``readers`` maps a name to ``(exit, mode)``; every reader shares one body pass per batch.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    totals = {name: [0.0, 0, 0] for name in readers}
    device = next(model.parameters()).device
    layers = [exit_ for exit_, _ in readers.values() if exit_ != ORIGINAL]
    for batch in tqdm(batches, desc=desc or "evaluate", leave=False, disable=desc is None):
        input_ids = batch["input_ids"].to(device)
        labels = batch["labels"].to(device)
        # position t predicts label t+1; the last position predicts nothing (no copy of the logits needed)
        target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1).reshape(-1)
        mask = target != -100
        count = int(mask.sum())
        states = body_states(model, input_ids, batch["attention_mask"].to(device), layers)
        for name, (exit_, mode) in readers.items():
            scores = read_exit(model, states, exit_, mode)
            scores = scores.reshape(-1, scores.shape[-1])
            record = totals[name]
            ce = torch.nn.functional.cross_entropy(scores.float(), target, ignore_index=-100, reduction="sum")
            record[0] += float(ce)
            record[1] += count
            record[2] += int(((scores.argmax(-1) == target) & mask).sum())
            del scores
    model.train(was_training)
    result = {}
    for name, (ce_sum, count, correct) in totals.items():
        ce = ce_sum / max(count, 1)
        result[name] = {"cross_entropy": ce, "perplexity": math.exp(min(ce, 700)),
                        "top1_accuracy": correct / max(count, 1), "tokens": count}
    return result


def evaluate_exits(model, batches: Sequence[dict], exits: Sequence[Exit],
                   mode=VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION, desc: str | None = None) -> dict:
    """:func:`evaluate_readers` for ``exits`` read in one ``mode`` (keys: str(exit))."""
    return evaluate_readers(model, batches, {str(e): (e, mode) for e in exits}, desc=desc)


def heldout_batches(chunks: torch.Tensor, batch_size: int) -> list[dict]:
    from multiexit.inputs.corpora import collate_chunks

    return [collate_chunks(list(chunks[i:i + batch_size])) for i in range(0, chunks.shape[0], batch_size)]


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


def plan_steps(config: HeadTrainingConfig, num_items: int, tokens_per_item: float, num_processes: int) -> int:
    items_per_step = config.batch_size * config.grad_accum * num_processes
    if config.max_steps is not None:
        return config.max_steps
    if config.max_tokens is not None:
        return max(1, math.ceil(config.max_tokens / (items_per_step * tokens_per_item)))
    steps = num_items // items_per_step
    if steps < 1:
        raise ValueError(
            f"batch_size: {num_items} training items cannot fill one step of {items_per_step} "
            f"(batch_size x grad_accum x processes); lower batch_size or add data"
        )
    return steps


def train_exits(
    model,
    train_items,
    config: HeadTrainingConfig,
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

    seed_all(config.seed)
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
            context = accelerator.no_sync(objective) if not sync and num_processes > 1 else _null()
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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


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


def history_rows(history: list[dict]) -> list[dict]:
    """Long-format rows (step, tokens, lr, exit, loss) of a training history."""
    return [{"step": h["step"], "tokens": h["tokens"], "lr": h["lr"], "exit": exit_, "loss": loss}
            for h in history for exit_, loss in h["exit_losses"].items()]


def write_history_csv(history: list[dict], path: str | Path) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "tokens", "lr", "exit", "loss"])
    writer.writeheader()
    writer.writerows(history_rows(history))
    atomic_write_text(Path(path), buffer.getvalue())


def plot_loss_history(history: list[dict], path: str | Path, title: str = "exit training loss", smooth: int = 0) -> None:
    """PNG of each exit's training loss against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    exits = list(history[0]["exit_losses"]) if history else []
    steps = [h["step"] for h in history]
    for exit_ in exits:
        values = np.array([h["exit_losses"][exit_] for h in history])
        if smooth and len(values) > smooth:
            kernel = np.ones(smooth) / smooth
            values = np.convolve(values, kernel, mode="valid")
            ax.plot(steps[smooth - 1:], values, label=f"exit {exit_}")
        else:
            ax.plot(steps, values, label=f"exit {exit_}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats / token)")
    ax.set_title(title)
    if exits:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def config_digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------- end-to-end run
@dataclass
class DataSettings:
    """Where the training text comes from (see :mod:`multiexit.inputs.corpora`)."""

    corpus: str | None = "lee_background"  # LM corpus spec (ignored when task_data is set)
    seq_len: int = 512
    train_tokens: int | None = None  # tokens to read for training (None: the whole local corpus / max_tokens)
    eval_tokens: int = 16_384  # held-out tokens (LM mode)
    shuffle_buffer: int = 10_000
    task_data: str | None = None  # JSONL of prompt -> target pairs (task-specific mode)
    prompt_field: str = "prompt"
    target_field: str = "target"
    task_eval_fraction: float = 0.1
    eval_batch_size: int = 8


def load_tokenizer(source: str, tokenizer: str | None = None):
    from transformers import AutoTokenizer

    from multiexit.inputs.models import gpt2_tokenizer, resolve_model_source

    if tokenizer == "gpt2":
        return gpt2_tokenizer()
    return AutoTokenizer.from_pretrained(resolve_model_source(tokenizer or source))


def build_datasets(tokenizer, data: DataSettings, config: HeadTrainingConfig):
    """(train items, collate function, held-out batches, data summary) for LM or task-specific mode."""
    from multiexit.inputs.corpora import collate_chunks, collate_task, encode_task_examples, load_token_chunks, read_task_examples

    if data.task_data:
        examples = encode_task_examples(read_task_examples(data.task_data, data.prompt_field, data.target_field),
                                        tokenizer, data.seq_len)
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed)).tolist()
        n_eval = int(round(len(examples) * data.task_eval_fraction))
        if len(examples) - n_eval < 1:
            raise ValueError(f"task_eval_fraction: {data.task_eval_fraction} leaves no training examples")
        heldout = [examples[i] for i in order[:n_eval]]
        train = [examples[i] for i in order[n_eval:]]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def collate(batch):
            return collate_task(batch, pad)

        batches = [collate(heldout[i:i + data.eval_batch_size]) for i in range(0, len(heldout), data.eval_batch_size)]
        summary = {"task_data": data.task_data, "train_examples": len(train), "heldout_examples": len(heldout),
                   "train_target_tokens": sum(sum(1 for t in e["labels"][1:] if t != -100) for e in train)}
        return train, collate, batches, summary
    train_tokens = data.train_tokens
    if train_tokens is None and config.max_tokens is not None:
        train_tokens = config.max_tokens
    chunks = load_token_chunks(data.corpus, tokenizer, data.seq_len, train_tokens=train_tokens,
                               eval_tokens=data.eval_tokens, seed=config.seed, shuffle_buffer=data.shuffle_buffer)
    return list(chunks.train), collate_chunks, heldout_batches(chunks.heldout, data.eval_batch_size), chunks.summary()


def eval_readers(model, config: HeadTrainingConfig, with_lens: bool) -> dict:
    readers = {str(l): (l, VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION) for l in config.layers}
    readers[ORIGINAL] = (ORIGINAL, None)
    if with_lens:
        for l in config.layers:
            readers[f"lens:{l}"] = (l, VocabularyProjectionMode.SHARED_PROJECTION_DIRECT)
    return readers


def _split_lens(result: dict) -> tuple[dict, dict]:
    main = {k: v for k, v in result.items() if not k.startswith("lens:")}
    lens = {k[5:]: v for k, v in result.items() if k.startswith("lens:")}
    return main, lens


def run_head_training(
    model_source: str,
    output_dir: str | Path,
    config: HeadTrainingConfig,
    data: DataSettings,
    checkpoint_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    history_csv: str | Path | None = None,
    history_json: str | Path | None = None,
    tokenizer_source: str | None = None,
    dtype: str = "float32",
    cpu: bool = False,
    keep_checkpoints_after: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Load, evaluate, train, evaluate, save: the whole ``scripts/train_heads.py`` run. Returns the metrics."""
    from accelerate import Accelerator

    from multiexit.inputs.models import resolve_model_source

    output_dir = Path(output_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else output_dir.with_name(output_dir.name + ".checkpoints")
    metrics_path = Path(metrics_path) if metrics_path else output_dir / "training_metrics.json"
    plot_path = Path(plot_path) if plot_path else output_dir / "loss.png"
    history_csv = Path(history_csv) if history_csv else output_dir / "loss_history.csv"
    history_json = Path(history_json) if history_json else output_dir / "loss_history.json"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype: unknown {dtype!r}; allowed: float32, bfloat16, float16")
    if data.task_data is None:
        from multiexit.inputs.corpora import validate_corpus_spec

        validate_corpus_spec(data.corpus or "")
    if not 0 <= data.task_eval_fraction < 1:
        raise ValueError(f"task_eval_fraction: must be in [0, 1), got {data.task_eval_fraction}")

    from accelerate.utils import DistributedDataParallelKwargs

    # a trained body may hold parameters no exit loss reaches (an untied original head): let DDP allow that
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not config.freeze_base)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=cpu, kwargs_handlers=[ddp])
    source = resolve_model_source(model_source)
    tokenizer = load_tokenizer(source, tokenizer_source)
    train_items, collate, eval_batches, data_summary = build_datasets(tokenizer, data, config)
    model = prepare_model_for_training(source, config, dtype=getattr(torch, dtype))
    model.to(accelerator.device)
    log(f"model {model_source}: {model.num_exit_layers} layers; training exits {config.exits} "
        f"({sum(p.numel() for p in trainable_parameters(model).values()):,} trainable parameters); data {data_summary}")

    fingerprint_extra = {"model": model_source, "data": data_summary, "dtype": dtype}
    before_file = checkpoint_dir / "eval_before.json"
    before_key = config_digest(config.fingerprint(fingerprint_extra))
    cached = json.loads(before_file.read_text()) if before_file.is_file() else {}
    if cached.get("key") == before_key:
        before_all = cached["result"]
    else:
        before_all = evaluate_readers(model, eval_batches, eval_readers(model, config, with_lens=True), desc="evaluate before")
        if accelerator.is_main_process:
            atomic_write_text(before_file, json.dumps({"key": before_key, "result": before_all}))
    before, lens = _split_lens(before_all)

    result = train_exits(model, train_items, config, collate, checkpoint_dir=checkpoint_dir, accelerator=accelerator,
                         fingerprint_extra=fingerprint_extra, log=log)
    after = evaluate_readers(model, eval_batches, eval_readers(model, config, with_lens=False), desc="evaluate after")
    metrics = {
        "model": model_source,
        "exits": [str(e) for e in config.exits],
        "settings": {k: v for k, v in asdict(config).items() if k != "exits"},
        "data": data_summary,
        "training": {"steps": result.steps, "tokens": result.tokens, "seconds_this_run": result.seconds,
                     "tokens_per_second_this_run": result.tokens_per_second, "resumed_from_step": result.resumed_from,
                     "num_processes": accelerator.num_processes},
        "before": before,
        "logit_lens": lens,
        "after": after,
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_trained_model(unwrapped, output_dir, tokenizer)
        write_history_csv(result.history, history_csv)
        atomic_write_text(history_json, json.dumps(result.history))
        plot_loss_history(result.history, plot_path, title=f"{Path(model_source).name}: exits {metrics['exits']}",
                          smooth=max(0, min(25, len(result.history) // 20)))
        atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
        if not keep_checkpoints_after and checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return metrics


def format_metrics_table(metrics: dict) -> str:
    """Plain-text table of held-out CE before (logit lens / initial head) and after training."""
    lines = [f"{'exit':>9} {'lens CE':>9} {'init CE':>9} {'after CE':>9} {'after ppl':>10} {'after top1':>10}"]
    for exit_ in metrics["exits"]:
        lens = metrics["logit_lens"].get(exit_, {}).get("cross_entropy", float("nan"))
        before = metrics["before"].get(exit_, {}).get("cross_entropy", float("nan"))
        after = metrics["after"][exit_]
        lines.append(f"{exit_:>9} {lens:9.3f} {before:9.3f} {after['cross_entropy']:9.3f} "
                     f"{after['perplexity']:10.1f} {after['top1_accuracy']:10.3f}")
    if ORIGINAL not in metrics["exits"]:
        final = metrics["after"][ORIGINAL]
        lines.append(f"{'final':>9} {'':>9} {'':>9} {final['cross_entropy']:9.3f} {final['perplexity']:10.1f} "
                     f"{final['top1_accuracy']:10.3f}")
    return "\n".join(lines)
