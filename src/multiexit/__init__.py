"""multiexit: multi-exit language models and Auto-Contrastive Decoding (Gera et al., ACL 2023)."""

from multiexit._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, {
    "AutoMultiExitModel": "multiexit.model.modeling",
    "is_multi_exit_model": "multiexit.model.modeling",
    "MultiExitConfiguration": "multiexit.model.config",
    "VocabularyProjectionMode": "multiexit.model.config",
    "calculate_contrasted_logits": "multiexit.model.contrast",
})

__all__ = [
    "AutoMultiExitModel",
    "MultiExitConfiguration",
    "VocabularyProjectionMode",
    "calculate_contrasted_logits",
    "is_multi_exit_model",
    "__version__",
]
