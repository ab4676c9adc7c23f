"""What a multi-exit model is: its configuration (:mod:`.config`), the contrast rule
(:mod:`.contrast`), the model mixin and ``AutoMultiExitModel`` (:mod:`.modeling`), and where each
supported architecture keeps its layers, final norm and head (:mod:`.architectures`).
"""

from multiexit.model.config import ORIGINAL, MultiExitConfiguration, VocabularyProjectionMode
from multiexit.model.contrast import calculate_contrasted_logits
from multiexit.model.modeling import AutoMultiExitModel, is_multi_exit_model

__all__ = [
    "ORIGINAL",
    "AutoMultiExitModel",
    "MultiExitConfiguration",
    "VocabularyProjectionMode",
    "calculate_contrasted_logits",
    "is_multi_exit_model",
]
