"""Contrastive Decoding (Li et al., ACL 2023): an expert LM contrasted with a separate, smaller amateur LM.

    score(v) = log p_expert(v) - log p_amateur(v)   for v with p_expert(v) >= alpha * max p_expert
    score(v) = -inf                                 elsewhere

``p_amateur`` is the amateur's softmax at ``amateur_temperature`` (the paper: 0.5 for GPT-2 small
as the amateur of GPT-2 XL). ``amateur_context='last_token'`` (the default, as the original
code) conditions the amateur only on the last prompt token (then on the generated tokens);
``'full'`` gives it the whole prompt. ``num_beams=1`` is greedy search over the score;
``num_beams>1`` is beam search over the summed scores (the paper used 5 beams); a finished beam
keeps its score and is extended with padding. Ties between equal scores (for example, every
plausible token when the amateur equals the expert at temperature 1) go to the token the expert
finds more probable, then to the lower token id, so an amateur identical to the expert gives
exactly the expert's greedy output. ``min_new_tokens`` (the CD protocol generates exactly the
requested number of tokens) gives EOS a score of -inf until that many tokens exist (a row whose
plausible set is EOS alone then takes the expert's most probable other token, score 0).

The amateur is a model source (``package:<name>``, a local folder, a Hub name) loaded once per
process with :class:`multiexit.AutoMultiExitModel` onto the expert's device and dtype. It must
share the expert's tokenizer: the output widths must match and, when both folders hold a
loadable tokenizer, the vocabularies must map every token string to the same id.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from multiexit._lazy import LazyModule
from multiexit.io import atomic_directory
from multiexit.decoding.registry import DecodingMethod, all_checks, check_range, register_method
from multiexit.inputs.models import PACKAGE_PREFIX, PACKAGED_MODELS, resolve_model_source
from multiexit.decoding.common import (
    CachedBatch,
    check_inputs,
    eos_ids,
    is_eos,
    original_head,
    pad_value,
    stack_new_tokens,
    suppress_eos,
)

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")

DEFAULTS = {"alpha": 0.1, "amateur_temperature": 0.5, "amateur_context": "last_token", "num_beams": 1}
AMATEUR_CONTEXTS = ("full", "last_token")

_AMATEURS: dict[tuple, object] = {}
_COMPATIBLE: set[tuple] = set()


def _validate(params: dict) -> None:
    source = params["amateur"]
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise ValueError(f"amateur must be a model source (package:<name>, a folder or a Hub name), got {source!r}")
    source = str(source)
    if source.startswith(PACKAGE_PREFIX):
        name = source[len(PACKAGE_PREFIX):]
        if name not in PACKAGED_MODELS:
            raise ValueError(f"amateur: unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}")
    elif source.startswith(("/", ".", "~")) or os.path.isdir(source):
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(f"amateur: {source!r} is not a model folder (no config.json)")
    check_range("alpha", 0.0, 1.0, low_open=True)(params)
    check_range("amateur_temperature", 0.0, 100.0, low_open=True)(params)
    check_range("num_beams", 1, 1000, integer=True)(params)
    if params["amateur_context"] not in AMATEUR_CONTEXTS:
        raise ValueError(f"amateur_context must be one of {list(AMATEUR_CONTEXTS)}, got {params['amateur_context']!r}")


def load_amateur(source: str, device, dtype):
    """The amateur model for ``source`` on ``device``/``dtype`` (loaded once per process)."""
    from multiexit.inputs.models import load_model

    path = resolve_model_source(str(source))
    key = (path, str(device), str(dtype))
    if key not in _AMATEURS:
        _AMATEURS[key] = load_model(path, device=device, dtype=dtype, tokenizer=False)[0]
    return _AMATEURS[key]


def _output_width(model) -> int:
    return model.get_output_embeddings().out_features


def _load_vocab(folder):
    if not folder or not os.path.isdir(str(folder)):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder)).get_vocab()
    except Exception:  # no (loadable) tokenizer in the folder: only the width check applies
        return None


def check_tokenizers(expert, amateur) -> None:
    """Raise ValueError unless the amateur shares the expert's vocabulary (width, and token->id map when loadable)."""
    expert_path = getattr(expert, "name_or_path", "") or ""
    amateur_path = getattr(amateur, "name_or_path", "") or ""
    width_e, width_a = _output_width(expert), _output_width(amateur)
    key = (str(expert_path), str(amateur_path), width_e, width_a)
    if key in _COMPATIBLE:
        return
    if width_e != width_a:
        raise ValueError(
            f"contrastive_decoding: the amateur's vocabulary ({width_a} outputs, {amateur_path!r}) differs from the "
            f"expert's ({width_e} outputs, {expert_path!r}); the amateur must share the expert's tokenizer"
        )
    vocab_e, vocab_a = _load_vocab(expert_path), _load_vocab(amateur_path)
    if vocab_e is not None and vocab_a is not None and vocab_e != vocab_a:
        differing = sorted(t for t in set(vocab_e) | set(vocab_a) if vocab_e.get(t) != vocab_a.get(t))
        raise ValueError(
            f"contrastive_decoding: the tokenizers of the expert ({expert_path!r}) and the amateur ({amateur_path!r}) "
            f"map {len(differing)} token(s) differently (e.g. {differing[:5]}); the amateur must share the expert's tokenizer"
        )
    _COMPATIBLE.add(key)


