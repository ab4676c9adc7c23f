"""What a multi-exit model is: its configuration (:mod:`.config`), the contrast rule
(:mod:`.contrast`), the model mixin and ``AutoMultiExitModel`` (:mod:`.modeling`), and where each
supported architecture keeps its layers, final norm and head (:mod:`.architectures`).
"""

from multiexit._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ORIGINAL": "multiexit.model.config",
    "MultiExitConfiguration": "multiexit.model.config",
    "VocabularyProjectionMode": "multiexit.model.config",
    "calculate_contrasted_logits": "multiexit.model.contrast",
    "AutoMultiExitModel": "multiexit.model.modeling",
    "is_multi_exit_model": "multiexit.model.modeling",
})

__all__ = [
    "ORIGINAL",
    "AutoMultiExitModel",
    "MultiExitConfiguration",
    "VocabularyProjectionMode",
    "calculate_contrasted_logits",
    "is_multi_exit_model",
]
