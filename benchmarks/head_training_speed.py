#!/usr/bin/env python
"""Throughput of exit-head training vs a no-grad forward pass, with the FLOP-count prediction.

Trains heads at --exits (default 6,12,18,24) of SmolLM2-135M (frozen body, AdamW step included) on
the same batches that a plain no-grad forward pass (original head only) reads, and prints tokens/s
of both, their ratio, and the ratio predicted from FLOP counts:

    forward   ~ 2*N_body + 2*N_head + attention                      per token
    training  ~ 2*N_body + attention + k*(2*N_head + 2*N_head) + AdamW / tokens-per-step

(N_body = non-embedding parameters, N_head = hidden x vocab, k exits; a frozen body needs no
backward pass and the heads need only their weight gradient, not an input gradient.)

    python benchmarks/head_training_speed.py --threads 1 --batches 3
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch


def flop_model(model, exits: int, seq_len: int, tokens_per_step: int) -> dict:
    cfg = model.config.get_text_config()
    hidden, vocab, layers = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    n_head = hidden * vocab
    n_total = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("name_to_"))
    n_embed = model.get_input_embeddings().weight.numel()
    n_body = n_total - n_embed - (0 if model.get_output_embeddings().weight is model.get_input_embeddings().weight else n_head)
    attention = 2 * layers * seq_len * hidden  # QK^T and AV, causal average of seq_len/2 keys, 2 flops per MAC
    forward = 2 * n_body + 2 * n_head + attention
    adamw = 12 * exits * n_head / tokens_per_step
    train = 2 * n_body + attention + exits * (2 * n_head + 2 * n_head) + adamw
    return {"n_body": n_body, "n_head": n_head, "forward_flops_per_token": forward, "train_flops_per_token": train,
            "predicted_slowdown": train / forward}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="package:smollm2-135m", help="model source (default package:smollm2-135m)")
    p.add_argument("--exits", default="6,12,18,24", help="exit layers to train (default 6,12,18,24)")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per batch (default 2)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--batches", type=int, default=3, help="timed batches per mode, after one untimed warm-up (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from multiexit.model.config import MultiExitConfiguration
    from multiexit.inputs.models import resolve_model_source
    from multiexit.inputs.corpora import collate_chunks, load_token_chunks
    from multiexit.stages.train_heads import ExitObjective, HeadTrainingSettings, prepare_model_for_training, trainable_parameters

    source = resolve_model_source(args.model)
    config = HeadTrainingSettings(exits=args.exits, init="warm", batch_size=args.batch_size)
    tokenizer = AutoTokenizer.from_pretrained(source)
    n = (args.batches + 1) * args.batch_size
    chunks = load_token_chunks("lee_background", tokenizer, args.seq_len, train_tokens=n * args.seq_len, seed=0).train
    batches = [collate_chunks(list(chunks[i * args.batch_size:(i + 1) * args.batch_size])) for i in range(args.batches + 1)]
    model = prepare_model_for_training(source, config)
    model.eval()
    objective = ExitObjective(model, config.exits)
    optimizer = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=2e-4)
    tokens = args.batch_size * args.seq_len

    def forward(batch):
        with torch.no_grad():
            model.set_multi_exit_config(MultiExitConfiguration(use_original_head=True))
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=0)

    def train(batch):
        model.set_multi_exit_config(MultiExitConfiguration(use_original_head=False))
        loss, _ = objective(batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = {}
    for name, fn in (("no-grad forward", forward), ("train exits", train)):
        fn(batches[0])  # warm-up
        started = time.perf_counter()
        for batch in batches[1:]:
            fn(batch)
        seconds = time.perf_counter() - started
        results[name] = {"seconds": seconds, "tokens_per_second": tokens * args.batches / seconds}
    flops = flop_model(model, len(config.layers), args.seq_len, tokens)
    measured = results["no-grad forward"]["tokens_per_second"] / results["train exits"]["tokens_per_second"]
    print(f"model {args.model}, exits {config.layers}, batch {args.batch_size} x {args.seq_len}, {args.batches} timed batches, "
          f"{args.threads} thread(s)")
    for name, r in results.items():
        print(f"  {name:16s} {r['tokens_per_second']:8.1f} tokens/s  ({r['seconds']:.1f} s)")
    print(f"  slowdown of training vs forward: measured {measured:.2f}x, FLOP-count prediction {flops['predicted_slowdown']:.2f}x "
          f"(forward {flops['forward_flops_per_token'] / 1e6:.0f} MFLOP/token, training {flops['train_flops_per_token'] / 1e6:.0f} MFLOP/token)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results, "flops": flops, "measured_slowdown": measured}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
