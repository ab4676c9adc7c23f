"""multiexit: multi-exit language models and Auto-Contrastive Decoding (Gera et al., ACL 2023)."""

from multiexit._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "AutoMultiExitModel": "multiexit.model.modeling",
    "is_multi_exit_model": "multiexit.model.modeling",
    "MultiExitConfiguration": "multiexit.model.config",
    "VocabularyProjectionMode": "multiexit.model.config",
    "calculate_contrasted_logits": "multiexit.model.contrast",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS) + ["__version__"]
