#!/usr/bin/env python
"""How often HF's top-p and typical warpers at the same threshold keep different token sets.

Generates news continuations with nucleus sampling (top_p) and with typical sampling (typical_p) from the
same seed, checks whether the two outputs are identical, and along the top-p trajectory applies both
warpers to the raw logits of every step of every unfinished row, counting the steps where the kept sets
differ and their mean sizes. This is the measurement behind README's note on the demo's identical
`top-p-0.95` and `typical-0.95` rows.

    python benchmarks/warper_overlap.py                       # SmolLM2 (packaged), 8 prompts, 40 tokens, 0.95
    python benchmarks/warper_overlap.py --prompts 2 --new-tokens 8   # a quick check
"""

from __future__ import annotations

import argparse

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:smollm2-135m", help="model source (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=8, help="gensim Lee news prompts (default: %(default)s)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="tokens per prompt (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=40, help="tokens generated per prompt (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.95, help="top_p and typical_p (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    return parser.parse_args(argv)


def kept(warper, logits: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the tokens a warper leaves finite."""
    return torch.isfinite(warper(None, logits.clone()))


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.logits_process import TopPLogitsWarper, TypicalLogitsWarper

    from multiexit.inputs.models import resolve_model_source
    from multiexit.inputs.prompts import load_prompts

    torch.set_num_threads(2)
    folder = resolve_model_source(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = load_prompts({"name": "gensim-lee", "num_prompts": args.prompts, "prompt_tokens": args.prompt_tokens,
                            "min_reference_tokens": args.new_tokens}, tokenizer)
    width = max(len(p.prompt_ids) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p.prompt_ids):] = torch.tensor(p.prompt_ids)
        mask[i, width - len(p.prompt_ids):] = 1

    def sample(**warp):
        torch.manual_seed(args.seed)
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=args.new_tokens,
                                  min_new_tokens=0, pad_token_id=pad, output_logits=True, return_dict_in_generate=True, **warp)

    top_p = sample(top_p=args.threshold)
    typical = sample(typical_p=args.threshold, top_p=1.0)
    same = torch.equal(top_p.sequences, typical.sequences)

    nucleus, typ = TopPLogitsWarper(args.threshold), TypicalLogitsWarper(args.threshold)
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    new = top_p.sequences[:, width:]
    steps = differ = size_p = size_t = 0
    for step, logits in enumerate(top_p.logits):
        for row in range(logits.shape[0]):
            if any(int(t) in eos for t in new[row, :step]):
                continue  # this row had finished; the batch kept computing it
            a, b = kept(nucleus, logits[row:row + 1].float()), kept(typ, logits[row:row + 1].float())
            steps += 1
            differ += int(not torch.equal(a, b))
            size_p += int(a.sum())
            size_t += int(b.sum())
    print(f"model {args.model}, {len(prompts)} prompts x {args.new_tokens} new tokens, threshold {args.threshold}, seed {args.seed}")
    print(f"top-p and typical outputs identical: {same}")
    print(f"steps with different kept sets: {differ} of {steps} (rows before their EOS)")
    print(f"mean kept-set size: top-p {size_p / max(steps, 1):.0f}, typical {size_t / max(steps, 1):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
