"""Settings of head training: :class:`HeadTrainingSettings` (what and how to train) and :class:`DataSettings`.

A model's ``train:`` block in the pipeline config holds the fields of both classes side by side
(``data: lee_background``, ``learning_rate: 1.0e-3``, ...); :func:`train_settings` splits it and
validates each half, naming the offending key. The model's ``exits`` come from the model entry.

Sources of the defaults, where they are not "our choice": the ACD authors' code (IBM
``autocontrastive-gen`` at d0a7925), ``autocontrastive_gen/head_training/head_training_utils.py``
(``train``: HF ``Trainer``, 3 epochs, batch 16), ``head_training/gpt2_training.py``
(``run_gpt2_pretraining``: ``adamw_hf``, lr 2e-4, linear schedule), ``run_training.py``
(``--max_seq_length`` 512) and ``modeling/gpt2_multi_head.py`` (frozen base, ``nn.Linear(..., bias=False)``
heads). Their ``Trainer`` leaves the rest at transformers 4.26's ``TrainingArguments`` defaults
(the version their requirements.txt pins). docs/training.md lists each value with its file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from multiexit.inputs.corpora import (
    DEFAULT_CORPUS,
    PROMPT_FIELD,
    SEPARATOR,
    SEPARATORS,
    SHUFFLE_BUFFER,
    TARGET_FIELD,
    validate_corpus_spec,
)
from multiexit.model.config import ORIGINAL
from multiexit.settings import ConfigError, Settings, _check_value, setting

OBJECTIVES = ("ce", "kl")
INITS = ("random", "warm", "cast", "keep")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")
# transformers schedulers that need nothing beyond warm-up and total steps (our choice of the list)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")
Exit = int | str


def parse_exits(exits) -> list[Exit]:
    """'6,12,original' / [6, 12, 'original'] -> [6, 12, 'original'] (validated, no duplicates)."""
    if isinstance(exits, str):
        exits = [p for p in exits.replace(";", ",").split(",") if p.strip()]
    parsed: list[Exit] = []
    for value in exits:
        if isinstance(value, str) and value.strip().lower() == ORIGINAL:
            parsed.append(ORIGINAL)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            parsed.append(value)
        elif isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
            parsed.append(int(value.strip()))
        else:
            raise ValueError(f"exits: expected layer numbers (>= 1) or 'original', got {value!r}")
    if not parsed:
        raise ValueError("exits: expected at least one exit")
    if len(set(map(str, parsed))) != len(parsed):
        raise ValueError(f"exits: duplicates in {parsed}")
    return sorted((e for e in parsed if e != ORIGINAL)) + ([ORIGINAL] if ORIGINAL in parsed else [])


def _check_fields(settings: Settings) -> None:
    """The per-field checks of :meth:`Settings.from_dict`, for settings built directly (``name: message``)."""
    for f, _, meta in type(settings)._fields():
        try:
            _check_value(getattr(settings, f.name), meta)
        except ValueError as err:
            raise ValueError(f"{f.name}: {err}") from None


def _exits_check(value) -> None:
    parse_exits(list(value))


def _fraction_below_one(value: float) -> None:
    if not value < 1:
        raise ValueError(f"must be < 1, got {value!r}")


@dataclass(frozen=True)
class HeadTrainingSettings(Settings):
    """What to train and how: exits, objective, initialisation, optimiser, budget, checkpoints, device."""

    exits: tuple[int | str, ...] = setting(
        help="exit layers (1..L) to train, comma-separated; add 'original' to fine-tune the model's own head",
        check=_exits_check)
    objective: str = setting(
        "ce", "ce: next-token cross-entropy (the authors' loss, summed over exits); kl: KL(final layer || exit), "
        "tuned-lens style distillation (our addition)", choices=OBJECTIVES)
    init: str = setting(
        "random", "new heads: random = normal(0, initializer_range) (as the authors' fresh nn.Linear heads under "
        "HF init); warm = a copy of the original head (the logit lens); cast = the original head folded with a "
        "least-squares cast map to the top layer, W_head A_l (our addition: the exit starts as the cast reading); "
        "keep = the source checkpoint's heads", choices=INITS)
    cast_positions: int = setting(
        25_000, "init=cast: token positions of the training text for the least-squares fit (at most those it holds)",
        minimum=1)
    freeze_base: bool = setting(
        True, "train only the exit heads; the body stays frozen (authors: MultiExitConfiguration freeze_parameters)")
    head_bias: bool = setting(
        False, "exit heads with a bias vector; only false exists (authors: nn.Linear(hidden, vocab, bias=False))",
        choices=(False,))
    learning_rate: float = setting(2e-4, "AdamW peak learning rate (authors: 2e-4)", minimum=0, exclusive_minimum=True)
    weight_decay: float = setting(0.0, "AdamW weight decay on matrices (authors: 0, the TrainingArguments default)",
                                  minimum=0)
    adam_beta1: float = setting(0.9, "AdamW beta1 (authors: 0.9, the TrainingArguments default)", minimum=0, maximum=1)
    adam_beta2: float = setting(0.999, "AdamW beta2 (authors: 0.999, the TrainingArguments default)", minimum=0, maximum=1)
    adam_epsilon: float = setting(1e-8, "AdamW epsilon (authors: 1e-8, the TrainingArguments default)", minimum=0,
                                  exclusive_minimum=True)
    lr_scheduler: str = setting("linear", "learning-rate schedule (authors: linear)", choices=SCHEDULERS)
    warmup_steps: int = setting(0, "learning-rate warm-up steps (authors: 0, the TrainingArguments default)", minimum=0)
    epochs: int | None = setting(
        None, "passes over the training data (authors: 3); give at most one of epochs, max_steps, max_tokens "
        "(none given: one pass)", minimum=1)
    max_steps: int | None = setting(
        None, "optimizer steps (instead of epochs); 0: no training, the heads stay as initialised (e.g. init=cast)",
        minimum=0)
    max_tokens: int | None = setting(None, "budget of counted label tokens (instead of epochs)", minimum=1)
    batch_size: int = setting(16, "sequences per micro-batch per process (authors: 16)", minimum=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", minimum=1)
    max_grad_norm: float | None = setting(
        None, "clip the gradient norm to this (authors: 1.0, the TrainingArguments default; null: no clipping)",
        minimum=0, exclusive_minimum=True)
    mixed_precision: str = setting("no", "autocast precision (fp16 needs a GPU)", choices=MIXED_PRECISION)
    dtype: str = setting("float32", "dtype the model is loaded in (use mixed_precision for autocast)", choices=DTYPES)
    cpu: bool = setting(False, "train on the CPU even if a GPU is visible")
    seed: int = setting(0, "seed of data order, head init and RNG", minimum=0)
    checkpoint_every: int = setting(0, "optimizer steps between resumable checkpoints (0: none)", minimum=0)
    keep_checkpoints: int = setting(2, "resumable checkpoints kept on disk", minimum=1)
    keep_checkpoint_dir: bool = setting(False, "keep the checkpoint folder after success (default: deleted)")
    throttle_seconds: float = setting(0.0, "testing aid: sleep this long after each step", minimum=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exits", tuple(parse_exits(self.exits)))
        _check_fields(self)
        if self.objective == "kl" and ORIGINAL in self.exits:
            raise ValueError("exits: 'original' cannot be trained with objective='kl' (it is the distillation target)")
        budgets = [name for name in ("epochs", "max_steps", "max_tokens") if getattr(self, name) is not None]
        if len(budgets) > 1:
            raise ValueError(f"{budgets[1]}: give one of epochs, max_steps and max_tokens, not {' and '.join(budgets)}")

    @property
    def layers(self) -> list[int]:
        return sorted(e for e in self.exits if e != ORIGINAL)

    def fingerprint(self, extra: dict | None = None) -> dict:
        """Everything a resumed run must share with the run that wrote the checkpoint."""
        skip = ("checkpoint_every", "keep_checkpoints", "keep_checkpoint_dir", "throttle_seconds")
        keep = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        keep["exits"] = [str(e) for e in self.exits]
        return {**keep, **(extra or {})}


@dataclass(frozen=True)
class DataSettings(Settings):
    """Where the training text comes from and how it is cut (see :mod:`multiexit.inputs.corpora`)."""

    data: str = setting(
        DEFAULT_CORPUS, "LM corpus: cc100[:lang], wikitext-103, wikitext-2, hub:<name>[:config][@split][#field], "
        "lee_background, or a local file/folder (join several with '+'); ignored with task_data")
    tokenizer: str | None = setting(
        None, "tokenizer source if the model folder has none ('gpt2' = the offline GPT-2 tokenizer)")
    seq_len: int = setting(
        512, "tokens per training chunk / longest task example (authors: --max_seq_length 512)", minimum=2)
    separator: str = setting(
        SEPARATOR, "between concatenated documents: eos = the tokenizer's end-of-text token (our choice); none = "
        "nothing (authors: group_texts joins the token lists as they are)", choices=SEPARATORS)
    train_tokens: int | None = setting(
        None, "training tokens to read from the corpus (null: the whole local corpus, or max_tokens)", minimum=1)
    eval_tokens: int = setting(16_384, "held-out tokens for the before/after evaluation (LM mode)", minimum=1)
    shuffle_buffer: int = setting(SHUFFLE_BUFFER, "shuffle buffer for streamed corpora (0: stream order)", minimum=0)
    task_data: str | None = setting(
        None, "JSONL of prompt -> target examples: task-specific training, prompt tokens left out of the loss")
    prompt_field: str = setting(PROMPT_FIELD, "prompt field name in task_data")
    target_field: str = setting(TARGET_FIELD, "target field name in task_data")
    task_eval_fraction: float = setting(
        0.1, "fraction of task examples held out for evaluation", minimum=0, check=_fraction_below_one)
    eval_batch_size: int = setting(8, "sequences per evaluation batch", minimum=1)

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.task_data is None:  # the corpus is read only without task_data: checked then, at plan time too
            try:
                validate_corpus_spec(self.data)
            except ValueError as err:
                raise ValueError(f"data: {err}") from None


def train_settings(block: dict | None, exits, key: str = "train") -> tuple[HeadTrainingSettings, DataSettings]:
    """A model's ``train:`` block (fields of both classes) and its ``exits`` -> validated settings.

    Raises :class:`ConfigError` naming the key (``models.m.train.learning_rate``).
    """
    block = {} if block is None else block
    if not isinstance(block, dict):
        raise ConfigError(key, f"expected a mapping, got {block!r}")
    data_names = set(DataSettings.field_names())
    training_names = set(HeadTrainingSettings.field_names()) - {"exits"}
    for name in block:
        if name == "exits":
            raise ConfigError(f"{key}.exits", "set the exits on the model entry, not in its train block")
        if name not in data_names | training_names:
            raise ConfigError(f"{key}.{name}", "unknown setting; valid settings: "
                              + ", ".join(sorted(data_names | training_names)))
    data = DataSettings.from_dict({k: v for k, v in block.items() if k in data_names}, key)
    training = HeadTrainingSettings.from_dict(
        {**{k: v for k, v in block.items() if k in training_names}, "exits": list(exits)}, key)
    return training, data



__all__ = [
    "DTYPES", "DataSettings", "Exit", "HeadTrainingSettings", "INITS", "MIXED_PRECISION",
    "OBJECTIVES", "SCHEDULERS", "SEPARATORS", "parse_exits", "train_settings",
]
