"""One whole head-training run (``scripts/train_heads.py``): read the text, load the model, evaluate,
train, evaluate again, save the checkpoint and the reports."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from multiexit.io import atomic_write_text
from multiexit.model.config import ORIGINAL, VocabularyProjectionMode
from multiexit.stages.train_heads.loop import (
    config_digest,
    prepare_model_for_training,
    save_trained_model,
    train_exits,
    trainable_parameters,
)
from multiexit.stages.train_heads.objective import evaluate_readers
from multiexit.stages.train_heads.report import plot_loss_history, write_history_csv
from multiexit.stages.train_heads.settings import DataSettings, HeadTrainingSettings


def heldout_batches(chunks: torch.Tensor, batch_size: int) -> list[dict]:
    from multiexit.inputs.corpora import collate_chunks

    return [collate_chunks(list(chunks[i:i + batch_size])) for i in range(0, chunks.shape[0], batch_size)]


def load_tokenizer(source: str, tokenizer: str | None = None):
    from transformers import AutoTokenizer

    from multiexit.inputs.models import gpt2_tokenizer, resolve_model_source

    if tokenizer == "gpt2":
        return gpt2_tokenizer()
    return AutoTokenizer.from_pretrained(resolve_model_source(tokenizer or source))


def build_datasets(tokenizer, data: DataSettings, config: HeadTrainingSettings):
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
    chunks = load_token_chunks(data.data, tokenizer, data.seq_len, train_tokens=train_tokens,
                               eval_tokens=data.eval_tokens, seed=config.seed, shuffle_buffer=data.shuffle_buffer,
                               separator=data.separator)
    return list(chunks.train), collate_chunks, heldout_batches(chunks.heldout, data.eval_batch_size), chunks.summary()


def eval_readers(model, config: HeadTrainingSettings, with_lens: bool) -> dict:
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
    config: HeadTrainingSettings,
    data: DataSettings,
    checkpoint_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    history_csv: str | Path | None = None,
    history_json: str | Path | None = None,
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

    from accelerate.utils import DistributedDataParallelKwargs

    # a trained body may hold parameters no exit loss reaches (an untied original head): let DDP allow that
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not config.freeze_base)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu, kwargs_handlers=[ddp])
    source = resolve_model_source(model_source)
    tokenizer = load_tokenizer(source, data.tokenizer)
    train_items, collate, eval_batches, data_summary = build_datasets(tokenizer, data, config)
    cast_chunks = torch.stack(train_items) if config.init == "cast" and not data.task_data else None
    model = prepare_model_for_training(source, config, cast_chunks=cast_chunks, dtype=getattr(torch, config.dtype))
    model.to(accelerator.device)
    log(f"model {model_source}: {model.num_exit_layers} layers; training exits {config.exits} "
        f"({sum(p.numel() for p in trainable_parameters(model).values()):,} trainable parameters); data {data_summary}")

    fingerprint_extra = {"model": model_source, "data": data_summary, "data_settings": data.as_dict()}
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
        "data_settings": data.as_dict(),
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
        if not config.keep_checkpoint_dir and checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return metrics
