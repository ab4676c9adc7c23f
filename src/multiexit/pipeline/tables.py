"""Collect every pipeline result into one tidy table and render the paper-style tables.

Inputs come from the manifest the pipeline writes (``results/manifest.json``, see
:meth:`multiexit.pipeline.plan.Plan.manifest`): score JSONs of generation runs, lm-eval results
JSONs, and the head-training reports. Output:

* ``results.csv`` -- tidy: one row per (kind, model, dataset/task, setting/variant, seed, metric) with
  the value, its standard error where lm-eval gives one, its 95% bootstrap interval over prompts
  where the metric is a mean over prompts, and the setting as values: ``method``, every other key of
  the decoding block (e.g. ``search``), one column per parameter (``upper``, ``lower``, ``alpha``,
  ``layer``, ...) and ``seed``. Generation values come from the score file's ``setting`` block (the
  generation sidecar), lm-eval values from the result file's multi-exit configuration;
* ``generation.{md,tex}`` -- decoding settings x datasets with the chosen score metrics (the paper's
  first table); with several seeds a cell is the mean over seeds with its std and n;
* ``benchmarks.{md,tex}`` -- benchmark tasks x (original head, exits, ACD) (the paper's second table),
  columns ordered by their layer values;
* ``exits.md`` -- held-out loss of every exit per way of reading it (logit lens, initial heads, cast map,
  trained heads) beside the original head's, from the training reports and cast fits;
* ``examples.md`` -- one prompt's continuations under the methods of ``tables.examples`` (default greedy,
  ACD, top-p) side by side.

No code here reads a setting's label to find its method or layers: labels are only displayed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from multiexit.io import read_jsonl

BASE_COLUMNS = ["kind", "model", "dataset", "setting", "method", "params", "layer", "upper", "lower", "alpha", "seed"]
VALUE_COLUMNS = ["metric", "value", "stderr", "ci_low", "ci_high"]
TIDY_COLUMNS = BASE_COLUMNS + VALUE_COLUMNS  # plus one column per further setting value, between the two
NUMBER_COLUMNS = ("value", "stderr", "ci_low", "ci_high")

METRIC_NAMES = {
    "diversity_simctg": "div (SimCTG)",
    "diversity_per_text": "div (per text, ACD code)",
    "mauve": "MAUVE",
    "coherence": "coh",
    "acc": "acc",
    "perplexity": "ppl",
    "word_perplexity": "word ppl",
}

_RESERVED = {"kind", "model", "dataset", "setting", "params", "metric", "value", "stderr", "ci_low", "ci_high"}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _read_json(path: str | Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def _cell_value(value):
    """A setting value as a CSV cell: scalars as they are, lists/dicts as JSON."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _value_columns(values: dict) -> dict:
    """Setting values -> tidy columns (a key that clashes with a fixed column gets a ``param_`` prefix)."""
    return {(f"param_{k}" if k in _RESERVED else k): _cell_value(v) for k, v in values.items()}


def generation_setting(entry: dict, data: dict) -> dict:
    """The values of one generation run: the score file's ``setting`` block, else its generation sidecar,
    else the manifest entry (method, params, seed)."""
    from multiexit.stages.score import setting_values

    values = data.get("setting") or setting_values(data.get("generation"))
    if not values:
        values = {"method": entry["method"], **entry.get("params", {}), "seed": entry.get("seed")}
    return values


def generation_rows(manifest: dict) -> list[dict]:
    rows = []
    for entry in manifest["generations"]:
        data = _read_json(entry["scores"])
        scores = dict(data.get("metrics", data))
        intervals = scores.pop("intervals", None) or {}
        generation = data.get("generation") or {}
        if _number(generation.get("tokens_per_second")) is not None:
            scores["tokens_per_second"] = generation["tokens_per_second"]
        values = generation_setting(entry, data)
        params = {k: v for k, v in values.items() if k not in ("method", "seed")}
        for metric, value in scores.items():
            number = _number(value)
            if number is None:
                continue
            ci = intervals.get(metric) or {}
            rows.append({
                "kind": "generation", "model": entry["model"], "dataset": entry["dataset"], "setting": entry["label"],
                "params": json.dumps(params, sort_keys=True), **_value_columns(values),
                "metric": metric, "value": number, "stderr": None, "ci_low": ci.get("low"), "ci_high": ci.get("high"),
            })
    return rows


