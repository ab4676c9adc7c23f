"""Distributions decoded by HF ``generate``: the original head, one exit, and Auto-Contrastive Decoding, each
under any of the searches registered here (greedy, beam, top-k, top-p, typical, temperature).

A multi-exit model's logits already are the chosen distribution (an exit's, or the contrast of two exits:
see :mod:`multiexit.model.contrast`), so HF ``generate`` runs the search on top of it, as in the ACD
authors' code (IBM autocontrastive-gen, d0a7925: ``model.generate(...)`` over a multi-exit model with
the generation arguments of the chosen search). Registered into :mod:`multiexit.decoding.registry` on import.

The original head's single-search entries ``greedy``, ``beam``, ``top_k``, ``top_p``, ``typical`` and
``temperature`` are the method ``original`` with a fixed search (their params are the search's params, their
labels unchanged: 'greedy', 'beam-5', 'top-p-0.95'...).
"""

from __future__ import annotations

import functools
from typing import Callable

from multiexit.decoding.common import multi_exit_output
from multiexit.decoding.registry import (
    SEARCHES,
    DecodingMethod,
    GenerateFn,
    Search,
    all_checks,
    check_config,
    check_range,
    register_method,
    register_search,
)
from multiexit.model.config import MultiExitConfiguration

# ---------------------------------------------------------------------------------------------
# Searches: HF generate options from the search's parameters.


def _greedy_options(params: dict) -> dict:
    return {"do_sample": False, "num_beams": 1, "repetition_penalty": params["repetition_penalty"]}


def _beam_options(params: dict) -> dict:
    return {"do_sample": False, "num_beams": params["num_beams"], "length_penalty": params["length_penalty"], "early_stopping": True}


def _sampling_options(params: dict) -> dict:
    # top_k=0 and top_p=1.0 switch off filters a model's generation_config may set; the search's own value wins
    return {"do_sample": True, "num_beams": 1, "top_k": 0, "top_p": 1.0,
            **{k: v for k, v in params.items() if k in ("temperature", "top_k", "top_p", "typical_p")}}


_TEMPERATURE = check_range("temperature", 0, 100, low_open=True)

register_search(Search("greedy", {"repetition_penalty": 1.0}, _greedy_options, "greedy", "the most probable next token",
                       validate=check_range("repetition_penalty", 0, 100, low_open=True)))
register_search(Search("beam", {"num_beams": 5, "length_penalty": 1.0}, _beam_options, "beam-{num_beams}", "beam search",
                       validate=check_range("num_beams", 1, 1000, integer=True)))
register_search(Search("top_k", {"top_k": 50, "temperature": 1.0}, _sampling_options, "top-k-{top_k}", "top-k sampling",
                       validate=all_checks(check_range("top_k", 1, 10**9, integer=True), _TEMPERATURE)))
register_search(Search("top_p", {"top_p": 0.95, "temperature": 1.0}, _sampling_options, "top-p-{top_p}", "nucleus sampling",
                       validate=all_checks(check_range("top_p", 0, 1, low_open=True), _TEMPERATURE)))
register_search(Search("typical", {"typical_p": 0.95, "temperature": 1.0}, _sampling_options, "typical-{typical_p}",
                       "locally typical sampling", validate=all_checks(check_range("typical_p", 0, 1, low_open=True), _TEMPERATURE)))
register_search(Search("temperature", {"temperature": 1.0}, _sampling_options, "temperature-{temperature}",
                       "pure sampling at a temperature", validate=_TEMPERATURE))

HF_SEARCHES = ("greedy", "beam", "top_k", "top_p", "typical", "temperature")

# ---------------------------------------------------------------------------------------------
# Distributions: the multi-exit output HF generate reads.


def _hf_generate(output: Callable[[dict], dict]) -> GenerateFn:
    """A method's generate function: :func:`_hf_run` with the method's multi-exit output bound. (A partial of a
    module-level function, not a closure built at registration: mutation testing can then reach its body.)"""
    return functools.partial(_hf_run, output)


def _hf_run(output: Callable[[dict], dict], model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id,
            pad_token_id, min_new_tokens=0, search="greedy", search_params=None):
    options = SEARCHES[search].options({**SEARCHES[search].defaults, **(search_params or {})})
    with multi_exit_output(model, MultiExitConfiguration(**output(params), **_projection(params))):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **options,
        )
    return out[:, input_ids.shape[1]:]


def _projection(params: dict) -> dict:
    mode = params.get("vocab_projection_mode")
    return {} if mode is None else {"vocab_projection_mode": mode}


def _original(params: dict) -> dict:
    return {"use_original_head": True}


def _exit(params: dict) -> dict:
    return {"use_original_head": False, "output_layer_index": params["layer"]}


def _acd(params: dict) -> dict:
    return {
        "use_original_head": False,
        "contrast_layer_indices": (params["upper"], params["lower"]),
        "contrast_alpha": params["alpha"],
        "contrast_minimum_candidates": params["minimum_candidates"],
    }


def _buildable(output: Callable[[dict], dict]) -> Callable[[dict], None]:
    return check_config(lambda params: MultiExitConfiguration(**output(params), **_projection(params)))


_EXIT_PARAMS = {"vocab_projection_mode": None}
_ORIGINAL_GENERATE = _hf_generate(_original)

register_method(DecodingMethod("original", {}, _ORIGINAL_GENERATE, "the original head (the plain LM)", label="",
                               searches=HF_SEARCHES))
for _name in HF_SEARCHES:  # the original head's single-search entries (their params are the search's)
    _search = SEARCHES[_name]
    register_method(DecodingMethod(_name, dict(_search.defaults), _ORIGINAL_GENERATE,
                                   f"{_search.description} with the original head", validate=_search.validate,
                                   label="", searches=(_name,), fixed_search=_name))
register_method(DecodingMethod(
    "exit",
    {**_EXIT_PARAMS},
    _hf_generate(_exit),
    "one exit's next-token distribution (output_layer_index)",
    required=("layer",),
    validate=_buildable(_exit),
    label="exit-{layer}",
    searches=HF_SEARCHES,
    output=_exit,
    layer_params=("layer",),
))
register_method(DecodingMethod(
    "acd",
    {"upper": "original", "alpha": MultiExitConfiguration.contrast_alpha,
     "minimum_candidates": MultiExitConfiguration.contrast_minimum_candidates, **_EXIT_PARAMS},
    _hf_generate(_acd),
    "Auto-Contrastive Decoding (the contrast of an upper and a lower exit)",
    required=("lower",),
    validate=_buildable(_acd),
    label="acd-{upper}-{lower}-a{alpha}",
    searches=HF_SEARCHES,
    output=_acd,
    layer_params=("lower", "upper"),
))