def contrastive_scores(expert_logits: torch.Tensor, amateur_logits: torch.Tensor, alpha: float, amateur_temperature: float):
    """(CD score, expert log-probs), both (rows, V) float32; the score is -inf outside the plausible set."""
    expert = torch.log_softmax(expert_logits.float(), dim=-1)
    amateur = torch.log_softmax(amateur_logits.float() / amateur_temperature, dim=-1)
    plausible = expert >= expert.max(dim=-1, keepdim=True).values + math.log(alpha)
    score = torch.where(plausible, expert - amateur, torch.full_like(expert, float("-inf")))
    return score, expert


def _pick(score: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """argmax of score; ties go to the higher expert log-prob, then the lower id."""
    best = score.max(dim=-1, keepdim=True).values
    return torch.where(score == best, expert, torch.full_like(expert, float("-inf"))).argmax(dim=-1)


def _amateur_inputs(input_ids, attention_mask, context: str):
    if context == "full":
        return input_ids, attention_mask
    last = input_ids[:, -1:]
    return last, torch.ones_like(last)


def contrastive_decoding(model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id, pad_token_id,
                         min_new_tokens=0):
    check_inputs(input_ids, attention_mask, max_new_tokens, min_new_tokens)
    param = next(model.parameters())
    amateur = load_amateur(params["amateur"], param.device, param.dtype)
    check_tokenizers(model, amateur)
    settings = (float(params["alpha"]), float(params["amateur_temperature"]))
    amateur_ids, amateur_mask = _amateur_inputs(input_ids, attention_mask, params["amateur_context"])
    eos = eos_ids(eos_token_id, input_ids.device)
    pad = pad_value(pad_token_id, eos)
    with original_head(model), original_head(amateur):
        expert_state = CachedBatch(model, input_ids, attention_mask)
        amateur_state = CachedBatch(amateur, amateur_ids, amateur_mask)
        if int(params["num_beams"]) == 1:
            return _greedy(expert_state, amateur_state, input_ids.shape[0], max_new_tokens, settings, eos, pad, min_new_tokens)
        return _beam(expert_state, amateur_state, input_ids.shape[0], int(params["num_beams"]), max_new_tokens, settings, eos, pad,
                     min_new_tokens)


def _greedy(expert_state, amateur_state, rows, max_new_tokens, settings, eos, pad, min_new_tokens=0):
    device = expert_state.mask.device
    new_tokens: list[torch.Tensor] = []
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    if max_new_tokens == 0:
        return stack_new_tokens(new_tokens, rows, device)
    expert_logits = expert_state.prefill().logits[:, -1]
    amateur_logits = amateur_state.prefill().logits[:, -1]
    for _ in range(max_new_tokens):
        score, expert = contrastive_scores(expert_logits, amateur_logits, *settings)
        if len(new_tokens) < min_new_tokens:
            score = suppress_eos(score, eos, fallback=expert)
        token = _pick(score, expert)
        token = torch.where(finished, torch.full_like(token, pad), token)
        new_tokens.append(token)
        finished = finished | is_eos(token, eos)
        if bool(finished.all()) or len(new_tokens) == max_new_tokens:
            break
        expert_logits = expert_state.step(token).logits[:, -1]
        amateur_logits = amateur_state.step(token).logits[:, -1]
    return stack_new_tokens(new_tokens, rows, device)


def _beam(expert_state, amateur_state, rows, beams, max_new_tokens, settings, eos, pad, min_new_tokens=0):
    device = expert_state.mask.device
    if max_new_tokens == 0:
        return torch.empty(rows, 0, dtype=torch.long, device=device)
    expert_logits = expert_state.prefill().logits[:, -1]
    amateur_logits = amateur_state.prefill().logits[:, -1]
    expert_state.repeat_rows(beams)
    amateur_state.repeat_rows(beams)
    expert_logits = expert_logits.repeat_interleave(beams, dim=0)
    amateur_logits = amateur_logits.repeat_interleave(beams, dim=0)
    # all beams start identical: only the first may expand at step one
    beam_scores = torch.full((rows, beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    beam_scores = beam_scores.view(-1)
    finished = torch.zeros(rows * beams, dtype=torch.bool, device=device)
    history = torch.empty(rows * beams, 0, dtype=torch.long, device=device)
    base = (torch.arange(rows, device=device) * beams)[:, None]
    for step in range(max_new_tokens):
        score, expert = contrastive_scores(expert_logits, amateur_logits, *settings)
        if step < min_new_tokens:
            score = suppress_eos(score, eos, fallback=expert)
        vocab = score.shape[-1]
        # finished beams can only be extended with pad, at no cost
        pad_only = torch.full_like(score, float("-inf"))
        pad_only[:, pad] = 0.0
        score = torch.where(finished[:, None], pad_only, score)
        total = (beam_scores[:, None] + score).view(rows, beams * vocab)
        top_scores, top_index = total.topk(beams, dim=-1, sorted=True)
        parent = top_index // vocab
        token = top_index % vocab
        source_rows = (base + parent).view(-1)
        token = token.view(-1)
        was_finished = finished[source_rows]
        token = torch.where(was_finished, torch.full_like(token, pad), token)
        history = torch.cat([history[source_rows], token[:, None]], dim=1)
        beam_scores = top_scores.view(-1)
        finished = was_finished | is_eos(token, eos)
        if bool(finished.all()):  # CD scores can be positive, so unfinished beams may still overtake: run on until all end
            break
        if step == max_new_tokens - 1:
            break
        expert_state.select_rows(source_rows)
        amateur_state.select_rows(source_rows)
        expert_logits = expert_state.step(token).logits[:, -1]
        amateur_logits = amateur_state.step(token).logits[:, -1]
    best = beam_scores.view(rows, beams).argmax(dim=-1)
    return history.view(rows, beams, -1)[torch.arange(rows, device=device), best]


def truncate_model(source: str, num_layers: int, output_dir: str | Path) -> Path:
    """Save the first ``num_layers`` blocks of a causal LM (plus its embeddings, final norm, head and tokenizer)
    as a separate model folder: an amateur that shares the expert's tokenizer by construction.

    The folder is written atomically; an existing complete folder is reused.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = Path(output_dir)
    if (output_dir / "config.json").is_file():
        return output_dir
    path = resolve_model_source(source)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    total = model.config.num_hidden_layers
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < total:
        raise ValueError(f"num_layers must be an integer in 1..{total - 1}, got {num_layers!r}")
    from multiexit.model.architectures import architecture_spec, get_submodule

    blocks = get_submodule(model, architecture_spec(model.config.model_type).blocks)
    del blocks[num_layers:]
    model.config.num_hidden_layers = num_layers
    for key in ("layer_types",):
        value = getattr(model.config, key, None)
        if isinstance(value, list):
            setattr(model.config, key, value[:num_layers])
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        try:
            AutoTokenizer.from_pretrained(path).save_pretrained(staging)
        except Exception:  # a source without a tokenizer: the folder still works as an amateur (width check only)
            pass
    return output_dir


def _derived(model, params: dict) -> dict:
    info = {"amateur_path": resolve_model_source(str(params["amateur"]))}
    try:
        param = next(model.parameters())
        amateur = load_amateur(params["amateur"], param.device, param.dtype)
        info["amateur_num_layers"] = amateur.config.get_text_config().num_hidden_layers
        info["amateur_parameters"] = sum(p.numel() for p in amateur.parameters())
    except Exception as err:  # recording must not fail a run; the generate call raises the real error
        info["amateur_load_error"] = str(err)
    return info


register_method(
    DecodingMethod(
        "contrastive_decoding",
        dict(DEFAULTS),
        contrastive_decoding,
        "Contrastive Decoding (Li et al. 2023): log p_expert - log p_amateur on {p_expert >= alpha*max}; greedy or beam",
        required=("amateur",),
        validate=all_checks(_validate),
        label="cd-{amateur}-a{alpha}-beam{num_beams}",
        derived=_derived,
    )
)
