"""MultiExitConfiguration: which output a multi-exit model produces and how its exits are projected."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, fields
from typing import Callable, Sequence

from multiexit._lazy import LazyModule
from multiexit.model.contrast import ALPHA, MINIMUM_CANDIDATES, check_contrast_parameters, contrasted_logprobs

# torch is imported on first use: the plan imports this module (multiexit._lazy)
torch = LazyModule("torch")

ORIGINAL = "original"


class VocabularyProjectionMode(enum.Enum):
    """How an intermediate layer's hidden state is turned into vocabulary logits."""

    LAYER_SPECIFIC_PROJECTION = "LAYER_SPECIFIC_PROJECTION"  # a trained head per exit
    SHARED_PROJECTION_CAST_OUTPUTS = "SHARED_PROJECTION_CAST_OUTPUTS"  # hidden->hidden cast, then original head
    SHARED_PROJECTION_DIRECT = "SHARED_PROJECTION_DIRECT"  # the original head directly (logit lens)

    @classmethod
    def parse(cls, value: "VocabularyProjectionMode | str") -> "VocabularyProjectionMode":
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            name = value.strip().split(".")[-1].upper()
            if name in cls.__members__:
                return cls[name]
        allowed = ", ".join(cls.__members__)
        raise ValueError(f"vocab_projection_mode: unknown mode {value!r}; allowed: {allowed} (case-insensitive)")


def _parse_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name}: expected True or False, got {value!r}")


def _parse_layer(name: str, value, allow_original: bool = False) -> int | str:
    if allow_original and isinstance(value, str) and value.strip().lower() == ORIGINAL:
        return ORIGINAL
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a layer index, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    allowed = "a layer index or 'original'" if allow_original else "a layer index"
    raise ValueError(f"{name}: expected {allowed}, got {value!r}")


def _split(value) -> list:
    if isinstance(value, str):
        text = value.strip().strip("'\"").strip("[]()")
        sep = ";" if ";" in text else ","
        return [part.strip().strip("'\"") for part in text.split(sep) if part.strip()]
    return list(value)


