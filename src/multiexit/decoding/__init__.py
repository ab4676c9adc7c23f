"""Decoding settings by name + parameters: one door for every method the pipeline runs.

:mod:`.registry` holds the method registry (:func:`parse_decoding`, :func:`generate`); each method
family lives in its own module and registers itself on import: :mod:`.hf` (greedy, beam, sampling,
exit, ACD), :mod:`.contrastive_search`, :mod:`.contrastive_decoding`, :mod:`.dola`.
"""

from multiexit.decoding import contrastive_decoding, contrastive_search, dola, hf  # noqa: F401  (register)
from multiexit.decoding.registry import (
    METHODS,
    DecodingMethod,
    DecodingSetting,
    describe_methods,
    generate,
    multi_exit_output,
    parse_decoding,
    register_method,
    seed_everything,
)

__all__ = [
    "DecodingMethod",
    "DecodingSetting",
    "METHODS",
    "describe_methods",
    "generate",
    "multi_exit_output",
    "parse_decoding",
    "register_method",
    "seed_everything",
]
