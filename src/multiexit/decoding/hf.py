"""Methods that are HF ``generate`` over one multi-exit output: greedy, beam and sampling over the
original head, greedy from one exit, and Auto-Contrastive Decoding (greedy over the contrasted
distribution). Registered into :data:`multiexit.decoding.registry.METHODS` on import.
"""

from __future__ import annotations

from typing import Callable

from multiexit.decoding.registry import (
    DecodingMethod,
    GenerateFn,
    all_checks,
    check_config,
    check_range,
    multi_exit_output,
    register_method,
)
from multiexit.model.config import MultiExitConfiguration

# ---------------------------------------------------------------------------------------------
# Methods that are HF ``generate`` with some multi-exit output and some generation arguments.


def _hf_generate(output_config: Callable[[dict], MultiExitConfiguration], gen_kwargs: Callable[[dict], dict]) -> GenerateFn:
    def run(model, input_ids, attention_mask, max_new_tokens, params, *, eos_token_id, pad_token_id):
        with multi_exit_output(model, output_config(params)):
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=0,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
                **gen_kwargs(params),
            )
        return out[:, input_ids.shape[1]:]

    return run


def _projection(params: dict) -> dict:
    mode = params.get("vocab_projection_mode")
    return {} if mode is None else {"vocab_projection_mode": mode}


def _original(params: dict) -> MultiExitConfiguration:
    return MultiExitConfiguration(use_original_head=True)


def _exit(params: dict) -> MultiExitConfiguration:
    return MultiExitConfiguration(use_original_head=False, output_layer_index=params["layer"], **_projection(params))


def _acd(params: dict) -> MultiExitConfiguration:
    return MultiExitConfiguration(
        use_original_head=False,
        contrast_layer_indices=(params["upper"], params["lower"]),
        contrast_alpha=params["alpha"],
        contrast_minimum_candidates=params["minimum_candidates"],
        **_projection(params),
    )


def _greedy_kwargs(params: dict) -> dict:
    return {"do_sample": False, "num_beams": 1, "repetition_penalty": params.get("repetition_penalty", 1.0)}


def _sampling_kwargs(params: dict) -> dict:
    return {"do_sample": True, "num_beams": 1, "top_k": 0, "top_p": 1.0, **{k: v for k, v in params.items() if k in ("temperature", "top_k", "top_p", "typical_p")}}


def _beam_kwargs(params: dict) -> dict:
    return {"do_sample": False, "num_beams": params["num_beams"], "length_penalty": params["length_penalty"], "early_stopping": True}


_EXIT_PARAMS = {"vocab_projection_mode": None}

register_method(DecodingMethod("greedy", {"repetition_penalty": 1.0}, _hf_generate(_original, _greedy_kwargs), "greedy search with the original head"))
register_method(DecodingMethod("beam", {"num_beams": 5, "length_penalty": 1.0}, _hf_generate(_original, _beam_kwargs), "beam search", validate=check_range("num_beams", 1, 1000, integer=True)))
register_method(DecodingMethod("top_k", {"top_k": 50, "temperature": 1.0}, _hf_generate(_original, _sampling_kwargs), "top-k sampling", validate=all_checks(check_range("top_k", 1, 10**9, integer=True), check_range("temperature", 0, 100, low_open=True))))
register_method(DecodingMethod("top_p", {"top_p": 0.95, "temperature": 1.0}, _hf_generate(_original, _sampling_kwargs), "nucleus sampling", validate=all_checks(check_range("top_p", 0, 1, low_open=True), check_range("temperature", 0, 100, low_open=True))))
register_method(DecodingMethod("typical", {"typical_p": 0.95, "temperature": 1.0}, _hf_generate(_original, _sampling_kwargs), "locally typical sampling", validate=all_checks(check_range("typical_p", 0, 1, low_open=True), check_range("temperature", 0, 100, low_open=True))))
register_method(DecodingMethod("temperature", {"temperature": 1.0}, _hf_generate(_original, _sampling_kwargs), "pure sampling at a temperature", validate=check_range("temperature", 0, 100, low_open=True)))
register_method(DecodingMethod("exit", {**_EXIT_PARAMS}, _hf_generate(_exit, _greedy_kwargs), "greedy from one exit (output_layer_index)", required=("layer",), validate=check_config(_exit)))
register_method(DecodingMethod(
    "acd",
    {"upper": "original", "alpha": 0.1, "minimum_candidates": 1, **_EXIT_PARAMS},
    _hf_generate(_acd, _greedy_kwargs),
    "Auto-Contrastive Decoding (greedy over the contrasted distribution)",
    required=("lower",),
    validate=check_config(_acd),
))


