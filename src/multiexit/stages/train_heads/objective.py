"""The training objective: exit logits from one body pass, the per-exit loss (CE or KL), held-out evaluation."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from multiexit.model.config import ORIGINAL, VocabularyProjectionMode
from multiexit.stages.train_heads.settings import Exit, HeadTrainingSettings


def body_states(model, input_ids, attention_mask, exits: Sequence[Exit]) -> dict:
    """One body pass (the model's :meth:`exit_states`): the final-normed state of each exit, and of 'original'."""
    _, states = model.exit_states([*exits, ORIGINAL], input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return states


def read_exit(model, states: dict, exit_: Exit, mode=VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION) -> torch.Tensor:
    """Logits of one exit from :func:`body_states` (``'original'`` = the model's own head on the top state)."""
    if exit_ == ORIGINAL:
        return model.original_head_logits(states[ORIGINAL])
    return model.project_exit(exit_, states[exit_], mode)


def exit_logits(model, input_ids, attention_mask, exits: Sequence[Exit], mode=VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION,
                with_final: bool = False) -> dict:
    """Vocabulary logits of each exit (and 'final' = the original head on the top layer) from one body pass."""
    states = body_states(model, input_ids, attention_mask, exits)
    logits = {exit_: read_exit(model, states, exit_, mode) for exit_ in exits}
    if with_final:
        logits["final"] = logits[ORIGINAL] if ORIGINAL in logits else read_exit(model, states, ORIGINAL)
    return logits


def kl_to_final(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean KL(teacher || student) over the positions that predict a counted label."""
    mask = labels[:, 1:] != -100
    s = torch.log_softmax(student[:, :-1].float(), dim=-1)[mask]
    t = torch.log_softmax(teacher[:, :-1].float().detach(), dim=-1)[mask]
    return (t.exp() * (t - s)).sum(-1).mean()


class ExitObjective(nn.Module):
    """Wraps a multi-exit model so that ``forward(batch)`` returns the training loss (what DDP wraps)."""

    def __init__(self, model, exits: Sequence[Exit], objective: str = HeadTrainingSettings.objective):
        super().__init__()
        self.model = model
        self.exits = list(exits)
        self.objective = objective

    def forward(self, input_ids, attention_mask, labels):
        logits = exit_logits(self.model, input_ids, attention_mask, self.exits, with_final=self.objective == "kl")
        losses = {}
        for exit_ in self.exits:
            if self.objective == "ce":
                losses[exit_] = self.model.exit_loss(logits[exit_], labels)
            else:
                losses[exit_] = kl_to_final(logits[exit_], logits["final"], labels)
        total = torch.stack([losses[e] for e in self.exits]).sum()
        return total, torch.stack([losses[e].detach() for e in self.exits])

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
    exits = [exit_ for exit_, _ in readers.values()]
    for batch in tqdm(batches, desc=desc or "evaluate", leave=False, disable=desc is None):
        input_ids = batch["input_ids"].to(device)
        labels = batch["labels"].to(device)
        # position t predicts label t+1; the last position predicts nothing (no copy of the logits needed)
        target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1).reshape(-1)
        mask = target != -100
        count = int(mask.sum())
        states = body_states(model, input_ids, batch["attention_mask"].to(device), exits)
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