def lm_eval_metrics(results: dict) -> dict[str, dict[str, tuple[float, float | None]]]:
    """``{task: {metric: (value, stderr)}}`` from an lm-eval results JSON (filter suffix dropped)."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for task, values in (results.get("results") or {}).items():
        metrics: dict[str, tuple[float, float | None]] = {}
        for key, value in values.items():
            name, _, _filter = key.partition(",")
            if name.endswith("_stderr") or name in ("alias", "sample_len"):
                continue
            number = _number(value)
            if number is None:
                continue
            stderr = _number(values.get(f"{name}_stderr,{_filter}" if _filter else f"{name}_stderr"))
            metrics[name] = (number, stderr)
        out[task] = metrics
    return out


def lm_eval_setting(results: dict, model_args: dict | None = None) -> dict:
    """The head an lm-eval run scored, as values: ``layer`` (an exit alone), ``upper``/``lower``/``alpha``
    (an ACD pair), none of them for the original head.

    Read from the result file's resolved ``config.multi_exit_config``, else its ``config.model_args``,
    else ``model_args`` (the manifest's); ``contrast_layer_indices`` may be a pair or lm-eval's
    ``"upper;lower"`` argument string.
    """
    config = results.get("config") or {}
    resolved = config.get("multi_exit_config") or {}
    args = {**(model_args or {}), **(config.get("model_args") or {}), **{k: v for k, v in resolved.items() if v is not None}}
    pair = args.get("contrast_layer_indices")
    if isinstance(pair, str):
        pair = [int(x) if x.strip().isdigit() else x.strip() for x in pair.split(";")] if pair.strip() else None
    values: dict = {"layer": None, "upper": None, "lower": None, "alpha": None}
    if pair:
        if len(pair) != 2:
            raise ValueError(f"lm-eval result: contrast_layer_indices must name two layers, got {pair!r}")
        from multiexit.model.config import MultiExitConfiguration  # the one default of alpha

        values.update(upper=pair[0], lower=pair[1], alpha=args.get("contrast_alpha", MultiExitConfiguration.contrast_alpha))
    elif args.get("output_layer_index") is not None and not args.get("use_original_head", False):
        values["layer"] = args["output_layer_index"]
    mode = args.get("vocab_projection_mode")
    if mode is not None:
        values["vocab_projection_mode"] = mode
    return values


def benchmark_rows(manifest: dict) -> list[dict]:
    rows = []
    for entry in manifest["lm_eval"]:
        data = _read_json(entry["path"])
        results = lm_eval_metrics(data)
        values = lm_eval_setting(data, entry.get("model_args"))
        params = (data.get("config") or {}).get("model_args") or entry.get("model_args") or {}
        params = {k: v for k, v in params.items() if k != "pretrained"}  # a path, not a setting value
        for task, metrics in results.items():
            for metric, (value, stderr) in metrics.items():
                rows.append({
                    "kind": "benchmark", "model": entry["model"], "dataset": task, "setting": entry["variant"],
                    "method": "lm_eval", "params": json.dumps(params, sort_keys=True), **_value_columns(values),
                    "seed": None, "metric": metric, "value": value, "stderr": stderr, "ci_low": None, "ci_high": None,
                })
    return rows


def training_rows(manifest: dict) -> list[dict]:
    """Per-exit held-out metrics before/after training, from each model's training report."""
    from multiexit.pipeline.results import read_training_report

    rows = []
    for model, spec in manifest["models"].items():
        if not spec.get("training_report"):
            continue
        report = read_training_report(spec["training_report"])
        for item in report["exits"]:
            for metric, value in item["metrics"].items():
                number = _number(value)
                if number is None:
                    continue
                rows.append({
                    "kind": "training", "model": model, "dataset": report.get("corpus"), "setting": item["stage"],
                    "method": "train_heads", "params": None, "layer": item["layer"], "seed": None,
                    "metric": metric, "value": number, "stderr": None, "ci_low": None, "ci_high": None,
                })
    return rows


def tidy_results(manifest: dict) -> pd.DataFrame:
    rows = generation_rows(manifest) + benchmark_rows(manifest) + training_rows(manifest)
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in TIDY_COLUMNS))
    columns = BASE_COLUMNS + extra + VALUE_COLUMNS
    # setting values keep their types (an int layer stays 6, not 6.0, next to missing values)
    data = {c: pd.Series([row.get(c) for row in rows], dtype=float if c in NUMBER_COLUMNS else object) for c in columns}
    return pd.DataFrame(data, columns=columns)


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """The columns holding setting values (method, parameters, seed): everything but identity and numbers."""
    return [c for c in frame.columns if c not in ("kind", "model", "dataset", "setting", "params", *VALUE_COLUMNS)]


