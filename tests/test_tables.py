"""Tables and figures: settings carried as values (never parsed from labels), seeds pooled with std and n,
bootstrap intervals shown, conventions and prompt protocol named, benchmark columns ordered by layer values."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from multiexit.pipeline.figures import FIGURES, benchmark_amateur_series, sweep_series, write_figures
from multiexit.pipeline.tables import examples_markdown, lm_eval_setting, tidy_results, write_tables

SIDECAR_DATASET = {"name": "gensim-lee", "protocol": "cd", "num_prompts": 24, "prompt_tokens": 32, "seed": 0}


def _score_file(path: Path, values: dict, metrics: dict, intervals: dict | None = None, dataset: dict | None = None) -> str:
    """A score file as scripts/score.py writes it (setting block, metrics with intervals, the sidecar)."""
    decoding = {"method": values["method"], "params": {k: v for k, v in values.items() if k not in ("method", "seed", "search")}}
    if "search" in values:
        decoding["search"] = values["search"]
    sidecar = {"settings": {"decoding": decoding, "seed": values["seed"], "dataset": dataset or SIDECAR_DATASET, "max_new_tokens": 40},
               "tokens_per_second": 10.0}
    path.write_text(json.dumps({"setting": values, "metrics": {**metrics, "intervals": intervals or {}}, "generation": sidecar}))
    return str(path)


def _lm_eval_file(path: Path, acc: float, resolved: dict | None) -> str:
    data = {"results": {"lambada_news": {"alias": "lambada_news", "acc,none": acc, "acc_stderr,none": 0.05}}}
    if resolved is not None:
        data["config"] = {"model_args": {"pretrained": "x"}, "multi_exit_config": resolved}
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def manifest(tmp_path):
    gens = []

    def add(label, values, metrics, intervals=None):
        path = _score_file(tmp_path / f"{label}.json", values, metrics, intervals)
        gens.append({"model": "m", "label": label, "method": values["method"], "params": {}, "seed": values["seed"],
                     "source": "decoding[0]", "dataset": "news", "scores": path})

    add("greedy", {"method": "greedy", "seed": 0}, {"diversity_simctg": 0.1, "diversity_per_text": 0.2, "mauve": 0.5},
        {"diversity_per_text": {"low": 0.15, "high": 0.25, "n": 24}})
    for seed, div in zip((0, 1, 2), (0.5, 0.6, 0.7)):
        add(f"acd-original-6-a0.1-seed{seed}",
            {"method": "acd", "search": "greedy", "upper": "original", "lower": 6, "alpha": 0.1, "seed": seed},
            {"diversity_simctg": div - 0.1, "diversity_per_text": div, "mauve": 0.9},
            {"diversity_per_text": {"low": div - 0.05, "high": div + 0.05, "n": 24}})
    # a label that says nothing about the setting: the values decide where it goes
    add("zzz", {"method": "acd", "search": "greedy", "upper": "original", "lower": 12, "alpha": 0.1, "seed": 0},
        {"diversity_simctg": 0.3, "diversity_per_text": 0.4, "mauve": 0.7}, {"diversity_per_text": {"low": 0.3, "high": 0.5, "n": 24}})
    # a second upper head; as an exit-alone run (layer) it is no contrast run
    add("exit-run", {"method": "exit", "layer": 6, "seed": 0}, {"diversity_simctg": 0.05, "diversity_per_text": 0.06, "mauve": 0.1})

    def head(use_original, layer=None, pair=None):
        return {"use_original_head": use_original, "output_layer_index": layer, "contrast_layer_indices": pair,
                "contrast_alpha": 0.1, "vocab_projection_mode": "LAYER_SPECIFIC_PROJECTION"}

    # variant names scrambled on purpose: columns must follow the layer values
    lm = []
    for variant, acc, resolved in [("a", 0.45, head(False, pair=["original", 6])), ("b", 0.10, head(False, layer=12)),
                                   ("c", 0.50, head(True)), ("d", 0.05, head(False, layer=6)),
                                   ("e", 0.20, head(False, pair=[12, 6]))]:
        lm.append({"model": "m", "task": "lambada_news", "variant": variant, "model_args": {},
                   "path": _lm_eval_file(tmp_path / f"lm-{variant}.json", acc, resolved)})
    return {"models": {"m": {"training_report": None, "training_history": None}}, "generations": gens, "lm_eval": lm,
            "tables": {"metrics": ["diversity_simctg", "diversity_per_text", "mauve"], "benchmark_metrics": ["acc"]},
            "figures": {"metrics": ["diversity_per_text", "mauve"], "formats": ["png"]}}


def test_tidy_csv_carries_setting_values_every_seed_and_intervals(manifest, tmp_path):
    paths = write_tables(manifest, tmp_path / "tables")
    rows = list(csv.DictReader(open(paths["csv"])))
    header = list(rows[0])
    for column in ("method", "search", "upper", "lower", "alpha", "layer", "seed", "ci_low", "ci_high", "stderr", "setting", "params"):
        assert column in header, column
    acd = [r for r in rows if r["kind"] == "generation" and r["lower"] == "6" and r["metric"] == "diversity_per_text"]
    assert sorted(r["seed"] for r in acd) == ["0", "1", "2"]  # every seed's row is kept
    assert {(r["method"], r["search"], r["upper"], r["alpha"]) for r in acd} == {("acd", "greedy", "original", "0.1")}
    assert sorted(float(r["ci_low"]) for r in acd) == pytest.approx([0.45, 0.55, 0.65])
    zzz = [r for r in rows if r["setting"] == "zzz" and r["metric"] == "mauve"]
    assert zzz[0]["lower"] == "12" and zzz[0]["ci_low"] == ""  # MAUVE is no per-prompt mean: no interval
    bench = {r["setting"]: r for r in rows if r["kind"] == "benchmark"}
    assert (bench["a"]["upper"], bench["a"]["lower"], bench["a"]["layer"]) == ("original", "6", "")
    assert (bench["e"]["upper"], bench["e"]["lower"]) == ("12", "6")
    assert (bench["b"]["layer"], bench["b"]["lower"]) == ("12", "")
    assert bench["c"]["layer"] == bench["c"]["lower"] == "" and bench["a"]["stderr"] == "0.05"


def test_generation_table_pools_seeds_and_names_conventions(manifest, tmp_path):
    paths = write_tables(manifest, tmp_path / "tables")
    md = Path(paths["generation_md"]).read_text()
    assert "| model | decoding | news: div (SimCTG) | news: div (per text, ACD code) | news: MAUVE |" in md
    # one seed: value +- half-width of its bootstrap interval; MAUVE has none
    assert "| m | greedy | 0.100 | 0.200 ± 0.050 | 0.500 |" in md
    # three seeds: mean +- std over seeds (ddof 1) with n; one row for the three runs
    assert "| m | acd-original-6-a0.1 | 0.500 ± 0.100 (n=3) | 0.600 ± 0.100 (n=3) | 0.900 ± 0.000 (n=3) |" in md
    assert md.count("acd-original-6-a0.1") == 1 and "| m | zzz | 0.300 | 0.400 ± 0.100 | 0.700 |" in md
    caption = md.splitlines()[0]
    assert "news = gensim-lee, prompt protocol 'cd', 24 prompts, seed 0; at most 40 new tokens" in caption
    assert "SimCTG's measure_repetition_and_diversity" in caption and "auto_metrics.py" in caption
    assert "95% bootstrap interval over prompts" in caption and "standard deviation over k seeds" in caption
    tex = Path(paths["generation_tex"]).read_text()
    assert r"acd-original-6-a0.1 & 0.500 $\pm$ 0.100 (n=3) & 0.600 $\pm$ 0.100 (n=3) & 0.900 $\pm$ 0.000 (n=3) \\" in tex


def test_caption_describes_a_request_without_a_named_protocol(manifest, tmp_path):
    request = {"name": "gensim-lee", "num_prompts": 8, "prompt_tokens": 32, "min_reference_tokens": 40, "max_reference_tokens": 256, "seed": 1}
    for entry in manifest["generations"]:
        data = json.loads(Path(entry["scores"]).read_text())
        data["generation"]["settings"]["dataset"] = request
        Path(entry["scores"]).write_text(json.dumps(data))
    md = Path(write_tables(manifest, tmp_path / "t")["generation_md"]).read_text()
    assert "news = gensim-lee: 8 prompts of 32 tokens (references 40-256 tokens), seed 1; at most 40 new tokens" in md


def test_benchmark_columns_follow_layer_values_not_names(manifest, tmp_path):
    md = Path(write_tables(manifest, tmp_path / "tables")["benchmarks_md"]).read_text()
    # original head, exits by layer (6, 12), ACD pairs by upper (12 before 'original')
    assert "| model | task | metric | c | d | b | e | a |" in md
    assert "| m | lambada_news | acc | 0.500 ± 0.050 | 0.050 ± 0.050 | 0.100 ± 0.050 | 0.200 ± 0.050 | 0.450 ± 0.050 |" in md


def test_lm_eval_setting_from_model_args_when_the_result_has_no_config():
    assert lm_eval_setting({}, {"use_original_head": False, "contrast_layer_indices": "original;6"}) == \
        {"layer": None, "upper": "original", "lower": 6, "alpha": 0.1}
    assert lm_eval_setting({}, {"use_original_head": False, "output_layer_index": 8})["layer"] == 8
    assert lm_eval_setting({}, {"use_original_head": True}) == {"layer": None, "upper": None, "lower": None, "alpha": None}
    with pytest.raises(ValueError, match="contrast_layer_indices must name two layers"):
        lm_eval_setting({}, {"contrast_layer_indices": "24;12;6"})


def test_figure_series_are_grouped_and_sorted_on_values(manifest):
    frame = tidy_results(manifest)
    gen = frame[(frame["kind"] == "generation") & (frame["metric"] == "diversity_per_text")]
    lines = sweep_series(gen, "lower")
    assert len(lines) == 1  # the exit run has no amateur layer; the three seeds and 'zzz' form one line
    line = lines[0]
    assert line.x == [6, 12] and line.y == pytest.approx([0.6, 0.4]) and line.n == [3, 1]
    assert line.err == pytest.approx([0.1, 0.1])  # std over seeds; bootstrap half-width for the single seed
    assert line.keys == {"model": "m", "dataset": "news", "method": "acd", "search": "greedy", "upper": "original", "alpha": 0.1}
    assert line.label == "m news"  # nothing varies between lines here
    sweep = benchmark_amateur_series(frame)[("m", "lambada_news")]
    assert sweep["original"] == 0.5
    assert {line.keys["upper"]: (line.x, line.y) for line in sweep["pairs"]} == {"original": ([6], [0.45]), 12: ([6], [0.2])}
    assert [(line.x, line.y) for line in sweep["exits"]] == [([6, 12], [0.05, 0.1])]


def test_write_figures_writes_every_figure(manifest, tmp_path):
    paths = write_figures(manifest, tmp_path / "figures", ["png"])
    assert [p.name for p in paths] == [f"{name}.png" for name in ("amateur_layer", "exit_layer", "benchmark_amateur_layer",
                                                                   "training_loss", "diversity_mauve")]
    assert set(FIGURES) == {p.stem for p in paths}
    assert all(p.stat().st_size > 1000 for p in paths)


# ------------------------------------------------------------------------------------ exits and examples


def _metrics(ce, top1, tokens=1016):
    return {"cross_entropy": ce, "perplexity": 2.718281828 ** ce, "top1_accuracy": top1, "tokens": tokens}


@pytest.fixture
def exits_manifest(tmp_path, manifest):
    """The fixture grid plus a training report (init cast, 8 steps; exits 6 and 12), its loss history and a cast fit."""
    report = {"settings": {"init": "cast"}, "training": {"steps": 8},
              "logit_lens": {"6": _metrics(20.5, 0.01), "12": _metrics(24.25, 0.0)},
              "before": {"6": _metrics(6.0, 0.15), "12": _metrics(5.5, 0.2), "original": _metrics(3.875, 0.3)},
              "after": {"6": _metrics(5.875, 0.16), "12": _metrics(5.25, 0.21), "original": _metrics(3.875, 0.3)}}
    (tmp_path / "training.json").write_text(json.dumps(report))
    history = [{"step": s, "exit_losses": {"6": 6.5 - 0.1 * s, "12": 6.0 - 0.1 * s}} for s in range(1, 9)]
    (tmp_path / "history.json").write_text(json.dumps(history))
    cast = {"heldout_lm": {"6": {"cast": _metrics(6.125, 0.14), "logit_lens": _metrics(20.5, 0.01)},
                           "original": _metrics(3.875, 0.3)}}
    (tmp_path / "cast_fit.json").write_text(json.dumps(cast))
    manifest["models"]["m"] = {"num_layers": 24, "training_report": str(tmp_path / "training.json"),
                               "training_history": str(tmp_path / "history.json"), "cast_fit": str(tmp_path / "cast_fit.json")}
    return manifest


def test_exits_table_lists_each_reading_beside_the_original_head(exits_manifest, tmp_path):
    md = Path(write_tables(exits_manifest, tmp_path / "tables")["exits_md"]).read_text()
    lines = md.splitlines()
    assert "held-out next-token cross-entropy" in lines[0] and "(1016 tokens)" in lines[0]
    # columns: logit lens, the initial heads named by their init, the cast fit, the trained heads by their steps
    assert "| model | exit | logit lens | init: cast | cast map (fit_cast) | after 8 steps |" in md
    assert "| m | 6 | 20.500 (0.010) | 6.000 (0.150) | 6.125 (0.140) | 5.875 (0.160) |" in md
    assert "| m | 12 | 24.250 (0.000) | 5.500 (0.200) | - | 5.250 (0.210) |" in md  # no cast fit at 12
    assert "| m | original head | - | 3.875 (0.300) | 3.875 (0.300) | 3.875 (0.300) |" in md
    assert lines.index("| m | 6 | 20.500 (0.010) | 6.000 (0.150) | 6.125 (0.140) | 5.875 (0.160) |") < \
        lines.index("| m | 12 | 24.250 (0.000) | 5.500 (0.200) | - | 5.250 (0.210) |") < \
        lines.index("| m | original head | - | 3.875 (0.300) | 3.875 (0.300) | 3.875 (0.300) |")


def test_exits_table_without_training_says_so(manifest, tmp_path):
    md = Path(write_tables(manifest, tmp_path / "tables")["exits_md"]).read_text()
    assert "No exit was trained or fitted in this grid." in md and "| model | exit |" in md


def _generations(path: Path, texts: dict[str, str]) -> str:
    rows = [{"id": i, "prompt": f"prompt {i}", "reference": f"ref {i}", "generation": text, "n_new_tokens": len(text.split()),
             "stop_reason": "length"} for i, text in texts.items()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_examples_show_one_prompt_under_greedy_middle_acd_and_top_p(tmp_path):
    gens = []

    def add(label, method, params, seed, texts):
        generations = _generations(tmp_path / f"{label}.jsonl", texts)
        scores = tmp_path / f"{label}.json"
        scores.write_text(json.dumps({"generations": generations, "metrics": {}}))
        gens.append({"model": "m", "label": label, "method": method, "params": params, "seed": seed,
                     "dataset": "news", "scores": str(scores)})

    # ids in file order z, a: the smallest id ('a') is shown, wherever it sits in the file
    add("greedy", "greedy", {}, 0, {"z": "greedy z", "a": "greedy a\nsecond line"})
    add("top-p-seed1", "top_p", {"top_p": 0.9}, 1, {"z": "top-p 1 z", "a": "top-p 1 a"})
    add("acd-6", "acd", {"upper": "original", "lower": 6}, 0, {"z": "acd6 z", "a": "acd6 a"})
    add("acd-12", "acd", {"upper": "original", "lower": 12}, 0, {"z": "acd12 z", "a": "acd12 a"})  # 12 = 24 / 2
    add("acd-18", "acd", {"upper": "original", "lower": 18}, 0, {"z": "acd18 z", "a": "acd18 a"})
    add("top-p-seed0", "top_p", {"top_p": 0.9}, 0, {"z": "top-p 0 z", "a": "top-p 0 a"})
    add("exit-6", "exit", {"layer": 6}, 0, {"z": "exit z", "a": "exit a"})
    manifest = {"models": {"m": {"num_layers": 24}}, "generations": gens}
    md = examples_markdown(manifest)
    assert "### m / news, prompt `a`" in md
    assert "> prompt a" in md and "prompt z" not in md
    assert "> greedy a\n> second line" in md  # every line of a continuation stays inside the quote
    assert "**acd-12** (acd, 2 new tokens)" in md and "> acd12 a" in md
    assert "**top-p-seed0** (top_p, 3 new tokens)" in md and "> top-p 0 a" in md
    for absent in ("acd6", "acd18", "top-p 1", "exit a"):
        assert absent not in md
    assert md.index("greedy a") < md.index("acd12 a") < md.index("top-p 0 a")
    # an explicit prompt id
    assert "> acd12 z" in examples_markdown(manifest, prompt_id="z")
    # the config's tables.examples chooses the methods and their order
    chosen = examples_markdown({**manifest, "tables": {"examples": ["exit", "acd"]}})
    assert "under exit, acd (tables.examples" in chosen and "> exit a" in chosen and "> acd12 a" in chosen
    assert "greedy a" not in chosen and "top-p 0 a" not in chosen and chosen.index("exit a") < chosen.index("acd12 a")
    assert "No generations of dola in this grid." in examples_markdown({**manifest, "tables": {"examples": ["dola"]}})


def test_training_figure_draws_held_out_losses(exits_manifest, tmp_path):
    paths = write_figures(exits_manifest, tmp_path / "figures", ["png"])
    assert any(p.name == "training_loss.png" and p.stat().st_size > 1000 for p in paths)
    from multiexit.pipeline.figures import training_loss_figure

    ax = training_loss_figure(exits_manifest).axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "original head, held-out (3.88)" in labels
    dashed = [line for line in ax.get_lines() if line.get_label().startswith("original head")][0]
    assert list(dashed.get_ydata()) == [3.875, 3.875]
    points = {(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in ax.get_lines()
              if len(line.get_xdata()) == 1}
    assert {(0.0, 6.0), (8.0, 5.875), (0.0, 5.5), (8.0, 5.25)} <= points
