"""multiexit.settings: one dataclass per stage validates names, types and values, naming the key."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from multiexit.settings import ConfigError, Settings, setting


def _even(value):
    if value % 2:
        raise ValueError(f"must be even, got {value}")


@dataclass(frozen=True)
class Example(Settings):
    batch_size: int = setting(16, "rows per batch", minimum=1)
    learning_rate: float = setting(2e-4, "step size", minimum=0, exclusive_minimum=True)
    mode: str = setting("a", "which", choices=("a", "b"))
    layers: tuple[int, ...] = setting((1, 2), "layers", minimum=0)
    limit: int | None = setting(None, "optional cap", minimum=1)
    flag: bool = setting(False, "a switch")
    pairs: int = setting(2, "even count", check=_even)

    def __post_init__(self):
        if self.mode == "b" and self.limit is None:
            raise ValueError("limit: mode 'b' needs a limit")


def test_defaults_and_round_trip():
    s = Example.from_dict({})
    assert s.batch_size == 16 and s.layers == (1, 2) and s.limit is None
    assert Example.from_dict(s.as_dict()) == s
    assert Example.from_json(s.to_json()) == s
    assert s.as_dict()["layers"] == [1, 2]


@pytest.mark.parametrize(
    "data, key, text",
    [
        ({"batch_sise": 2}, "train.batch_sise", "unknown setting"),
        ({"batch_size": 0}, "train.batch_size", ">= 1"),
        ({"batch_size": "8"}, "train.batch_size", "an integer"),
        ({"batch_size": True}, "train.batch_size", "an integer"),
        ({"learning_rate": 0}, "train.learning_rate", "> 0"),
        ({"mode": "c"}, "train.mode", "one of"),
        ({"layers": [1, -1]}, "train.layers", ">= 0"),
        ({"layers": "1,2"}, "train.layers", "a list of"),
        ({"pairs": 3}, "train.pairs", "even"),
        ({"mode": "b"}, "train.limit", "needs a limit"),
    ],
)
def test_errors_name_the_key(data, key, text):
    with pytest.raises(ConfigError) as info:
        Example.from_dict(data, "train")
    assert info.value.key == key
    assert text in str(info.value)


def test_ints_are_accepted_for_floats():
    assert Example.from_dict({"learning_rate": 1}).learning_rate == 1.0


def test_argparse_from_the_dataclass():
    parser = argparse.ArgumentParser()
    Example.add_arguments(parser)
    args = parser.parse_args(["--batch-size", "4", "--layers", "3,5", "--flag", "--limit", "7"])
    s = Example.from_args(args)
    assert (s.batch_size, s.layers, s.flag, s.limit, s.learning_rate) == (4, (3, 5), True, 7, 2e-4)
    with pytest.raises(ConfigError, match="batch_size"):
        Example.from_args(parser.parse_args(["--batch-size", "zero"]))


def _field_default(cls, name):
    import dataclasses

    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _one_default_cases():
    from multiexit.inputs import corpora
    from multiexit.model import contrast
    from multiexit.model.config import MultiExitConfiguration
    from multiexit.stages import fit_cast, score
    from multiexit.stages.train_heads.objective import ExitObjective
    from multiexit.stages.train_heads.settings import DataSettings, HeadTrainingSettings

    return [
        (contrast.calculate_contrasted_logits, "alpha", MultiExitConfiguration, "contrast_alpha"),
        (contrast.calculate_contrasted_logits, "minimum_candidates", MultiExitConfiguration, "contrast_minimum_candidates"),
        (score.mauve_metrics, "max_tokens", score.ScoreSettings, "mauve_max_tokens"),
        (score.mauve_token_pairs, "max_tokens", score.ScoreSettings, "mauve_max_tokens"),
        (score.mauve_metrics, "scaling_factor", score.ScoreSettings, "mauve_scaling_factor"),
        (score.mauve_from_features, "scaling_factor", score.ScoreSettings, "mauve_scaling_factor"),
        (score.mauve_metrics, "seed", score.ScoreSettings, "mauve_seed"),
        (score.mauve_from_features, "seed", score.ScoreSettings, "mauve_seed"),
        (score.mauve_metrics, "num_buckets", score.ScoreSettings, "mauve_num_buckets"),
        (score.mauve_metrics, "batch_size", score.ScoreSettings, "batch_size"),
        (score.featurize, "batch_size", score.ScoreSettings, "batch_size"),
        (score.coherence_metrics, "batch_size", score.ScoreSettings, "batch_size"),
        (score.coherence_per_text, "batch_size", score.ScoreSettings, "batch_size"),
        (score.SentenceEncoder.encode, "batch_size", score.ScoreSettings, "batch_size"),
        (score.bootstrap_interval, "resamples", score.ScoreSettings, "bootstrap_resamples"),
        (score.bootstrap_interval, "seed", score.ScoreSettings, "bootstrap_seed"),
        *[(fit_cast.fit_cast_matrices, name, fit_cast.FitCastSettings, name)
          for name in ("num_positions", "heldout_positions", "seed", "batch_size", "ridge", "skip_first")],
        (fit_cast.sample_positions, "skip_first", fit_cast.FitCastSettings, "skip_first"),
        (corpora.load_token_chunks, "shuffle_buffer", DataSettings, "shuffle_buffer"),
        (corpora.load_token_chunks, "separator", DataSettings, "separator"),
        (corpora.iter_documents, "shuffle_buffer", DataSettings, "shuffle_buffer"),
        (corpora.read_task_examples, "prompt_field", DataSettings, "prompt_field"),
        (corpora.read_task_examples, "target_field", DataSettings, "target_field"),
        (ExitObjective.__init__, "objective", HeadTrainingSettings, "objective"),
    ]


def test_a_function_taking_a_stage_setting_defaults_to_the_stage_default():
    """One default per setting: where a library function takes a stage's setting, its default is that stage's."""
    import inspect

    for function, parameter, cls, name in _one_default_cases():
        assert inspect.signature(function).parameters[parameter].default == _field_default(cls, name), \
            (function.__qualname__, parameter)