def _key_value(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def setting_key(frame: pd.DataFrame, exclude: tuple[str, ...] = ("seed",)) -> pd.Series:
    """One hashable key per row from its setting values (JSON of the non-null values, ``exclude`` left out)."""
    columns = [c for c in setting_columns(frame) if c not in exclude]

    def key(row) -> str:
        return json.dumps({c: _key_value(row[c]) for c in columns if _key_value(row[c]) is not None}, sort_keys=True, default=str)

    if frame.empty:
        return pd.Series([], dtype=object, index=frame.index)
    return frame.apply(key, axis=1)


def value_order(value) -> tuple:
    """Sort key of a setting value: numbers in numeric order, then strings; missing values first."""
    value = _key_value(value)
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    return (2, 0, str(value))


# ------------------------------------------------------------------------------------ rendering


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(char, char) for char in str(text))


def latex_table(header: list[str], rows: list[list[str]], caption: str, label: str, text_columns: int,
                groups: list[tuple[str, int]] | None = None, escape_cells: bool = True) -> str:
    """A booktabs table; ``escape_cells=False`` takes the row cells as LaTeX already (see :class:`Cell`)."""
    spec = "l" * text_columns + "r" * (len(header) - text_columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if groups:
        cells, start, rules = [], 1, []
        for name, width in groups:
            cells.append(rf"\multicolumn{{{width}}}{{c}}{{{_tex_escape(name)}}}" if width > 1 else _tex_escape(name))
            if name:
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines.append(" & ".join(cells) + r" \\")
        lines.append(" ".join(rules))
    lines.append(" & ".join(_tex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_tex_escape(c) if escape_cells else c for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex_escape(caption)}}}", rf"\label{{{label}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Cell:
    """One table number: the value, an optional +- (``pm``) and what the +- is (``n`` seeds when > 1)."""

    value: float | None
    pm: float | None = None
    n: int = 1

    def markdown(self) -> str:
        text = _fmt(self.value)
        if self.value is not None and self.pm is not None:
            text += f" ± {_fmt(self.pm)}"
        if self.n > 1:
            text += f" (n={self.n})"
        return text

    def latex(self) -> str:
        text = _fmt(self.value)
        if self.value is not None and self.pm is not None:
            text += rf" $\pm$ {_fmt(self.pm)}"
        if self.n > 1:
            text += f" (n={self.n})"
        return text


def aggregate_seeds(group: pd.DataFrame) -> Cell:
    """One cell from a setting's rows of one metric: a single seed gives its value +- the half-width of
    its 95% bootstrap interval over prompts (if any); several seeds give mean +- std over seeds (ddof 1)."""
    values = [float(v) for v in group["value"] if _number(v) is not None]
    if not values:
        return Cell(None)
    if len(values) == 1:
        row = group.iloc[0]
        low, high = _number(row.get("ci_low")), _number(row.get("ci_high"))
        return Cell(values[0], None if low is None or high is None else (high - low) / 2)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return Cell(mean, std, len(values))


def _display_label(labels: list[str], seeds: list) -> str:
    """The row name of a setting run with several seeds: its labels with the seed suffix the plan adds
    (``-seed<s>``) removed, when every label has it; display only, never used to group."""
    stripped = {label[: -len(f"-seed{seed}")] if label.endswith(f"-seed{seed}") else label for label, seed in zip(labels, seeds)}
    return stripped.pop() if len(stripped) == 1 else labels[0]


def generation_table(frame: pd.DataFrame, metrics: list[str], setting_order: list[tuple[str, str]] | None = None):
    """Rows: (model, decoding setting) grouped by setting values (seeds pooled); columns: dataset x metric.

    Returns ``(header, rows of Cell / str, groups)``; row order follows ``setting_order`` ((model, label)
    pairs, e.g. the manifest's) where given, else first appearance.
    """
    gen = frame[frame["kind"] == "generation"].copy()
    datasets = list(dict.fromkeys(gen["dataset"]))
    header = ["model", "decoding"] + [f"{d}: {METRIC_NAMES.get(m, m)}" for d in datasets for m in metrics]
    groups = [("", 2)] + [(d, len(metrics)) for d in datasets]
    if gen.empty:
        return header, [], groups
    gen["_key"] = setting_key(gen)
    rank = {pair: i for i, pair in enumerate(setting_order or [])}
    gen["_rank"] = [rank.get((m, label), len(rank)) for m, label in zip(gen["model"], gen["setting"])]
    rows = []
    keys = gen.sort_values("_rank", kind="stable")[["model", "_key"]].drop_duplicates()
    for model, key in keys.itertuples(index=False):
        runs = gen[(gen["model"] == model) & (gen["_key"] == key)]
        first = runs.drop_duplicates("setting")
        row: list = [model, _display_label(list(first["setting"]), list(first["seed"]))]
        for d in datasets:
            for m in metrics:
                row.append(aggregate_seeds(runs[(runs["dataset"] == d) & (runs["metric"] == m)]))
        rows.append(row)
    return header, rows, groups


def benchmark_order(frame: pd.DataFrame) -> list[str]:
    """Variants ordered by value: original head, exits by layer, ACD pairs by (upper, lower, alpha)."""
    firsts = frame.drop_duplicates("setting")
    def key(row) -> tuple:
        if _key_value(row["lower"]) is not None:
            return (2, value_order(row["upper"]), value_order(row["lower"]), value_order(row["alpha"]))
        if _key_value(row["layer"]) is not None:
            return (1, value_order(row["layer"]))
        return (0,)
    return [r["setting"] for _, r in sorted(firsts.iterrows(), key=lambda item: key(item[1]))]


def benchmark_table(frame: pd.DataFrame, metrics: list[str]):
    """Rows: (model, task, metric); columns: original head, each exit, each ACD pair (ordered by value);
    a cell is the value +- lm-eval's standard error."""
    bench = frame[(frame["kind"] == "benchmark") & frame["metric"].isin(metrics)]
    variants = benchmark_order(bench) if not bench.empty else []
    cells = {(r.model, r.dataset, r.metric, r.setting): Cell(r.value, _number(r.stderr)) for r in bench.itertuples()}
    header = ["model", "task", "metric"] + variants
    rows = []
    for model in dict.fromkeys(bench["model"]):
        for task in dict.fromkeys(bench[bench["model"] == model]["dataset"]):
            for metric in metrics:
                if not any((model, task, metric, v) in cells for v in variants):
                    continue
                rows.append([model, task, METRIC_NAMES.get(metric, metric)] + [cells.get((model, task, metric, v), Cell(None)) for v in variants])
    return header, rows


def _render(rows: list[list], fmt: str) -> list[list[str]]:
    out = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, Cell):
                cells.append(cell.markdown() if fmt == "md" else cell.latex())
            else:
                cells.append(str(cell) if fmt == "md" else _tex_escape(cell))
        out.append(cells)
    return out


CONVENTIONS = {
    "diversity_simctg": "div (SimCTG) is SimCTG's measure_repetition_and_diversity over all generations of a cell "
                        "(as SimCTG and Contrastive Decoding report it)",
    "diversity_per_text": "div (per text, ACD code) is that function on each generation alone, too-short texts "
                          "scored 0, averaged over prompts (the ACD authors' auto_metrics.py)",
    "mauve": "MAUVE follows the Contrastive Decoding protocol (references and generations cut to the same "
             "featurizer length)",
    "coherence": "coh is the SimCSE cosine of prompt and generation",
}


def prompt_protocols(manifest: dict) -> dict[str, str]:
    """Per dataset, how its prompts were made, from the first generation sidecar that records it."""
    out: dict[str, str] = {}
    for entry in manifest["generations"]:
        if entry["dataset"] in out:
            continue
        try:
            sidecar = (_read_json(entry["scores"]).get("generation") or {})
        except (OSError, ValueError):
            continue
        settings = sidecar.get("settings") or {}
        request = settings.get("dataset")
        if not request:
            continue
        out[entry["dataset"]] = describe_prompts(request, settings.get("max_new_tokens"))
    return out


def describe_prompts(request: dict, max_new_tokens=None) -> str:
    """A dataset request in words: its named protocol if it has one, else its numbers."""
    name = request.get("name") or request.get("path") or "?"
    if request.get("protocol"):
        text = f"{name}, prompt protocol '{request['protocol']}'"
        if request.get("num_prompts") is not None:
            text += f", {request['num_prompts']} prompts"
    else:
        parts = [f"{request['num_prompts']} prompts" if request.get("num_prompts") is not None else "every usable document"]
        if request.get("prompt_tokens") is not None:
            parts.append(f"of {request['prompt_tokens']} tokens")
        if request.get("min_reference_tokens") is not None:
            parts.append(f"(references {request['min_reference_tokens']}-{request.get('max_reference_tokens', '?')} tokens)")
        text = f"{name}: " + " ".join(parts)
    if request.get("seed") is not None:
        text += f", seed {request['seed']}"
    if max_new_tokens is not None:
        text += f"; at most {max_new_tokens} new tokens"
    return text


def generation_caption(manifest: dict, metrics: list[str], frame: pd.DataFrame) -> str:
    caption = "Open-ended generation: decoding settings x datasets (" + ", ".join(METRIC_NAMES.get(m, m) for m in metrics) + ")."
    protocols = prompt_protocols(manifest)
    if protocols:
        caption += " Prompts: " + "; ".join(f"{d} = {text}" for d, text in protocols.items()) + "."
    notes = [CONVENTIONS[m] for m in metrics if m in CONVENTIONS]
    if notes:
        caption += " " + "; ".join(notes) + "."
    gen = frame[frame["kind"] == "generation"]
    if gen["ci_low"].notna().any():
        caption += " x ± h: h is the half-width of the 95% bootstrap interval over prompts (one seed)."
    if not gen.empty and (gen.groupby(["model", "dataset", "metric", setting_key(gen)])["value"].count() > 1).any():
        caption += " x ± s (n=k): mean and standard deviation over k seeds."
    return caption


# ------------------------------------------------------------------------------------ exits and examples

#: the readings of an exit a training report or a cast fit holds, in table order
EXIT_READINGS = ("logit_lens", "before", "cast", "after")


def exit_quality(manifest: dict) -> list[dict]:
    """Held-out next-token loss of every exit, per way of reading it, from each model's training report
    (``logit_lens``, ``before`` = the initial heads, ``after`` = the trained heads, and the original head) and,
    where the manifest names one (``cast_fit``), its cast fit (``cast``, ``logit_lens``, original).

    Returns ``{model, layer (int or 'original'), reading, cross_entropy, top1_accuracy, tokens, source}`` rows.
    """
    rows = []
    for model, spec in manifest["models"].items():
        if spec.get("training_report"):
            report = _read_json(spec["training_report"])
            for reading in ("logit_lens", "before", "after"):
                for layer, metrics in (report.get(reading) or {}).items():
                    rows.append(_quality_row(model, layer, reading, metrics, "training"))
        if spec.get("cast_fit"):
            fit = _read_json(spec["cast_fit"])
            for layer, readings in (fit.get("heldout_lm") or {}).items():
                if layer == "original":
                    rows.append(_quality_row(model, layer, "cast", readings, "cast_fit"))
                    continue
                for reading, metrics in readings.items():
                    rows.append(_quality_row(model, layer, reading, metrics, "cast_fit"))
    return rows


def _quality_row(model: str, layer, reading: str, metrics: dict, source: str) -> dict:
    return {"model": model, "layer": int(layer) if str(layer).isdigit() else str(layer), "reading": reading,
            "cross_entropy": _number(metrics.get("cross_entropy")), "top1_accuracy": _number(metrics.get("top1_accuracy")),
            "tokens": metrics.get("tokens"), "source": source}


def _reading_names(manifest: dict) -> dict[str, str]:
    """Column names: the initial heads are named by the init method, the trained ones by their steps."""
    names = {"logit_lens": "logit lens", "before": "initial heads", "cast": "cast map (fit_cast)", "after": "trained heads"}
    inits = set()
    steps = set()
    for spec in manifest["models"].values():
        if spec.get("training_report"):
            report = _read_json(spec["training_report"])
            inits.add((report.get("settings") or {}).get("init"))
            steps.add((report.get("training") or {}).get("steps"))
    if len(inits) == 1 and None not in inits:
        names["before"] = f"init: {inits.pop()}"
    if len(steps) == 1 and None not in steps:
        names["after"] = f"after {steps.pop()} steps"
    return names


def exits_table(manifest: dict) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, caption) of the exits table: one row per (model, exit) and one for the original head,
    one column per reading; a cell is the held-out cross-entropy in nats/token with the top-1 accuracy."""
    rows = exit_quality(manifest)
    readings = [r for r in EXIT_READINGS if any(row["reading"] == r for row in rows)]
    names = _reading_names(manifest)
    header = ["model", "exit", *[names[r] for r in readings]]
    cells: dict[tuple, dict[str, str]] = {}
    for row in rows:
        if row["cross_entropy"] is None:
            continue
        text = _fmt(row["cross_entropy"])
        if row["top1_accuracy"] is not None:
            text += f" ({_fmt(row['top1_accuracy'])})"
        cells.setdefault((row["model"], row["layer"]), {})[row["reading"]] = text
    def order(key):
        model, layer = key
        return (list(manifest["models"]).index(model), isinstance(layer, str), layer if isinstance(layer, int) else 0)
    body = []
    for key in sorted(cells, key=order):
        model, layer = key
        label = "original head" if layer == "original" else str(layer)
        body.append([model, label, *[cells[key].get(r, "-") for r in readings]])
    tokens = sorted({row["tokens"] for row in rows if row["tokens"]})
    caption = ("Exits: held-out next-token cross-entropy (nats/token; top-1 accuracy in brackets) of each exit per "
               "way of reading it, on the held-out slice of the head-training corpus")
    if tokens:
        caption += f" ({'/'.join(str(t) for t in tokens)} tokens)"
    caption += ("; the original head's row is what an exit would reach at best, and ln(vocabulary size) is a uniform "
                "guess. Logit lens: the original head on the final-normed layer state; cast map: the original head "
                "on a least-squares map of it to the top layer.")
    if not body:
        caption += " No exit was trained or fitted in this grid."
    return header, body, caption


def _generation_files(scores: dict) -> list[str]:
    files = scores.get("generations") or []
    return [files] if isinstance(files, str) else list(files)


# the methods examples.md shows when the config's tables.examples does not say (our choice: the plain LM's two
# common searches around ACD)
EXAMPLE_METHODS = ("greedy", "acd", "top_p")


def example_methods(manifest: dict) -> tuple[str, ...]:
    """The methods examples.md shows: the config's ``tables.examples``, else :data:`EXAMPLE_METHODS`."""
    methods = (manifest.get("tables") or {}).get("examples")
    return EXAMPLE_METHODS if methods is None else tuple(methods)


