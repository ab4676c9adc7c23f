"""Decoding baselines registered into :mod:`multiexit.decoding.registry` by name.

* ``contrastive_search`` (Su et al. 2022): parameters ``top_k``, ``penalty_alpha``;
* ``contrastive_decoding`` (Li et al. 2023): ``amateur`` (required), ``alpha``, ``amateur_temperature``,
  ``amateur_context`` ('full' | 'last_token'), ``num_beams``;
* ``dola`` (Chuang et al. 2024): ``layers`` ('low' | 'high' | list), ``relative_top``, ``repetition_penalty``,
  ``final_norm``.

Each is a hand-written, batched loop over a left-padded batch with its own KV cache; see docs/baselines.md.
:func:`derived_settings` gives what a run should record beyond the DecodingSetting's params.
"""

from __future__ import annotations

from multiexit.decoding import contrastive_decoding, dola

BASELINES = ("contrastive_search", "contrastive_decoding", "dola")


def derived_settings(model, setting) -> dict:
    """Settings a baseline resolves from the model (to record next to ``setting.params``); {} for other methods.

    ``setting`` is a :class:`multiexit.decoding.registry.DecodingSetting` (or a dict with method/params).
    DoLa: the resolved candidate layers and the model's layer count (plus, after a run, how often
    each premature layer was chosen: :func:`multiexit.decoding.dola.last_run_layer_counts`).
    Contrastive decoding: the amateur's resolved folder and size.
    """
    method = setting["method"] if isinstance(setting, dict) else setting.method
    params = setting["params"] if isinstance(setting, dict) else setting.params
    if method == "dola":
        num_layers = dola._num_layers(model)
        return {
            "num_layers": num_layers,
            "mature_layer": num_layers,
            "candidate_layers": dola.candidate_layers(params["layers"], num_layers),
            "early_layers_final_norm": bool(params["final_norm"]),
        }
    if method == "contrastive_decoding":
        from multiexit.inputs.models import resolve_model_source

        info = {"amateur_path": resolve_model_source(str(params["amateur"]))}
        try:
            param = next(model.parameters())
            amateur = contrastive_decoding.load_amateur(params["amateur"], param.device, param.dtype)
            info["amateur_num_layers"] = amateur.config.get_text_config().num_hidden_layers
            info["amateur_parameters"] = sum(p.numel() for p in amateur.parameters())
        except Exception as err:  # recording must not fail a run; the generate call raises the real error
            info["amateur_load_error"] = str(err)
        return info
    if method == "contrastive_search":
        return {"hidden_state": "final layer (normed)", "similarity": "cosine, max over earlier real positions"}
    return {}


def last_run_info(setting) -> dict:
    """What the latest call of a baseline observed (DoLa: premature-layer counts); {} otherwise."""
    method = setting["method"] if isinstance(setting, dict) else setting.method
    if method == "dola":
        return {"premature_layer_counts": dola.last_run_layer_counts()}
    return {}


__all__ = ["BASELINES", "derived_settings", "last_run_info"]
