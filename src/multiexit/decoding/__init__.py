"""Decoding settings by name + parameters: one door for every method the pipeline runs.

:mod:`.registry` holds the registry of distributions (methods) and searches (:func:`parse_decoding`,
:func:`generate`, and the per-method hooks: labels, layer needs, derived settings); each method family
lives in its own module and registers itself on import: :mod:`.hf` (the original head, exits and ACD
under greedy/beam/sampling searches), :mod:`.contrastive_search`, :mod:`.contrastive_decoding`, :mod:`.dola`.
"""

from multiexit.decoding import contrastive_decoding, contrastive_search, dola, hf  # noqa: F401  (register)
from multiexit.decoding.registry import (
    METHODS,
    SEARCHES,
    DecodingError,
    DecodingMethod,
    DecodingSetting,
    Search,
    derived_settings,
    describe_methods,
    exit_output,
    generate,
    last_run_info,
    multi_exit_output,
    parse_decoding,
    register_method,
    register_search,
    seed_everything,
    setting_label,
)

__all__ = [
    "DecodingError",
    "DecodingMethod",
    "DecodingSetting",
    "METHODS",
    "SEARCHES",
    "Search",
    "derived_settings",
    "describe_methods",
    "exit_output",
    "generate",
    "last_run_info",
    "multi_exit_output",
    "parse_decoding",
    "register_method",
    "register_search",
    "seed_everything",
    "setting_label",
]