@dataclass
class MultiExitConfiguration:
    """Runtime and layout settings of a multi-exit model (names as in the original ACD library).

    Every field also accepts the string form used on command lines (lm-eval model_args):
    ``contrast_layer_indices='original;12'`` or ``'24;12'``, ``lm_head_layer_indices='24;18;12'``,
    ``vocab_projection_mode='shared_projection_direct'``, ``use_original_head='False'``.
    """

    # None: the mode stored in the checkpoint, else LAYER_SPECIFIC_PROJECTION
    vocab_projection_mode: VocabularyProjectionMode | str | None = None
    lm_head_layer_indices: Sequence[int] | str | None = None
    freeze_parameters: bool | str = True
    use_original_head: bool | str = True
    output_layer_index: int | str | None = None
    contrast_layer_indices: tuple[int | str, int] | str | None = None
    contrast_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    contrast_alpha: float | str = ALPHA
    contrast_minimum_candidates: int | str = MINIMUM_CANDIDATES

    def __post_init__(self) -> None:
        if isinstance(self.vocab_projection_mode, str) and self.vocab_projection_mode.strip().lower() in ("", "none"):
            self.vocab_projection_mode = None
        if self.vocab_projection_mode is not None:
            self.vocab_projection_mode = VocabularyProjectionMode.parse(self.vocab_projection_mode)
        self.freeze_parameters = _parse_bool("freeze_parameters", self.freeze_parameters)
        self.use_original_head = _parse_bool("use_original_head", self.use_original_head)
        if self.lm_head_layer_indices is not None:
            layers = [_parse_layer("lm_head_layer_indices", v) for v in _split(self.lm_head_layer_indices)]
            if not layers:
                raise ValueError("lm_head_layer_indices: expected at least one layer index")
            if len(set(layers)) != len(layers):
                raise ValueError(f"lm_head_layer_indices: duplicate layers in {layers}")
            self.lm_head_layer_indices = layers
        if isinstance(self.output_layer_index, str) and self.output_layer_index.strip().lower() in ("", "none"):
            self.output_layer_index = None
        if self.output_layer_index is not None:
            self.output_layer_index = _parse_layer("output_layer_index", self.output_layer_index, allow_original=True)
        if isinstance(self.contrast_layer_indices, str) and self.contrast_layer_indices.strip().lower() in ("", "none"):
            self.contrast_layer_indices = None
        if self.contrast_layer_indices is not None:
            parts = _split(self.contrast_layer_indices)
            if len(parts) != 2:
                raise ValueError(
                    "contrast_layer_indices: expected two entries (upper;lower), e.g. 'original;12' or '24;12', "
                    f"got {self.contrast_layer_indices!r}"
                )
            upper = _parse_layer("contrast_layer_indices", parts[0], allow_original=True)
            lower = _parse_layer("contrast_layer_indices", parts[1])
            if upper == lower:
                raise ValueError(f"contrast_layer_indices: upper and lower layer must differ, got {upper!r} twice")
            self.contrast_layer_indices = (upper, lower)
        try:
            self.contrast_alpha = float(self.contrast_alpha)
        except (TypeError, ValueError):
            raise ValueError(f"contrast_alpha: expected a number in (0, 1], got {self.contrast_alpha!r}") from None
        if isinstance(self.contrast_minimum_candidates, str) and self.contrast_minimum_candidates.strip().isdigit():
            self.contrast_minimum_candidates = int(self.contrast_minimum_candidates)
        try:
            check_contrast_parameters(self.contrast_alpha, self.contrast_minimum_candidates)
        except ValueError as err:
            raise ValueError(f"contrast_{err}") from None
        if self.use_original_head and (self.contrast_layer_indices is not None or self.output_layer_index is not None):
            which = "contrast_layer_indices" if self.contrast_layer_indices is not None else "output_layer_index"
            raise ValueError(
                f"{which}: cannot be combined with use_original_head=True (which switches multi-exit "
                "behaviour off); set use_original_head=False"
            )
        if self.contrast_layer_indices is not None and self.output_layer_index is not None:
            raise ValueError(
                "output_layer_index: cannot be combined with contrast_layer_indices; choose one output"
            )
        if self.contrast_function is not None and not callable(self.contrast_function):
            raise ValueError(f"contrast_function: expected a callable, got {self.contrast_function!r}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "MultiExitConfiguration":
        """Build from (string) keyword arguments, rejecting unknown names with the allowed list."""
        names = cls.field_names()
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ValueError(f"unknown multi-exit setting(s) {unknown}; allowed: {', '.join(names)}")
        return cls(**kwargs)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if not f.name.startswith("_")]

    # ------------------------------------------------------------------ derived views
    @property
    def effective_contrast_function(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.contrast_function is not None:
            return self.contrast_function
        # checked once, here on construction, not at every step (calculate_contrasted_logits would check again)
        return functools.partial(
            contrasted_logprobs,
            alpha=self.contrast_alpha,
            minimum_candidates=self.contrast_minimum_candidates,
        )

    @property
    def output_layers(self) -> list[int | str]:
        """Exits the configured output reads ('original' = the model's own head)."""
        if self.use_original_head:
            return [ORIGINAL]
        if self.contrast_layer_indices is not None:
            return list(self.contrast_layer_indices)
        if self.output_layer_index is not None:
            return [self.output_layer_index]
        return [ORIGINAL]

    def validate_for_model(self, num_layers: int, available_exits: Sequence[int] | None) -> None:
        """Check layer indices against a model with ``num_layers`` blocks and the given exits.

        ``available_exits=None`` means every layer 1..num_layers has an exit (SHARED_PROJECTION_DIRECT).
        """
        where = (
            f"every layer 1..{num_layers}"
            if available_exits is None
            else f"exits at {sorted(available_exits)} (model has {num_layers} layers)"
        )
        checks: list[tuple[str, int | str]] = []
        if self.output_layer_index is not None:
            checks.append(("output_layer_index", self.output_layer_index))
        if self.contrast_layer_indices is not None:
            checks += [("contrast_layer_indices", v) for v in self.contrast_layer_indices]
        for name, layer in checks:
            if layer == ORIGINAL:
                continue
            if not 1 <= layer <= num_layers:
                raise ValueError(f"{name}: layer {layer} is outside 1..{num_layers}; allowed: {where}")
            if available_exits is not None and layer not in available_exits:
                raise ValueError(f"{name}: layer {layer} has no exit head; allowed: {where}")
        if self.lm_head_layer_indices is not None:
            for layer in self.lm_head_layer_indices:
                if not 1 <= layer <= num_layers:
                    raise ValueError(f"lm_head_layer_indices: layer {layer} is outside 1..{num_layers}")
