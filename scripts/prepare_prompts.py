#!/usr/bin/env python
"""Materialise one prompt set: a corpus + protocol (the dataset request) + a tokenizer -> JSONL + <name>.meta.json.

The request is given either as one JSON object (--spec, what the pipeline passes) or field by field
(--name wikitext-103 --protocol acd --num-prompts 2000 ...); the options below are generated from
multiexit.inputs.prompts.PromptSetSettings, so their defaults live there.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from multiexit.inputs.prompts import PromptSetSettings, describe_catalog, describe_protocols

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Catalog:\n" + describe_catalog() + "\n\nProtocols:\n" + describe_protocols(),
    )
    parser.add_argument("--tokenizer", required=True, help="model folder, Hub name or package:<name> whose tokenizer cuts the prompts")
    parser.add_argument("--output", required=True, help="output JSONL (must end in .jsonl); the sidecar is <name>.meta.json")
    parser.add_argument("--spec", default=None, help="the whole dataset request as a JSON object (instead of the field options)")
    parser.add_argument("--cache-dir", default=None, help="datasets cache folder (default: datasets' own, i.e. $HF_HOME/datasets)")
    PromptSetSettings.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from multiexit.inputs.prompts import PromptSetSettings
    from multiexit.settings import ConfigError
    from multiexit.stages.prompts import load_tokenizer, prepare_prompt_set

    fields = [name for name in PromptSetSettings.field_names() if name in vars(args)]
    try:
        if args.spec is not None:
            if fields:
                parser.error(f"give either --spec or field options, not both (got {', '.join('--' + f.replace('_', '-') for f in fields)})")
            request = PromptSetSettings.from_json(args.spec, "--spec")
        else:
            request = PromptSetSettings.from_args(args)
    except ConfigError as err:
        parser.error(str(err))
    tokenizer = load_tokenizer(args.tokenizer)
    meta = prepare_prompt_set(request, tokenizer, args.output, cache_dir=args.cache_dir)
    counts = meta["counts"]
    print(f"{args.output}: {meta['n_prompts']} prompts ({meta['protocol']['name']}); rows {counts['rows']}, "
          f"scanned {counts['scanned']}, usable {counts['usable']}; {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