def example_settings(manifest: dict, methods: tuple[str, ...] | None = None) -> list[dict]:
    """The manifest generation entries shown side by side: per model and dataset, the first of each method in
    ``methods`` (default: :func:`example_methods`) in grid order (lowest seed). For a method with an amateur
    layer (a ``lower`` parameter: ACD), the setting whose ``lower`` is nearest the model's middle layer
    (num_layers / 2, as the paper's GPT-2 Medium pair original vs 12 of 24; ties: the lower layer)."""
    methods = example_methods(manifest) if methods is None else methods
    picked = []
    groups = list(dict.fromkeys((e["model"], e["dataset"]) for e in manifest["generations"]))
    for model, dataset in groups:
        middle = manifest["models"].get(model, {}).get("num_layers", 0) / 2
        entries = [e for e in manifest["generations"] if (e["model"], e["dataset"]) == (model, dataset)]
        for method in methods:
            candidates = [e for e in entries if e["method"] == method]
            if not candidates:
                continue
            def key(entry):
                lower = entry.get("params", {}).get("lower")
                distance = abs(lower - middle) if isinstance(lower, int) else 0
                return (distance, lower if isinstance(lower, int) else 0, entry.get("seed") or 0)
            picked.append(min(candidates, key=key))  # min keeps grid order among equal keys
    return picked


