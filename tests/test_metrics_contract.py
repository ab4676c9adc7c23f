"""Contract of the text metrics (``multiexit.stages.score``) beyond tests/test_metrics.py: defaults, edge cases, what is
forwarded to whom, error messages. Every expected value is computed here (by hand, with numpy / torch directly, or
with ``mauve-text``'s own ``compute_mauve``), never with the function under test."""

from __future__ import annotations

import copy
import math

import mauve
import numpy as np
import pytest
import torch

from multiexit.stages.score import (
    bootstrap_interval,
    coherence_metrics,
    coherence_per_text,
    featurize,
    length_metrics,
    mauve_from_features,
    mauve_metrics,
    mauve_token_pairs,
    perplexity_metrics,
)

# the tiny model fixtures (a random GPT-2 with the real GPT-2 tokenizer; a random BERT), texts and MiniLM folder of test_metrics
from test_metrics import GENERATIONS, PROMPTS, _minilm_dir, tiny_bert_dirs, tiny_gpt2_dir  # noqa: F401, E402


@pytest.fixture(scope="module")
def tiny_lm(tiny_gpt2_dir):
    """(tiny random GPT-2 LM, GPT-2 tokenizer), loaded once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval(), AutoTokenizer.from_pretrained(tiny_gpt2_dir)


def _words(k: int) -> str:
    """k GPT-2 tokens: 'news' + (k - 1) x ' news'."""
    return " ".join(["news"] * k)


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids without any special token, from the tokenizer's word pieces."""
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


class _Bars:
    """Stands in for tqdm.auto.tqdm: records each bar's keywords and iterates plainly."""

    def __init__(self):
        self.calls = []

    def __call__(self, iterable, **kwargs):
        self.calls.append(kwargs)
        return iterable


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_is_the_seeded_percentile_interval_in_float64():
    # pins the equal tails (1 - level) / 2 and float64 means even for float32 inputs
    values = np.array([0.1, 0.7, 0.35, 0.9, 0.05, 0.6, 0.42], dtype=np.float32)
    ci = bootstrap_interval(list(values), resamples=500, seed=7, level=0.8)
    v = values.astype(np.float64)
    means = v[np.random.default_rng(7).integers(0, v.size, size=(500, v.size))].mean(axis=1)
    assert ci["low"] == pytest.approx(np.quantile(means, 0.1), abs=1e-12)
    assert ci["high"] == pytest.approx(np.quantile(means, 0.9), abs=1e-12)


def test_bootstrap_interval_resamples_every_item():
    # item 0 is drawn too: of 2 items, about 1/4 of the resamples are all-0 and 1/4 all-1
    ci = bootstrap_interval([0.0, 1.0], resamples=1000, seed=0)
    assert (ci["low"], ci["high"]) == (0.0, 1.0)


# ------------------------------------------------------------------ lengths


def test_length_metrics_without_rows_has_every_key_empty():
    # pins the key names and n_texts 0 of the no-row result
    assert length_metrics([]) == {"n_texts": 0, "mean_new_tokens": None, "mean_words": None,
                                  "share_stopped_early": None, "share_empty": None}


def test_length_metrics_counts_the_rows_under_n_texts():
    # pins the "n_texts" key of the result with rows
    rows = [{"generation": "a b", "n_new_tokens": 3, "stop_reason": "eos"},
            {"generation": " ", "n_new_tokens": 1, "stop_reason": "length"},
            {"generation": "c", "n_new_tokens": 2, "stop_reason": "length"}]
    assert length_metrics(rows) == {"n_texts": 3, "mean_new_tokens": 2.0, "mean_words": 1.0,
                                    "share_stopped_early": pytest.approx(1 / 3), "share_empty": pytest.approx(1 / 3)}


# ------------------------------------------------------------------ MAUVE token pairs


def test_mauve_pairs_keep_a_side_of_exactly_max_tokens(gpt2_tokenizer):
    # pins >=: a reference or a generation exactly max_tokens long is kept
    refs, gens, kept = mauve_token_pairs([_words(8), _words(12), _words(7)], [_words(12), _words(8), _words(12)],
                                         gpt2_tokenizer, max_tokens=8)
    assert kept == [0, 1]
    assert refs == gens == [_ids(gpt2_tokenizer, _words(8))] * 2


