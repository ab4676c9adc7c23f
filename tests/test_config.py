"""MultiExitConfiguration: string forms and every invalid setting named in its error."""

import pytest

from multiexit import MultiExitConfiguration, VocabularyProjectionMode
from multiexit.model.config import ORIGINAL


def test_string_forms():
    cfg = MultiExitConfiguration(
        vocab_projection_mode="shared_projection_direct",
        lm_head_layer_indices="24;18;12",
        use_original_head="False",
        freeze_parameters="True",
        contrast_layer_indices="original;12",
        contrast_alpha="0.2",
        contrast_minimum_candidates="3",
    )
    assert cfg.vocab_projection_mode is VocabularyProjectionMode.SHARED_PROJECTION_DIRECT
    assert cfg.lm_head_layer_indices == [24, 18, 12]
    assert cfg.use_original_head is False and cfg.freeze_parameters is True
    assert cfg.contrast_layer_indices == (ORIGINAL, 12)
    assert cfg.contrast_alpha == 0.2 and cfg.contrast_minimum_candidates == 3
    assert MultiExitConfiguration(use_original_head=False, contrast_layer_indices="24;12").contrast_layer_indices == (24, 12)
    assert MultiExitConfiguration(use_original_head="false", output_layer_index="12").output_layer_index == 12
    assert VocabularyProjectionMode.parse("VocabularyProjectionMode.LAYER_SPECIFIC_PROJECTION").name == "LAYER_SPECIFIC_PROJECTION"


def test_output_layers():
    assert MultiExitConfiguration().output_layers == [ORIGINAL]
    assert MultiExitConfiguration(use_original_head=False, output_layer_index=3).output_layers == [3]
    assert MultiExitConfiguration(use_original_head=False, contrast_layer_indices="4;2").output_layers == [4, 2]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"vocab_projection_mode": "nope"}, "vocab_projection_mode"),
        ({"use_original_head": "maybe"}, "use_original_head"),
        ({"freeze_parameters": 3}, "freeze_parameters"),
        ({"contrast_layer_indices": "original;12"}, "contrast_layer_indices"),  # with use_original_head=True
        ({"output_layer_index": 3}, "output_layer_index"),  # with use_original_head=True
        ({"use_original_head": False, "contrast_layer_indices": "12;12"}, "contrast_layer_indices"),
        ({"use_original_head": False, "contrast_layer_indices": "12"}, "contrast_layer_indices"),
        ({"use_original_head": False, "contrast_layer_indices": "12;original"}, "contrast_layer_indices"),
        ({"contrast_alpha": 0}, "contrast_alpha"),
        ({"contrast_alpha": 1.5}, "contrast_alpha"),
        ({"contrast_alpha": "x"}, "contrast_alpha"),
        ({"contrast_minimum_candidates": 0}, "contrast_minimum_candidates"),
        ({"lm_head_layer_indices": "2;2"}, "lm_head_layer_indices"),
        ({"lm_head_layer_indices": "a;b"}, "lm_head_layer_indices"),
        ({"use_original_head": False, "output_layer_index": 2, "contrast_layer_indices": "4;2"}, "output_layer_index"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MultiExitConfiguration(**kwargs)


def test_unknown_setting_lists_allowed():
    with pytest.raises(ValueError, match="allowed: .*contrast_layer_indices"):
        MultiExitConfiguration.from_kwargs(contrast_layers="4;2")


def test_validate_for_model():
    cfg = MultiExitConfiguration(use_original_head=False, contrast_layer_indices="original;12")
    cfg.validate_for_model(24, [12, 24])
    with pytest.raises(ValueError, match="contrast_layer_indices: layer 12 has no exit head"):
        cfg.validate_for_model(24, [6, 24])
    with pytest.raises(ValueError, match="outside 1..8"):
        cfg.validate_for_model(8, None)
    with pytest.raises(ValueError, match="output_layer_index"):
        MultiExitConfiguration(use_original_head=False, output_layer_index=0).validate_for_model(8, None)