def example_continuations(manifest: dict, prompt_id: str | None = None) -> list[dict]:
    """One prompt's continuations under :func:`example_settings`: per (model, dataset) the prompt ``prompt_id``,
    or the smallest id the first setting's generations hold (ids compared as text)."""
    out = []
    by_group: dict[tuple, list[dict]] = {}
    for entry in example_settings(manifest):
        by_group.setdefault((entry["model"], entry["dataset"]), []).append(entry)
    for (model, dataset), entries in by_group.items():
        texts = []
        for entry in entries:
            rows = {}
            for path in _generation_files(_read_json(entry["scores"])):
                for row in read_jsonl(path):
                    rows[str(row["id"])] = row
            texts.append((entry, rows))
        chosen = prompt_id if prompt_id is not None else min(texts[0][1]) if texts and texts[0][1] else None
        if chosen is None:
            continue
        prompt = next((rows[chosen]["prompt"] for _, rows in texts if chosen in rows), None)
        reference = next((rows[chosen].get("reference") for _, rows in texts if chosen in rows), None)
        out.append({"model": model, "dataset": dataset, "id": chosen, "prompt": prompt, "reference": reference,
                    "continuations": [{"setting": e["label"], "method": e["method"],
                                       "text": rows[chosen]["generation"] if chosen in rows else None,
                                       "n_new_tokens": rows[chosen].get("n_new_tokens") if chosen in rows else None}
                                      for e, rows in texts]})
    return out


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in str(text).split("\n"))