def test_mauve_pairs_default_cut_is_128_tokens(gpt2_tokenizer):
    # pins the documented default max_tokens = 128
    refs, gens, kept = mauve_token_pairs([_words(128), _words(127)], [_words(130), _words(200)], gpt2_tokenizer)
    assert kept == [0] and len(refs[0]) == len(gens[0]) == 128


def test_mauve_pairs_add_no_special_tokens():
    # pins add_special_tokens=False on both sides, with a tokenizer that adds [CLS] ... [SEP] by default
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_minilm_dir())
    text = "the storm hit the coast last night and the rain kept falling"
    pieces = _ids(tok, text)
    refs, gens, kept = mauve_token_pairs([text], [text], tok, max_tokens=len(pieces))
    assert kept == [0] and refs == gens == [pieces]


def test_mauve_pairs_error_names_both_counts(gpt2_tokenizer):
    # pins the message of a length mismatch
    with pytest.raises(ValueError, match=r"^2 references but 1 generations$"):
        mauve_token_pairs(["a", "b"], ["c"], gpt2_tokenizer)


# ------------------------------------------------------------------ featurize


def test_featurize_without_sequences_is_an_empty_float32_array(tiny_lm):
    # pins the (0, 0) float32 result of an empty input (no concatenate of nothing)
    out = featurize([], tiny_lm[0])
    assert out.shape == (0, 0) and out.dtype == np.float32


