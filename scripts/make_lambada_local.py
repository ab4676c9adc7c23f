#!/usr/bin/env python
"""Build a LAMBADA-format jsonl from real news text (default: gensim's Lee corpus, ~320 examples)
and optionally write lm-eval task YAMLs over it for ``--include_path``.

The build options are the fields of multiexit.stages.lm_eval.lambada_local.LambadaBuildSettings
(or all of them as one --spec JSON object).

    python scripts/make_lambada_local.py --output results/data/lambada_local.jsonl --task-dir results/tasks
"""

from __future__ import annotations

import argparse
import sys

from multiexit.stages.lm_eval.lambada_local import LambadaBuildSettings, write_jsonl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="jsonl to write ({'text': ...} per line; final word = target)")
    parser.add_argument("--spec", default=None, help="the build settings below as one JSON object; options given as well override it")
    LambadaBuildSettings.add_arguments(parser)
    parser.add_argument("--task-dir", default=None,
                        help="also write <task-dir>/<task-name>.yaml (a lambada_local task over --output)")
    parser.add_argument("--task-name", default="lambada_local", help="task name of the YAML (default lambada_local)")
    args = parser.parse_args(argv)

    from multiexit.stages.lm_eval.local_tasks import write_task_yaml

    try:
        rows = LambadaBuildSettings.from_cli(args).build()
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    path = write_jsonl(rows, args.output)
    print(f"wrote {len(rows)} examples to {path}")
    if args.task_dir:
        print(f"wrote task {args.task_name}: {write_task_yaml('lambada_local', path, args.task_dir, args.task_name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
