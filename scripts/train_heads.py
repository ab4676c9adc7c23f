#!/usr/bin/env python
"""Train exit heads of a causal LM (base frozen by default) and write a multi-exit checkpoint.

Outputs: the checkpoint folder (--output-dir; safetensors, exits in config.json, tokenizer),
a metrics JSON (held-out per-exit cross-entropy / perplexity / top-1 accuracy before and after
training, plus the logit-lens reading of each exit), a per-step loss history (CSV and JSON) and a
PNG of per-exit loss against step. Resumable: rerun the same command after a crash or kill.
Data-parallel: `accelerate launch scripts/train_heads.py ...` or `torchrun --nproc-per-node N ...`.

Example (the paper's setting, CC-100 English, streamed):
  scripts/train_heads.py --model gpt2-medium --exits 6,12,18,24 --data cc100:en --max-tokens 50000000 \
      --output-dir results/models/gpt2-medium-exits
"""

from __future__ import annotations

import argparse
import sys

from multiexit.stages.train_heads import DataSettings, HeadTrainingConfig, format_metrics_table, run_head_training


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and outputs")
    g.add_argument("--model", required=True, help="base model: Hub name, local folder, or package:<name> (e.g. package:smollm2-135m)")
    g.add_argument("--tokenizer", default=None, help="tokenizer source if the model folder has none ('gpt2' = the offline GPT-2 tokenizer)")
    g.add_argument("--exits", required=True, help="comma-separated exit layers (1..L) to train; add 'original' to fine-tune the model's own head")
    g.add_argument("--output-dir", required=True, help="checkpoint folder to write (written atomically when training is done)")
    g.add_argument("--metrics", default=None, help="metrics JSON path (default: OUTPUT_DIR/training_metrics.json)")
    g.add_argument("--loss-plot", default=None, help="PNG of per-exit loss vs step (default: OUTPUT_DIR/loss.png)")
    g.add_argument("--loss-csv", default=None, help="per-step loss CSV: step,tokens,lr,exit,loss (default: OUTPUT_DIR/loss_history.csv)")
    g.add_argument("--loss-json", default=None, help="per-step loss history JSON (default: OUTPUT_DIR/loss_history.json)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype the model is loaded in (default float32; use --mixed-precision for autocast)")
    g.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is visible")

    g = p.add_argument_group("objective")
    g.add_argument("--objective", default="ce", choices=["ce", "kl"], help="ce: next-token cross-entropy (paper); kl: KL(final layer || exit) distillation (tuned-lens style)")
    g.add_argument("--init", default="random", choices=["random", "warm", "cast", "keep"], help="new heads: random normal init (paper), warm = copy of the original head, cast = original head x least-squares cast map, keep = the source checkpoint's heads")
    g.add_argument("--cast-positions", type=int, default=25000, help="init=cast: training-text positions for the least-squares cast fit (default 25000)")
    g.add_argument("--unfreeze-base", action="store_true", help="also train the base model (default: frozen, only exit heads train)")

    g = p.add_argument_group("data")
    g.add_argument("--data", default="lee_background", help="LM corpus: cc100[:lang], wikitext-103, wikitext-2, hub:<name>[:config][@split][#field], lee_background, or a local file/folder (join several with '+')")
    g.add_argument("--seq-len", type=int, default=512, help="tokens per training chunk / max task example length (default 512, as in the paper)")
    g.add_argument("--separator", default="eos", choices=["eos", "none"], help="between concatenated documents: eos (default) or none (the ACD authors' group_texts)")
    g.add_argument("--train-tokens", type=int, default=None, help="training tokens to read from the corpus (default: whole local corpus, or --max-tokens)")
    g.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens for before/after evaluation (LM mode; default 16384)")
    g.add_argument("--shuffle-buffer", type=int, default=10000, help="shuffle buffer for streamed corpora (0: stream order)")
    g.add_argument("--task-data", default=None, help="JSONL of prompt -> target examples: task-specific training, prompt tokens excluded from the loss")
    g.add_argument("--prompt-field", default="prompt", help="prompt field name in --task-data")
    g.add_argument("--target-field", default="target", help="target field name in --task-data")
    g.add_argument("--task-eval-fraction", type=float, default=0.1, help="fraction of task examples held out for evaluation (default 0.1)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--learning-rate", type=float, default=2e-4, help="AdamW peak learning rate (default 2e-4, the paper's)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay on matrices (default 0)")
    g.add_argument("--lr-scheduler", default="linear", help="transformers scheduler name: linear (default), cosine, constant, constant_with_warmup, ...")
    g.add_argument("--warmup-steps", type=int, default=0, help="learning-rate warm-up steps (default 0)")
    g.add_argument("--epochs", type=int, default=None, help="passes over the training data (the ACD authors: 3; default: one pass)")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: one pass over the training data)")
    g.add_argument("--max-tokens", type=int, default=None, help="token budget instead of --max-steps (counted label tokens)")
    g.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch per process (default 16, the paper's)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--max-grad-norm", type=float, default=None, help="clip gradients to this norm (default: no clipping)")
    g.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="autocast precision (fp16 needs a GPU)")
    g.add_argument("--seed", type=int, default=0, help="seed of data order, head init and RNG (default 0)")
    g.add_argument("--eval-batch-size", type=int, default=8, help="sequences per evaluation batch (default 8)")

    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints (default: OUTPUT_DIR.checkpoints); a rerun resumes from the newest")
    g.add_argument("--checkpoint-every", type=int, default=0, help="optimizer steps between resumable checkpoints (default 0: none)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="resumable checkpoints kept on disk (default 2)")
    g.add_argument("--keep-checkpoint-dir", action="store_true", help="keep the checkpoint folder after success (default: deleted)")
    g.add_argument("--throttle-seconds", type=float, default=0.0, help="testing aid: sleep this long after each step")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = HeadTrainingConfig(
            exits=args.exits, epochs=args.epochs, objective=args.objective, init=args.init, cast_positions=args.cast_positions, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, lr_scheduler=args.lr_scheduler, warmup_steps=args.warmup_steps,
            max_steps=args.max_steps, max_tokens=args.max_tokens, batch_size=args.batch_size, grad_accum=args.grad_accum,
            max_grad_norm=args.max_grad_norm, mixed_precision=args.mixed_precision, freeze_base=not args.unfreeze_base,
            seed=args.seed, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
            throttle_seconds=args.throttle_seconds, dtype=args.dtype, cpu=args.cpu, keep_checkpoint_dir=args.keep_checkpoint_dir,
        )
        data = DataSettings(
            data=args.data, tokenizer=args.tokenizer, seq_len=args.seq_len, separator=args.separator, train_tokens=args.train_tokens, eval_tokens=args.eval_tokens,
            shuffle_buffer=args.shuffle_buffer, task_data=args.task_data, prompt_field=args.prompt_field,
            target_field=args.target_field, task_eval_fraction=args.task_eval_fraction, eval_batch_size=args.eval_batch_size,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        metrics = run_head_training(
            args.model, args.output_dir, config, data, checkpoint_dir=args.checkpoint_dir, metrics_path=args.metrics,
            plot_path=args.loss_plot, history_csv=args.loss_csv, history_json=args.loss_json,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_metrics_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