def examples_markdown(manifest: dict, prompt_id: str | None = None) -> str:
    """Markdown: per (model, dataset), the prompt, then each continuation as a block quote under its setting."""
    methods = ", ".join(example_methods(manifest))
    parts = [f"Side by side: one prompt's continuations under {methods} (tables.examples; of a method with an amateur "
             "layer, the setting whose amateur is nearest the middle layer), copied verbatim from the generation files.\n"]
    examples = example_continuations(manifest, prompt_id)
    if not examples:
        parts.append(f"No generations of {methods} in this grid.\n")
    for example in examples:
        parts.append(f"### {example['model']} / {example['dataset']}, prompt `{example['id']}`\n")
        parts.append("**Prompt**\n\n" + _quote(example["prompt"]) + "\n")
        for item in example["continuations"]:
            tokens = f", {item['n_new_tokens']} new tokens" if item["n_new_tokens"] is not None else ""
            text = item["text"] if item["text"] is not None else "(no continuation for this prompt)"
            parts.append(f"**{item['setting']}** ({item['method']}{tokens})\n\n" + _quote(text) + "\n")
    return "\n".join(parts)


def write_tables(manifest: dict, output_dir: str | Path) -> dict[str, Path]:
    """Write results.csv, generation.{md,tex}, benchmarks.{md,tex}, exits.md, examples.md into ``output_dir``
    (atomically each)."""
    from multiexit.io import atomic_write_text as write_text_atomic

    output_dir = Path(output_dir)
    frame = tidy_results(manifest)
    paths = {}
    paths["csv"] = write_text_atomic(output_dir / "results.csv", frame.to_csv(index=False))

    metrics = manifest["tables"]["metrics"]
    order = list(dict.fromkeys((g["model"], g["label"]) for g in manifest["generations"]))
    header, rows, groups = generation_table(frame, metrics, order)
    caption = generation_caption(manifest, metrics, frame)
    if not rows:
        caption += " No generation results in this grid."
    paths["generation_md"] = write_text_atomic(output_dir / "generation.md", f"{caption}\n\n" + markdown_table(header, _render(rows, "md")))
    tex_header = header[:2] + [METRIC_NAMES.get(m, m) for _ in groups[1:] for m in metrics]
    paths["generation_tex"] = write_text_atomic(output_dir / "generation.tex", latex_table(
        tex_header, _render(rows, "tex"), caption, "tab:generation", 2, groups, escape_cells=False))

    bmetrics = manifest["tables"]["benchmark_metrics"]
    header, rows = benchmark_table(frame, bmetrics)
    caption = "Benchmarks (lm-eval): tasks x (original head, exits, ACD); x ± e: e is lm-eval's standard error."
    if not rows:
        caption += " No benchmark results in this grid."
    paths["benchmarks_md"] = write_text_atomic(output_dir / "benchmarks.md", f"{caption}\n\n" + markdown_table(header, _render(rows, "md")))
    paths["benchmarks_tex"] = write_text_atomic(output_dir / "benchmarks.tex", latex_table(
        header, _render(rows, "tex"), caption, "tab:benchmarks", 3, escape_cells=False))

    header, rows, caption = exits_table(manifest)
    paths["exits_md"] = write_text_atomic(output_dir / "exits.md", f"{caption}\n\n" + markdown_table(header, rows))
    paths["examples_md"] = write_text_atomic(output_dir / "examples.md", examples_markdown(manifest))
    return paths
