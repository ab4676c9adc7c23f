"""Where each supported architecture keeps its blocks, final norm and output head."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchitectureSpec:
    blocks: str  # dotted path (from the causal-LM module) to the ModuleList of blocks
    final_norm: str  # dotted path to the final norm
    extra_final: tuple[str, ...] = ()  # modules applied after the norm (OPT's project_out)


_GPT2_LIKE = ArchitectureSpec("transformer.h", "transformer.ln_f")
_LLAMA_LIKE = ArchitectureSpec("model.layers", "model.norm")

SUPPORTED_ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "gpt2": _GPT2_LIKE,
    "gpt_neo": _GPT2_LIKE,
    "gptj": _GPT2_LIKE,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "gpt_neox": ArchitectureSpec("gpt_neox.layers", "gpt_neox.final_layer_norm"),
    "opt": ArchitectureSpec("model.decoder.layers", "model.decoder.final_layer_norm", ("model.decoder.project_out",)),
}


def architecture_spec(model_type: str) -> ArchitectureSpec:
    try:
        return SUPPORTED_ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported architecture model_type={model_type!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        ) from None


def get_submodule(root: nn.Module, dotted: str) -> nn.Module | None:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module
