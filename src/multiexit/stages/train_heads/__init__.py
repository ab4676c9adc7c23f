"""Training exit heads of a multi-exit model (language modelling, task-specific, or KL-to-final).

One forward pass of the (by default frozen) body feeds every exit; the loss is the sum over
exits of a token-mean objective:

* ``ce``: next-token cross-entropy against the labels (the authors' objective);
* ``kl``: KL(final-layer distribution || exit distribution), tuned-lens style distillation.

Exits are layer numbers (1..L) and optionally ``'original'``: fine-tuning the model's own output
head (untied from the input embeddings first, so the body stays as it was).

The loop runs under :class:`accelerate.Accelerator`, so the same code trains on CPU, one GPU,
or data-parallel on several GPUs under ``accelerate launch`` / ``torchrun``; a killed run resumes
from its last checkpoint.

Modules: :mod:`.settings` (the two settings classes), :mod:`.objective` (exit logits, CE / KL,
held-out evaluation), :mod:`.loop` (model preparation, :func:`train_exits`, checkpoints),
:mod:`.report` (loss history CSV / plot, metrics table), :mod:`.run` (one whole run).
"""

from multiexit.stages.train_heads.loop import (
    EpochOrder,
    ListDataset,
    TrainingResult,
    config_digest,
    init_exit_heads,
    list_checkpoints,
    plan_steps,
    prepare_model_for_training,
    save_trained_model,
    train_exits,
    trainable_parameters,
    untie_output_head,
)
from multiexit.stages.train_heads.objective import (
    ExitObjective,
    body_states,
    evaluate_exits,
    evaluate_readers,
    exit_logits,
    kl_to_final,
    read_exit,
)
from multiexit.stages.train_heads.report import format_metrics_table, history_rows, plot_loss_history, write_history_csv
from multiexit.stages.train_heads.run import build_datasets, eval_readers, heldout_batches, load_tokenizer, run_head_training
from multiexit.stages.train_heads.settings import (
    INITS,
    MIXED_PRECISION,
    OBJECTIVES,
    DataSettings,
    Exit,
    HeadTrainingConfig,
    HeadTrainingSettings,
    parse_exits,
    train_settings,
)

__all__ = [
    "DataSettings", "EpochOrder", "Exit", "ExitObjective", "HeadTrainingConfig", "HeadTrainingSettings", "INITS",
    "ListDataset", "MIXED_PRECISION", "OBJECTIVES", "TrainingResult", "body_states",
    "build_datasets", "config_digest", "eval_readers", "evaluate_exits", "evaluate_readers", "exit_logits",
    "format_metrics_table", "heldout_batches", "history_rows", "init_exit_heads", "kl_to_final", "list_checkpoints",
    "load_tokenizer", "parse_exits", "plan_steps", "plot_loss_history", "prepare_model_for_training",
    "read_exit", "run_head_training", "save_trained_model", "train_exits", "train_settings", "trainable_parameters",
    "untie_output_head", "write_history_csv",
]
