"""``python -m multiexit.stages.lm_eval ...``: lm-eval's command line with the multi-exit model registered.

Example (offline, a local LAMBADA-format task written by scripts/make_lambada_local.py)::

    python -m multiexit.stages.lm_eval --model multi_exit \
        --model_args pretrained=package:smollm2-135m,use_original_head=False,contrast_layer_indices='original;12' \
        --include_path results/tasks --tasks lambada_local --device cpu --batch_size 8
"""

from lm_eval.__main__ import cli_evaluate

from multiexit.stages.lm_eval import model as _registers_multi_exit  # noqa: F401

if __name__ == "__main__":
    cli_evaluate()
