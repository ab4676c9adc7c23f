"""Compatibility path: the lm-eval stage lives in :mod:`multiexit.stages.lm_eval`.

``python -m multiexit.lm_eval ...`` stays lm-eval's own command line with the multi-exit model registered.
"""

from multiexit.stages.lm_eval import *  # noqa: F401,F403
from multiexit.stages.lm_eval import __all__  # noqa: F401
