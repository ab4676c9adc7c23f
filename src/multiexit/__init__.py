"""multiexit: multi-exit language models and Auto-Contrastive Decoding (Gera et al., ACL 2023)."""

from multiexit.model.config import MultiExitConfiguration, VocabularyProjectionMode
from multiexit.model.contrast import calculate_contrasted_logits
from multiexit.model.modeling import AutoMultiExitModel, is_multi_exit_model

__version__ = "0.1.0"

__all__ = [
    "AutoMultiExitModel",
    "MultiExitConfiguration",
    "VocabularyProjectionMode",
    "calculate_contrasted_logits",
    "is_multi_exit_model",
    "__version__",
]
