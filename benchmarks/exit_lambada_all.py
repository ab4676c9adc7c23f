#!/usr/bin/env python
"""Measurement: per-exit accuracy on every example of the local LAMBADA-style task, one body pass each.

The demo's lm-eval runs score a 64-example sample, one lm-eval run per exit; at that size the shallow
exits' accuracies (a few correct answers each) cannot be ordered. This script reads every exit of a
trained checkpoint from a single forward pass per example (``MultiExitMixin.exit_states``) over all
examples the builder finds in gensim's Lee corpus (``build_lambada_examples(num_examples=None)``, about
320), and prints per exit: accuracy (every target token the argmax, lm-eval's ``acc`` for
``lambada_local``), its binomial standard error, and the mean negative log-likelihood of the target word.
The context/target split is the task's: the text up to its last space, then " " + the last word.

    python benchmarks/exit_lambada_all.py results/demo/smollm2-135m/heads
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoTokenizer

from multiexit import AutoMultiExitModel, VocabularyProjectionMode
from multiexit.model.config import ORIGINAL
from multiexit.stages.lm_eval.lambada_local import build_lambada_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a multi-exit checkpoint folder with trained exit heads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the builder's seed (it orders nothing when all are kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoMultiExitModel.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    mode = VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION
    readers = [*sorted(model.exit_head_layers), ORIGINAL]
    rows = build_lambada_examples(None, num_examples=None, seed=args.seed)
    correct = dict.fromkeys(readers, 0)
    nll = dict.fromkeys(readers, 0.0)
    started = time.monotonic()
    with torch.inference_mode():
        for row in rows:
            context, target = row["text"].rsplit(" ", 1)
            context_ids = tokenizer(context, add_special_tokens=False).input_ids
            target_ids = tokenizer(" " + target, add_special_tokens=False).input_ids
            _, states = model.exit_states(readers, 0, input_ids=torch.tensor([context_ids + target_ids]))
            where = slice(len(context_ids) - 1, len(context_ids) + len(target_ids) - 1)  # positions predicting the target
            wanted = torch.tensor(target_ids)
            for reader in readers:
                state = states[reader][:, where]
                logits = model.original_head_logits(state) if reader == ORIGINAL else model.project_exit(reader, state, mode)
                logprobs = torch.log_softmax(logits[0].float(), -1)
                correct[reader] += int(torch.equal(logprobs.argmax(-1), wanted))
                nll[reader] -= float(logprobs.gather(-1, wanted[:, None]).sum())
    n = len(rows)
    print(f"{args.checkpoint}: {n} examples, {time.monotonic() - started:.0f} s")
    print("| reader | acc | ± (binomial s.e.) | correct | mean NLL of the target (nats) |")
    print("|---|---|---|---|---|")
    for reader in readers:
        p = correct[reader] / n
        print(f"| {reader if reader == ORIGINAL else f'exit-{reader}'} | {p:.3f} | {(p * (1 - p) / n) ** 0.5:.3f} "
              f"| {correct[reader]} | {nll[reader] / n:.2f} |")


if __name__ == "__main__":
    main()