def test_featurize_runs_the_body_without_the_lm_head(tiny_lm):
    # pins base_model: the features are the body's last hidden state; the vocabulary projection never runs
    model = tiny_lm[0]
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = featurize([[5, 6, 7]], model)
    finally:
        handle.remove()
    assert calls == []
    with torch.inference_mode():
        expected = model.transformer(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state[0, -1].numpy()
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_featurize_takes_a_model_without_base_model(tiny_lm):
    # pins the fallback to the model itself when it has no base_model
    class Wrapper(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, **kwargs):
            return self.body(**kwargs)

    body = tiny_lm[0].transformer
    out = featurize([[5, 6, 7]], Wrapper(body))
    with torch.inference_mode():
        expected = body(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state[0, -1].numpy()
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_featurize_masks_the_padding_for_a_bidirectional_model(tiny_bert_dirs):
    # pins the attention mask: in a right-padded batch a BERT body sees no padding (features = each sequence alone)
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(tiny_bert_dirs["sup-simcse-tiny"]).eval()
    seqs = [[101, 2000, 2001, 2002, 2003, 102], [101, 2004, 102]]
    batched = featurize(seqs, bert, batch_size=2)
    for seq, row in zip(seqs, batched):
        with torch.inference_mode():
            alone = bert(input_ids=torch.tensor([seq])).last_hidden_state[0, -1].numpy()
        np.testing.assert_allclose(row, alone, atol=1e-5)


def test_featurize_progress_bar_is_named_and_off_by_default(tiny_lm, monkeypatch):
    # pins tqdm(desc="featurize", disable=not progress) and progress=False by default
    bars = _Bars()
    monkeypatch.setattr("tqdm.auto.tqdm", bars)
    featurize([[5, 6]], tiny_lm[0])
    featurize([[5, 6]], tiny_lm[0], progress=True)
    assert bars.calls == [{"desc": "featurize", "disable": True}, {"desc": "featurize", "disable": False}]


# ------------------------------------------------------------------ MAUVE on features


def _mauve(p, q, scaling, seed, buckets) -> float:
    """mauve-text's own compute_mauve on features, every setting spelled out."""
    return mauve.compute_mauve(p_features=p, q_features=q, mauve_scaling_factor=scaling, seed=seed, num_buckets=buckets,
                               device_id=-1, verbose=False).mauve


@pytest.fixture(scope="module")
def features():
    """Two overlapping Gaussian clouds (MAUVE strictly between 0 and 1)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 0.6


def test_mauve_from_features_defaults_are_scaling_5_seed_25_auto_buckets(features):
    # pins the documented defaults (CD protocol: scaling factor 5, seed 25)
    p, q = features
    assert mauve_from_features(p, q) == pytest.approx(_mauve(p, q, 5, 25, "auto"), abs=1e-12)


def test_mauve_from_features_forwards_scaling_seed_and_buckets(features):
    # pins that scaling_factor, seed and num_buckets reach compute_mauve
    p, q = features
    assert mauve_from_features(p, q, scaling_factor=2.0, seed=3, num_buckets=5) == pytest.approx(_mauve(p, q, 2.0, 3, 5), abs=1e-12)


def test_mauve_from_features_scores_two_texts_on_each_side(features):
    # pins the bound: 2 texts per side is enough
    p, q = features[0][:2], features[1][:2]
    assert mauve_from_features(p, q) == pytest.approx(_mauve(p, q, 5, 25, "auto"), abs=1e-12)


def test_mauve_from_features_refuses_one_text_on_either_side(features):
    # pins the check of each side alone and its message
    p, q = features
    with pytest.raises(ValueError, match=r"^MAUVE needs at least 2 texts on each side, got 1 and 40$"):
        mauve_from_features(p[:1], q)
    with pytest.raises(ValueError, match=r"^MAUVE needs at least 2 texts on each side, got 40 and 1$"):
        mauve_from_features(p, q[:1])


def test_mauve_from_features_prints_nothing(features, capsys):
    # pins verbose=False: no timing lines on stdout
    mauve_from_features(*features)
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ MAUVE from texts


REFS = [" ".join(f"report{(3 * i + j) % 17}" for j in range(6)) for i in range(12)]
GENS = [" ".join(f"answer{(5 * i + j) % 11}" for j in range(6)) for i in range(12)]


def _last_token_features(lm, texts, max_tokens):
    """GPT-2 body's last hidden state at token max_tokens of each text, one text at a time."""
    model, tok = lm
    rows = []
    with torch.inference_mode():
        for text in texts:
            ids = _ids(tok, text)[:max_tokens]
            rows.append(model.transformer(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy())
    return np.stack(rows)


def test_mauve_metrics_is_compute_mauve_on_last_token_features(tiny_lm):
    # pins the result keys, the defaults (scaling 5, seed 25, auto) and the forwarding of scaling/seed/buckets
    p, q = _last_token_features(tiny_lm, REFS, 8), _last_token_features(tiny_lm, GENS, 8)
    got = mauve_metrics(REFS, GENS, featurizer_model=tiny_lm, max_tokens=8)
    assert got == {"mauve": pytest.approx(_mauve(p, q, 5, 25, "auto"), abs=1e-6), "mauve_n_pairs": 12, "mauve_n_dropped": 0}
    got = mauve_metrics(REFS, GENS, featurizer_model=tiny_lm, max_tokens=8, scaling_factor=2.0, seed=3, num_buckets=4)
    assert got["mauve"] == pytest.approx(_mauve(p, q, 2.0, 3, 4), abs=1e-6)


def test_mauve_metrics_scores_two_pairs(tiny_lm):
    # pins the bound: 2 kept pairs get a MAUVE value
    p, q = _last_token_features(tiny_lm, REFS[:2], 8), _last_token_features(tiny_lm, GENS[:2], 8)
    got = mauve_metrics(REFS[:2], GENS[:2], featurizer_model=tiny_lm, max_tokens=8)
    assert got["mauve"] == pytest.approx(_mauve(p, q, 5, 25, "auto"), abs=1e-6)


def test_mauve_metrics_default_cut_is_128_tokens(tiny_lm):
    # pins the documented default max_tokens = 128 (one pair: counted, no MAUVE)
    got = mauve_metrics([_words(128)], [_words(128)], featurizer_model=tiny_lm)
    assert got == {"mauve": None, "mauve_n_pairs": 1, "mauve_n_dropped": 0}


def test_mauve_metrics_loads_the_featurizer_on_the_asked_device(tiny_gpt2_dir):
    # pins device "auto" by default (loads here) and that an explicit device reaches the loader
    got = mauve_metrics(["too short"], ["too short"], tiny_gpt2_dir)
    assert got == {"mauve": None, "mauve_n_pairs": 0, "mauve_n_dropped": 1}
    with pytest.raises(ValueError, match="bogus"):
        mauve_metrics(["too short"], ["too short"], tiny_gpt2_dir, device="bogus")


def test_mauve_metrics_passes_progress_to_both_featurize_calls(tiny_lm, monkeypatch):
    # pins progress=False by default and its forwarding to the references' and the generations' bars
    bars = _Bars()
    monkeypatch.setattr("tqdm.auto.tqdm", bars)
    mauve_metrics(REFS[:2], GENS[:2], featurizer_model=tiny_lm, max_tokens=8)
    mauve_metrics(REFS[:2], GENS[:2], featurizer_model=tiny_lm, max_tokens=8, progress=True)
    assert [call["disable"] for call in bars.calls] == [True, True, False, False]


# ------------------------------------------------------------------ coherence


class _SpyEncoder:
    """An encoder whose embedding of a text is (number of characters, 1); records the batch sizes asked for."""

    kind = "spy"

    def __init__(self):
        self.batch_sizes = []

    def encode(self, texts, batch_size=32):
        self.batch_sizes.append(batch_size)
        return np.array([[float(len(t)), 1.0] for t in texts])


def _cos_len(a: str, b: str) -> float:
    return (len(a) * len(b) + 1) / math.sqrt((len(a) ** 2 + 1) * (len(b) ** 2 + 1))


def test_coherence_per_text_is_row_cosine_with_the_batch_size_asked():
    # pins cos(e(generation_i), e(prompt_i)) per row and batch_size reaching both encode calls
    spy = _SpyEncoder()
    got = coherence_per_text(["ab", "abcdef"], ["abc", "a"], spy, batch_size=3)
    np.testing.assert_allclose(got, [_cos_len("ab", "abc"), _cos_len("abcdef", "a")], atol=1e-12)
    assert spy.batch_sizes == [3, 3]


def test_coherence_metrics_forwards_the_batch_size_to_its_encoder():
    # pins batch_size reaching coherence_per_text from coherence_metrics
    spy = _SpyEncoder()
    got = coherence_metrics(["ab", "abcdef"], ["abc", "a"], encoder=spy, batch_size=5)
    assert got == {"coherence": pytest.approx((_cos_len("ab", "abc") + _cos_len("abcdef", "a")) / 2, abs=1e-12),
                   "coherence_encoder": "spy"}
    assert spy.batch_sizes == [5, 5]


def test_coherence_without_texts():
    # pins an empty (0,) array per text and {"coherence": None} overall
    out = coherence_per_text([], [], _SpyEncoder())
    assert out.shape == (0,)
    assert coherence_metrics([], []) == {"coherence": None}


def test_coherence_errors_name_both_counts():
    # pins the message of a prompts/generations length mismatch in both functions
    with pytest.raises(ValueError, match=r"^2 prompts but 1 generations$"):
        coherence_per_text(["a", "b"], ["c"], _SpyEncoder())
    with pytest.raises(ValueError, match=r"^2 prompts but 1 generations$"):
        coherence_metrics(["a", "b"], ["c"], encoder=_SpyEncoder())


def _bert_embeddings(folder: str, texts: list[str], max_tokens: int, pooled: bool) -> np.ndarray:
    """BERT [CLS] embedding (pooler output or last hidden state) of each text cut to max_tokens, one text at a time."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    bert = AutoModel.from_pretrained(folder).eval()
    rows = []
    for text in texts:
        ids = [tok.cls_token_id] + _ids(tok, text)[: max_tokens - 2] + [tok.sep_token_id]
        with torch.inference_mode():
            result = bert(input_ids=torch.tensor([ids]))
        rows.append((result.pooler_output if pooled else result.last_hidden_state[:, 0])[0].numpy())
    return np.stack(rows)


def _mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)]))


@pytest.fixture(scope="module")
def minilm_as_simcse(tmp_path_factory):
    """all-MiniLM-L6-v2's BERT (trained, with its pooler) as a plain HF folder named like a supervised SimCSE model."""
    from pathlib import Path

    folder = tmp_path_factory.mktemp("simcse") / "sup-minilm-as-simcse"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                 "vocab.txt"):
        (folder / name).symlink_to(Path(_minilm_dir()) / name)
    return str(folder)


LONG_PROMPTS = ["Heavy rain flooded the town" + " while the stock market fell as investors sold their shares" * 4,
                "The orchestra played a new symphony" + " and the football team lost the cup final on penalties" * 4]
LONG_GENS = ["Rivers burst their banks overnight" + " before the central bank cut interest rates again" * 4,
             "The violins opened the concert" + " while the striker missed two chances in extra time" * 4]


def test_coherence_metrics_forwards_max_tokens_and_pooler(minilm_as_simcse):
    # pins max_tokens and pooler reaching the encoder it builds (texts cut to 8 tokens, [CLS] hidden state)
    got = coherence_metrics(LONG_PROMPTS, LONG_GENS, minilm_as_simcse, device="cpu", max_tokens=8, pooler="cls_before_pooler")
    e_p, e_g = (_bert_embeddings(minilm_as_simcse, texts, 8, pooled=False) for texts in (LONG_PROMPTS, LONG_GENS))
    assert got == {"coherence": pytest.approx(_mean_cos(e_g, e_p), abs=1e-5), "coherence_encoder": "cls_before_pooler"}


def test_coherence_metrics_loads_the_encoder_on_the_asked_device(minilm_as_simcse):
    # pins device "auto" by default (loads here) and that an explicit device reaches the encoder
    got = coherence_metrics(PROMPTS, GENERATIONS, minilm_as_simcse)
    e_p, e_g = (_bert_embeddings(minilm_as_simcse, texts, 128, pooled=True) for texts in (PROMPTS, GENERATIONS))
    assert got == {"coherence": pytest.approx(_mean_cos(e_g, e_p), abs=1e-5), "coherence_encoder": "cls"}
    with pytest.raises(ValueError, match="bogus"):
        coherence_metrics(["a"], ["b"], minilm_as_simcse, device="bogus")


# ------------------------------------------------------------------ perplexity


def _nll(model, prompt_ids: list[int], gen_ids: list[int]) -> float:
    """Summed negative log-likelihood of gen_ids after prompt_ids, from log-softmax of the logits."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids + gen_ids])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -sum(logp[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(gen_ids))


def test_perplexity_pools_nll_over_texts_and_averages_per_text(tiny_lm):
    # pins corpus perplexity = exp(sum NLL / sum tokens), the mean of per-text perplexities, and the key names
    model, tok = tiny_lm
    prompts, gens = ["The storm hit", "Prices rose", "Skipped"], [" the coast last night", " again", ""]
    nll = [_nll(model, _ids(tok, p), _ids(tok, g)) for p, g in zip(prompts[:2], gens[:2])]
    n = [len(_ids(tok, g)) for g in gens[:2]]
    got = perplexity_metrics(prompts, gens, "unused", evaluator=tiny_lm)
    assert got == {"perplexity": pytest.approx(math.exp(sum(nll) / sum(n)), rel=1e-5),
                   "perplexity_mean_per_text": pytest.approx(np.mean([math.exp(a / b) for a, b in zip(nll, n)]), rel=1e-5),
                   "perplexity_n_texts": 2}


def test_perplexity_without_scorable_text_is_none(tiny_lm):
    # pins None (no division by zero, no NaN) when every generation is empty
    got = perplexity_metrics(["a", "b"], ["", ""], "unused", evaluator=tiny_lm)
    assert got == {"perplexity": None, "perplexity_mean_per_text": None, "perplexity_n_texts": 0}


def test_perplexity_adds_only_the_tokenizers_prefix_once(tiny_lm):
    # pins add_special_tokens=False on prompt and generation, with a tokenizer that puts <|endoftext|> before a text
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    model, tok = tiny_lm
    backend = copy.deepcopy(tok.backend_tokenizer)
    backend.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 50256)])
    bos_tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    prompt, gen = "The storm hit", " the coast last night"
    nll = _nll(model, [50256] + _ids(tok, prompt), _ids(tok, gen))
    got = perplexity_metrics([prompt], [gen], "unused", evaluator=(model, bos_tok))
    assert got["perplexity"] == pytest.approx(math.exp(nll / len(_ids(tok, gen))), rel=1e-5)


def test_perplexity_loads_the_evaluator_on_the_asked_device(tiny_gpt2_dir):
    # pins device "auto" by default (loads here) and that an explicit device reaches the loader
    got = perplexity_metrics(["a"], [""], tiny_gpt2_dir)
    assert got == {"perplexity": None, "perplexity_mean_per_text": None, "perplexity_n_texts": 0}
    with pytest.raises(ValueError, match="bogus"):
        perplexity_metrics(["a"], [""], tiny_gpt2_dir, device="bogus")
