"""Multi-exit causal language models: any supported HF causal LM plus exits on intermediate layers.

A multi-exit model is the HF model class of the base architecture with two extra module
dictionaries (``name_to_lm_exit_head`` and ``name_to_cast_matrix``) and a ``forward`` that
returns the output chosen by its :class:`MultiExitConfiguration`: the original head, one
exit, or the ACD contrast of two exits. Everything else (``generate``, ``Trainer``,
``save_pretrained``) is inherited from the base class.

Layer numbering follows the paper and HF's ``hidden_states``: layer ``l`` (1..L) is the
output of block ``l``. An exit at ``l < L`` reads that state through the model's own final
norm; at ``l == L`` it reads the base model's last hidden state, which already has the
final norm applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from multiexit.model.architectures import architecture_spec, get_submodule
from multiexit.model.config import ORIGINAL, MultiExitConfiguration, VocabularyProjectionMode

EXIT_HEADS = "name_to_lm_exit_head"
CAST_MATRICES = "name_to_cast_matrix"
# Up to this many rows, vocabulary projections on CPU are formed as ``weight @ hidden.T`` (see few_rows_linear).
_FEW_ROWS = 64

# Config keys that HF passes on to AutoConfig (the rest go only to the model's from_pretrained).
_CONFIG_KWARGS = ("gguf_file", "revision", "cache_dir", "token", "local_files_only", "trust_remote_code", "subfolder")


def head_name(layer: int) -> str:
    return f"lm_head_{layer}"


def cast_name(layer: int) -> str:
    return f"cast_{layer}"


@dataclass
class MultiExitCausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus the per-exit training losses (when labels were given)."""

    exit_losses: dict | None = None


