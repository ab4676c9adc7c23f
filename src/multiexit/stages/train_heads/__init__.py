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

from multiexit._lazy import lazy_exports

_EXPORTS = {
    "EpochOrder": "multiexit.stages.train_heads.loop",
    "ListDataset": "multiexit.stages.train_heads.loop",
    "TrainingResult": "multiexit.stages.train_heads.loop",
    "config_digest": "multiexit.stages.train_heads.loop",
    "init_exit_heads": "multiexit.stages.train_heads.loop",
    "list_checkpoints": "multiexit.stages.train_heads.loop",
    "plan_steps": "multiexit.stages.train_heads.loop",
    "prepare_model_for_training": "multiexit.stages.train_heads.loop",
    "save_trained_model": "multiexit.stages.train_heads.loop",
    "train_exits": "multiexit.stages.train_heads.loop",
    "trainable_parameters": "multiexit.stages.train_heads.loop",
    "untie_output_head": "multiexit.stages.train_heads.loop",
    "ExitObjective": "multiexit.stages.train_heads.objective",
    "body_states": "multiexit.stages.train_heads.objective",
    "evaluate_exits": "multiexit.stages.train_heads.objective",
    "evaluate_readers": "multiexit.stages.train_heads.objective",
    "exit_logits": "multiexit.stages.train_heads.objective",
    "kl_to_final": "multiexit.stages.train_heads.objective",
    "read_exit": "multiexit.stages.train_heads.objective",
    "draw_loss_history": "multiexit.stages.train_heads.report",
    "format_metrics_table": "multiexit.stages.train_heads.report",
    "history_rows": "multiexit.stages.train_heads.report",
    "plot_loss_history": "multiexit.stages.train_heads.report",
    "write_history_csv": "multiexit.stages.train_heads.report",
    "build_datasets": "multiexit.stages.train_heads.run",
    "eval_readers": "multiexit.stages.train_heads.run",
    "heldout_batches": "multiexit.stages.train_heads.run",
    "load_tokenizer": "multiexit.stages.train_heads.run",
    "run_head_training": "multiexit.stages.train_heads.run",
    "INITS": "multiexit.stages.train_heads.settings",
    "MIXED_PRECISION": "multiexit.stages.train_heads.settings",
    "OBJECTIVES": "multiexit.stages.train_heads.settings",
    "DataSettings": "multiexit.stages.train_heads.settings",
    "Exit": "multiexit.stages.train_heads.settings",
    "HeadTrainingSettings": "multiexit.stages.train_heads.settings",
    "parse_exits": "multiexit.stages.train_heads.settings",
    "train_settings": "multiexit.stages.train_heads.settings",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
