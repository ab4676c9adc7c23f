"""Compatibility path: the generation metrics live in :mod:`multiexit.stages.score`."""

from multiexit.stages.score import *  # noqa: F401,F403
from multiexit.stages.score import __all__  # noqa: F401