def few_rows_linear(linear: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``linear(hidden)``, formed as ``weight @ hidden.T`` on CPU when there are 2.._FEW_ROWS rows.

    Generation projects a handful of rows (batch x exits, last position) onto the vocabulary. On CPU,
    MKL runs ``hidden @ weight.T`` (``nn.Linear``) with 2-16 rows several times slower than with one
    (2 x 576 x 49,152 on 2 threads: 27 ms vs 12 ms), while ``weight @ hidden.T`` streams the weight
    once (5 ms); at 64+ rows the two are even. Same values up to float rounding. One row, many rows,
    other devices, other module types and modules with hooks (accelerate offloading) take the
    module's own call. A hidden state of another dtype than the weight (a float32 head on a bf16 body)
    is cast to the weight's dtype first.
    """
    hidden = _as_weight_dtype(linear, hidden)
    rows = hidden.numel() // hidden.shape[-1]
    if (type(linear) is not nn.Linear or hidden.device.type != "cpu" or not 2 <= rows <= _FEW_ROWS
            or linear._forward_hooks or linear._forward_pre_hooks or hasattr(linear, "_hf_hook")):
        return linear(hidden)
    logits = torch.mm(linear.weight, hidden.reshape(rows, hidden.shape[-1]).t()).t().contiguous()
    if linear.bias is not None:
        logits = logits + linear.bias
    return logits.reshape(*hidden.shape[:-1], logits.shape[-1])


def _as_weight_dtype(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``hidden`` in the dtype of ``module.weight`` (no copy when they already match; autocast still applies)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point() and hidden.dtype != weight.dtype:
        return hidden.to(weight.dtype)
    return hidden


def _block_output(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class MultiExitMixin:
    """Adds exits to an HF causal-LM class; combined with the base class by :func:`multi_exit_class`."""

    multi_exit_base_class: type = None  # set on the generated class

    def __init__(self, config: PretrainedConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.multi_exit_spec = architecture_spec(config.model_type)
        hidden = self.get_output_embeddings().in_features
        vocab = self.get_output_embeddings().out_features
        self.name_to_lm_exit_head = nn.ModuleDict(
            {head_name(layer): nn.Linear(hidden, vocab, bias=False) for layer in self.exit_head_layers}
        )
        self.name_to_cast_matrix = nn.ModuleDict(
            {cast_name(layer): nn.Linear(hidden, hidden, bias=False) for layer in self.cast_layers}
        )
        for module in (*self.name_to_lm_exit_head.values(), *self.name_to_cast_matrix.values()):
            self._init_weights(module)
        self.multi_exit_config = MultiExitConfiguration()

    # ------------------------------------------------------------------ layout
    @property
    def num_exit_layers(self) -> int:
        return len(get_submodule(self, self.multi_exit_spec.blocks))

    @property
    def exit_head_layers(self) -> list[int]:
        """Layers with their own trained head (stored in the LAYER_SPECIFIC_PROJECTION layout)."""
        stored_mode = getattr(self.config, "vocab_projection_mode", None)
        if stored_mode not in (None, VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION.value):
            return []
        return [int(v) for v in (getattr(self.config, "lm_head_layer_indices", None) or [])]

    @property
    def cast_layers(self) -> list[int]:
        return [int(v) for v in (getattr(self.config, "cast_layer_indices", None) or [])]

    def available_exits(self, mode: VocabularyProjectionMode) -> list[int] | None:
        """Layers that can be read in ``mode``; None means every layer."""
        if mode == VocabularyProjectionMode.SHARED_PROJECTION_DIRECT:
            return None
        if mode == VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS:
            return sorted(set(self.cast_layers) | {self.num_exit_layers})
        return sorted(self.exit_head_layers)

    def trained_exit_layers(self, mode: VocabularyProjectionMode | None = None) -> list[int]:
        """The exits whose losses make up the training loss."""
        mode = mode or self.multi_exit_config.vocab_projection_mode
        if mode == VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS:
            return sorted(self.cast_layers)
        if mode == VocabularyProjectionMode.SHARED_PROJECTION_DIRECT:
            return []
        return sorted(self.exit_head_layers)

    # ------------------------------------------------------------------ configuration
    def set_multi_exit_config(self, multi_exit_config: MultiExitConfiguration) -> "MultiExitMixin":
        """Validate ``multi_exit_config`` against this model and make it the active one."""
        if not isinstance(multi_exit_config, MultiExitConfiguration):
            raise ValueError(f"multi_exit_config: expected a MultiExitConfiguration, got {type(multi_exit_config)}")
        if multi_exit_config.vocab_projection_mode is None:
            stored = getattr(self.config, "vocab_projection_mode", None)
            mode = VocabularyProjectionMode.parse(stored) if stored else VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION
            multi_exit_config = dataclasses.replace(multi_exit_config, vocab_projection_mode=mode)
        multi_exit_config.validate_for_model(
            self.num_exit_layers, self.available_exits(multi_exit_config.vocab_projection_mode)
        )
        self.multi_exit_config = multi_exit_config
        return self

    def freeze_base_model(self) -> None:
        """Freeze every parameter except exit heads and cast matrices."""
        for name, param in self.named_parameters():
            param.requires_grad = name.startswith((EXIT_HEADS + ".", CAST_MATRICES + "."))

    # ------------------------------------------------------------------ projections
    def final_transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own final norm (and OPT's project_out) applied to an intermediate state."""
        hidden = get_submodule(self, self.multi_exit_spec.final_norm)(hidden)
        for path in self.multi_exit_spec.extra_final:
            module = get_submodule(self, path)
            if module is not None:
                hidden = module(hidden)
        return hidden

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is None:
            return logits
        return torch.tanh(logits / cap) * cap

    def original_head_logits(self, normed_hidden: torch.Tensor) -> torch.Tensor:
        return self._softcap(few_rows_linear(self.get_output_embeddings(), normed_hidden))

    def uses_original_head(self, layer: int | str, mode: VocabularyProjectionMode) -> bool:
        """Whether exit ``layer`` is read through the model's own output head in ``mode``."""
        return layer == ORIGINAL or mode != VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION

    def exit_head_input(self, layer: int, normed_hidden: torch.Tensor, mode: VocabularyProjectionMode) -> torch.Tensor:
        """What the shared head reads for exit ``layer`` (the cast state in SHARED_PROJECTION_CAST_OUTPUTS)."""
        if mode == VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS and cast_name(layer) in self.name_to_cast_matrix:
            cast = self.name_to_cast_matrix[cast_name(layer)]
            return cast(_as_weight_dtype(cast, normed_hidden))
        return normed_hidden

    def project_exit(self, layer: int, normed_hidden: torch.Tensor, mode: VocabularyProjectionMode) -> torch.Tensor:
        """Vocabulary logits of exit ``layer`` from its final-normed hidden state."""
        if mode == VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION:
            return self._softcap(few_rows_linear(self.name_to_lm_exit_head[head_name(layer)], normed_hidden))
        return self.original_head_logits(self.exit_head_input(layer, normed_hidden, mode))

    @contextlib.contextmanager
    def capture_layers(self, layers: Iterable[int]):
        """Record the outputs of blocks ``layers`` (1-based) during a forward pass."""
        blocks = get_submodule(self, self.multi_exit_spec.blocks)
        captured: dict[int, torch.Tensor] = {}
        handles = []
        for layer in sorted(set(layers)):
            def hook(_module, _inputs, output, layer=layer):
                captured[layer] = _block_output(output)

            handles.append(blocks[layer - 1].register_forward_hook(hook))
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def exit_states(self, layers: Iterable[int | str], logits_to_keep: int = 0, **body_arguments):
        """One body pass: the base model's outputs and the final-normed state of each of ``layers``.

        ``ORIGINAL`` and the top layer map to the last hidden state (already normed by the body);
        ``logits_to_keep`` keeps only the last positions (0: all). Used by :meth:`multi_exit_forward`
        and by head training.
        """
        top = self.num_exit_layers
        layers = list(dict.fromkeys(layers))
        intermediate = [layer for layer in layers if layer != ORIGINAL and layer < top]
        with self.capture_layers(intermediate) as captured:
            outputs = self.base_model(**body_arguments)
        last = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        states = {layer: last if layer == ORIGINAL or layer == top
                  else self.final_transform(slice_logits_to_keep(captured[layer], logits_to_keep)) for layer in layers}
        return outputs, states

    def exit_loss(self, logits: torch.Tensor, labels: torch.Tensor, **extra) -> torch.Tensor:
        """Token-mean next-token cross-entropy of one exit's logits (the model's own causal-LM loss)."""
        return self.loss_function(logits=logits, labels=labels, vocab_size=self.config.get_text_config().vocab_size, **extra)

    # ------------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        """The configured output: original head, one exit (output_layer_index) or ACD (contrast_layer_indices).

        Takes the base model's arguments. With ``labels`` (and use_original_head=False) the loss is
        the sum over trained exits of the next-token cross-entropy; per-exit values in ``exit_losses``.
        """
        if self.multi_exit_config.use_original_head:
            return self.multi_exit_base_class.forward(self, *args, **kwargs)
        bound = self._base_signature().bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        extra = arguments.pop("kwargs", {}) or {}
        labels = arguments.pop("labels", None)
        logits_to_keep = arguments.pop("logits_to_keep", 0) or 0
        if labels is not None:
            logits_to_keep = 0
        # the output is always a MultiExitCausalLMOutput (it also indexes like a tuple); transformers 5 passes
        # return_dict through **kwargs, where the body would turn it into a tuple
        arguments.pop("return_dict", None)
        extra.pop("return_dict", None)
        return self.multi_exit_forward(arguments, extra, labels, logits_to_keep)

    @classmethod
    @functools.cache
    def _base_signature(cls) -> inspect.Signature:
        return inspect.signature(cls.multi_exit_base_class.forward)

    def multi_exit_forward(self, body_arguments: dict, extra: dict, labels, logits_to_keep) -> MultiExitCausalLMOutput:
        config = self.multi_exit_config
        mode = config.vocab_projection_mode
        output_layers = config.output_layers
        loss_layers = self.trained_exit_layers(mode) if labels is not None else []
        outputs, states = self.exit_states([*output_layers, *loss_layers], logits_to_keep, **body_arguments, **extra)
        last = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)

        # Exits read through the shared output head are projected in one stacked matmul: the head
        # weight (hidden x vocab) is then read once per step instead of once per exit (see few_rows_linear).
        cache: dict = {}
        shared = [layer for layer in dict.fromkeys([*output_layers, *loss_layers]) if self.uses_original_head(layer, mode)]
        if len(shared) > 1:
            inputs = [self.exit_head_input(layer, states[layer], mode) for layer in shared]
            stacked = self.original_head_logits(torch.cat(inputs, dim=0))
            cache.update(zip(shared, stacked.split(last.shape[0], dim=0)))

        def logits_of(layer):
            if layer not in cache:
                cache[layer] = self.original_head_logits(last) if layer == ORIGINAL else self.project_exit(layer, states[layer], mode)
            return cache[layer]

        if config.contrast_layer_indices is not None:
            upper, lower = config.contrast_layer_indices
            logits = config.effective_contrast_function(logits_of(upper), logits_of(lower))
        else:
            logits = logits_of(output_layers[0])

        loss, exit_losses = None, None
        if labels is not None:
            exit_losses = {}
            for layer in loss_layers:
                exit_losses[layer] = self.exit_loss(logits_of(layer), labels, **extra)
            loss = torch.stack(list(exit_losses.values())).sum() if exit_losses else None

        return MultiExitCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
            exit_losses=exit_losses,
        )


@functools.cache
def multi_exit_class(base_class: type) -> type:
    """The multi-exit subclass of an HF causal-LM class (one per base class)."""

    def forward(self, *args, **kwargs):
        return MultiExitMixin.forward(self, *args, **kwargs)

    # generate() inspects forward's signature (e.g. to build position_ids for left padding): expose the base one
    forward.__signature__ = inspect.signature(base_class.forward)
    forward.__doc__ = MultiExitMixin.forward.__doc__
    return type(
        f"MultiExit{base_class.__name__}",
        (MultiExitMixin, base_class),
        {"multi_exit_base_class": base_class, "__module__": __name__, "forward": forward},
    )


def _prepare_config(config: PretrainedConfig, multi_exit_config: MultiExitConfiguration) -> PretrainedConfig:
    """Record the exit layout requested in ``multi_exit_config`` on an HF config (creating heads/casts)."""
    architecture_spec(config.model_type)
    stored = getattr(config, "lm_head_layer_indices", None)
    requested = multi_exit_config.lm_head_layer_indices
    num_layers = config.get_text_config().num_hidden_layers
    if requested is not None:
        bad = [layer for layer in requested if not 1 <= layer <= num_layers]
        if bad:
            raise ValueError(f"lm_head_layer_indices: layers {bad} are outside 1..{num_layers}")
        if stored and sorted(int(v) for v in stored) != sorted(requested):
            raise ValueError(
                f"lm_head_layer_indices: checkpoint already has exits at {sorted(stored)}; "
                f"got {sorted(requested)} (omit it to use the checkpoint's exits)"
            )
    if not stored and requested is not None:
        mode = multi_exit_config.vocab_projection_mode or VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION
        config.lm_head_layer_indices = list(requested)
        config.vocab_projection_mode = mode.value
        if mode == VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS:
            config.cast_layer_indices = list(requested)
    elif stored and getattr(config, "vocab_projection_mode", None) is None:
        # the paper's released checkpoints: trained heads, no mode recorded
        config.vocab_projection_mode = VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION.value
    return config


class AutoMultiExitModel:
    """Loads any supported causal LM (Hub name, local folder, GGUF) as a multi-exit model."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        multi_exit_config: MultiExitConfiguration | None = None,
        **hf_kwargs,
    ):
        multi_exit_config = multi_exit_config or MultiExitConfiguration()
        config = hf_kwargs.pop("config", None)
        if config is None:
            config_kwargs = {k: hf_kwargs[k] for k in _CONFIG_KWARGS if k in hf_kwargs}
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        config = _prepare_config(config, multi_exit_config)
        model_class = multi_exit_class(_causal_lm_class(config))
        model = model_class.from_pretrained(pretrained_model_name_or_path, config=config, **hf_kwargs)
        return _finish(model, multi_exit_config)

    @classmethod
    def from_config(cls, config: PretrainedConfig, multi_exit_config: MultiExitConfiguration | None = None, **kwargs):
        """A randomly initialised multi-exit model (tests, training from scratch)."""
        multi_exit_config = multi_exit_config or MultiExitConfiguration()
        config = _prepare_config(config.__class__.from_dict(config.to_dict()), multi_exit_config)
        model = multi_exit_class(_causal_lm_class(config))(config, **kwargs)
        return _finish(model, multi_exit_config)

    @classmethod
    def from_model(cls, model, multi_exit_config: MultiExitConfiguration | None = None):
        """Wrap an already loaded HF causal LM (its weights are copied; new exits are freshly initialised)."""
        multi_exit_config = multi_exit_config or MultiExitConfiguration()
        config = _prepare_config(model.config.__class__.from_dict(model.config.to_dict()), multi_exit_config)
        wrapped = multi_exit_class(_causal_lm_class(config))(config)
        missing, unexpected = wrapped.load_state_dict(model.state_dict(), strict=False)
        bad_missing = [k for k in missing if not k.startswith((EXIT_HEADS, CAST_MATRICES))]
        if unexpected or bad_missing:
            raise ValueError(f"from_model: weights do not match (missing {bad_missing}, unexpected {unexpected})")
        wrapped.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
        if hasattr(model, "generation_config"):
            wrapped.generation_config = model.generation_config
        return _finish(wrapped, multi_exit_config)


def _causal_lm_class(config: PretrainedConfig) -> type:
    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"no causal-LM class for config type {type(config).__name__}") from None


def _finish(model, multi_exit_config: MultiExitConfiguration):
    model.set_multi_exit_config(multi_exit_config)
    if multi_exit_config.freeze_parameters and not multi_exit_config.use_original_head:
        model.freeze_base_model()
    return model


def is_multi_exit_model(model) -> bool:
    return isinstance(model, MultiExitMixin)
