"""What a multi-exit model is: its configuration (:mod:`.config`), the contrast rule
(:mod:`.contrast`), the model mixin and ``AutoMultiExitModel`` (:mod:`.modeling`), and where each
supported architecture keeps its layers, final norm and head (:mod:`.architectures`).
"""

from multiexit._lazy import lazy_exports

_EXPORTS = {
    "ORIGINAL": "multiexit.model.config",
    "MultiExitConfiguration": "multiexit.model.config",
    "VocabularyProjectionMode": "multiexit.model.config",
    "calculate_contrasted_logits": "multiexit.model.contrast",
    "AutoMultiExitModel": "multiexit.model.modeling",
    "is_multi_exit_model": "multiexit.model.modeling",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
