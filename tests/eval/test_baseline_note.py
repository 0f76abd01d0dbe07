"""The `--baseline` note says when the base model is random (every built-in test model and
`model.random_init` bases), so a chance-level zero-shot score is not read as SAM's."""

from __future__ import annotations

import pytest

from sam_medft.eval.evaluate import baseline_note
from sam_medft.model_names import REGISTRY
from sam_medft.models.registry import RANDOM_PREFIX, is_random_model
from sam_medft.runs import AdapterMeta


def _meta(base: str, prompt_mode: str = "none") -> AdapterMeta:
    return AdapterMeta(base_model=base, num_classes=3, class_names=["bg", "a", "b"],
                       method="lora", scope="decoder", normalization="sam", input_size=256,
                       mask_size=64, prompt_mode=prompt_mode)


@pytest.mark.parametrize("base", ["tiny", "tiny-mobilesam", RANDOM_PREFIX + "sam-vit-base"])
@pytest.mark.parametrize("prompt_mode", ["none", "box"])
def test_random_bases_get_the_chance_level_note(base, prompt_mode):
    note = baseline_note(_meta(base, prompt_mode))
    assert f"({base} is a random test model, no pretrained weights: its baseline is chance " \
           "level.)" in note


@pytest.mark.parametrize("base", ["sam-vit-base", "mobilesam", "facebook/sam-vit-base",
                                  "runs/my_converted_model"])
def test_pretrained_bases_get_no_chance_level_note(base):
    assert "chance level" not in baseline_note(_meta(base))
    assert not is_random_model(base)


def test_every_registry_test_model_counts_as_random():
    """No name list to keep in step: a registry entry without weights anywhere is random."""
    tests = {name for name in REGISTRY if is_random_model(name)}
    assert tests == {"tiny", "tiny-mobilesam"}
