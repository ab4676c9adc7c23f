"""lm-eval model ``multi_exit`` (alias ``multi_exit_gpt``): lm-eval's HF model over a multi-exit LM.

Everything lm-eval does for its stock ``hf`` model (tokenisation, batching, request
caching, truncation, generation) is inherited from :class:`lm_eval.models.huggingface.HFLM`.
The only difference is the network: it is loaded through
:meth:`multiexit.AutoMultiExitModel.from_pretrained`, whose forward returns the configured
output (original head, one exit, or the ACD contrast of two exits) at *every* position, so
``loglikelihood`` of multi-token continuations, ``loglikelihood_rolling`` and
``generate_until`` all score the configured output.

``model_args`` take every :class:`multiexit.MultiExitConfiguration` field in its string
form next to lm-eval's own arguments, e.g.::

    pretrained=/models/gpt2-multi-exit,use_original_head=False,contrast_layer_indices='original;12'
    pretrained=package:smollm2-135m,use_original_head=False,vocab_projection_mode=SHARED_PROJECTION_DIRECT,output_layer_index=20
"""

from __future__ import annotations

import difflib
import inspect
import os

import transformers
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from multiexit.model.config import MultiExitConfiguration
from multiexit.model.modeling import AutoMultiExitModel, is_multi_exit_model
from multiexit.inputs.models import resolve_model_source


class _MultiExitLoader:
    """Stands in for ``AutoModelForCausalLM`` inside HFLM's loading code."""

    def __init__(self, multi_exit_config: MultiExitConfiguration):
        self.multi_exit_config = multi_exit_config

    def from_pretrained(self, pretrained, **kwargs):
        return AutoMultiExitModel.from_pretrained(pretrained, multi_exit_config=self.multi_exit_config, **kwargs)


def _named_parameters(function) -> set[str]:
    return {
        name
        for name, param in inspect.signature(function).parameters.items()
        if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL) and name != "self"
    }


def known_model_args() -> set[str]:
    """Names the model understands itself (lm-eval's HFLM arguments plus the multi-exit settings)."""
    return (
        _named_parameters(HFLM.__init__)
        | _named_parameters(HFLM._create_model)
        | set(MultiExitConfiguration.field_names())
    )


def _check_model_args(kwargs: dict) -> None:
    """Reject names that look like misspelt known arguments (others go on to ``from_pretrained``)."""
    known = known_model_args()
    for name in kwargs:
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        if close:
            raise ValueError(
                f"model_args: unknown argument {name!r} (did you mean {close[0]!r}?); "
                f"multi-exit settings: {', '.join(MultiExitConfiguration.field_names())}"
            )


@register_model("multi_exit", "multi_exit_gpt")
class MultiExitLM(HFLM):
    """lm-eval's HFLM whose network is a multi-exit model scoring its configured output."""

    def __init__(self, pretrained, **kwargs):
        settings = {name: kwargs.pop(name) for name in MultiExitConfiguration.field_names() if name in kwargs}
        _check_model_args(kwargs)
        try:
            self.multi_exit_config = MultiExitConfiguration.from_kwargs(**settings)
        except ValueError as err:
            raise ValueError(f"model_args: {err}") from None
        backend = kwargs.get("backend", "default")
        if backend not in ("default", "causal"):
            raise ValueError(f"model_args: backend={backend!r} is not supported; multi-exit models are causal LMs")
        kwargs["backend"] = "causal"
        kwargs.setdefault("trust_remote_code", False)
        if isinstance(pretrained, str):
            pretrained = resolve_model_source(pretrained)
        elif isinstance(pretrained, transformers.PreTrainedModel):
            if is_multi_exit_model(pretrained):
                if settings:  # no settings: keep the loaded model's own configuration
                    pretrained.set_multi_exit_config(self.multi_exit_config)
                self.multi_exit_config = pretrained.multi_exit_config
            else:
                pretrained = AutoMultiExitModel.from_model(pretrained, self.multi_exit_config)
        super().__init__(pretrained, **kwargs)

    def _create_model(self, pretrained, *args, **kwargs) -> None:
        stock = self.AUTO_MODEL_CLASS
        self.AUTO_MODEL_CLASS = _MultiExitLoader(self.multi_exit_config)
        try:
            super()._create_model(pretrained, *args, **kwargs)
        except ValueError as err:
            raise ValueError(f"model_args: {err}") from None
        finally:
            self.AUTO_MODEL_CLASS = stock

    def set_multi_exit_config(self, multi_exit_config: MultiExitConfiguration) -> None:
        """Switch the scored output (validated against the loaded model) without reloading it."""
        self.model.set_multi_exit_config(multi_exit_config)
        self.multi_exit_config = self.model.multi_exit_config

    def get_model_info(self) -> dict:
        """HFLM's model info plus the multi-exit settings; asks the Hub for a revision sha only
        for Hub names while online (a local folder or HF_HUB_OFFLINE=1 never touches the network)."""
        from huggingface_hub import constants

        pretrained = self.pretrained if isinstance(self.pretrained, str) else None
        on_hub = pretrained is not None and not os.path.exists(pretrained) and not constants.HF_HUB_OFFLINE
        info = super().get_model_info() if on_hub else {
            "model_num_parameters": self._model.num_parameters(),
            "model_dtype": self._model.dtype,
            "model_revision": self.revision,
            "model_sha": "",
        }
        config = self.model.multi_exit_config
        info["multi_exit_config"] = {
            name: (repr(value) if callable(value) else getattr(value, "value", value))
            for name, value in vars(config).items()
        }
        return info
