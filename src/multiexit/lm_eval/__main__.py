"""``python -m multiexit.lm_eval``: runs :mod:`multiexit.stages.lm_eval.__main__` (lm-eval's CLI, model registered)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("multiexit.stages.lm_eval", run_name="__main__", alter_sys=True)
