#!/usr/bin/env python
"""Build a LAMBADA-format jsonl from real news text (default: gensim's Lee corpus, ~320 examples)
and optionally write lm-eval task YAMLs over it for ``--include_path``.

    python scripts/make_lambada_local.py --output results/data/lambada_local.jsonl --task-dir results/tasks
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="jsonl to write ({'text': ...} per line; final word = target)")
    parser.add_argument("--source", action="append", default=None,
                        help="text file with one document per line (repeatable; default: gensim lee_background.cor + lee.cor)")
    parser.add_argument("--num-examples", type=int, default=None, help="seeded sample of this size (default: all)")
    parser.add_argument("--per-article", type=int, default=None, help="at most this many examples per document")
    parser.add_argument("--min-context-words", type=int, default=60)
    parser.add_argument("--max-context-words", type=int, default=160)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--task-dir", default=None,
                        help="also write <task-dir>/<task-name>.yaml (a lambada_local task over --output)")
    parser.add_argument("--task-name", default="lambada_local", help="task name of the YAML (default lambada_local)")
    args = parser.parse_args(argv)

    from multiexit.stages.lm_eval.lambada_local import build_lambada_examples, write_jsonl
    from multiexit.stages.lm_eval.local_tasks import write_task_yaml

    rows = build_lambada_examples(
        args.source,
        num_examples=args.num_examples,
        per_article=args.per_article,
        min_context_words=args.min_context_words,
        max_context_words=args.max_context_words,
        seed=args.seed,
    )
    path = write_jsonl(rows, args.output)
    print(f"wrote {len(rows)} examples to {path}")
    if args.task_dir:
        print(f"wrote task {args.task_name}: {write_task_yaml('lambada_local', path, args.task_dir, args.task_name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
