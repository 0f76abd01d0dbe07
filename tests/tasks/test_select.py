"""Choosing the task: from a recipe's prompt section, and from a saved artifact."""

from __future__ import annotations

import pytest

from sam_medft.config import LossConfig, PromptConfig
from sam_medft.runs import AdapterMeta
from sam_medft.tasks import AutomaticTask, PromptedTask, task_for, task_from_meta


@pytest.mark.parametrize(("mode", "cls"), [("none", AutomaticTask), ("point", PromptedTask),
                                           ("box", PromptedTask), ("hybrid", PromptedTask)])
def test_the_recipes_prompt_mode_picks_the_task(mode, cls):
    loss = LossConfig(dice_weight=0.5)
    task = task_for(PromptConfig(mode=mode), loss)
    assert type(task) is cls and task.mode == mode and task.loss_cfg is loss
    assert task.prompted == (mode != "none")
    assert type(task_for()) is AutomaticTask  # no prompt section: automatic


def test_an_artifact_brings_back_its_own_mode():
    """Evaluation settings keep their own keys; the artifact's mode and multimask win."""
    meta = AdapterMeta(base_model="tiny", num_classes=2, class_names=["background", "a"],
                       method="lora", scope="decoder", normalization="sam", input_size=256,
                       mask_size=64, prompt_mode="box")
    task = task_from_meta(meta, PromptConfig(mode="none", n_points=3), multimask=False)
    assert isinstance(task, PromptedTask) and task.mode == "box"
    assert (task.prompt.n_points, task.prompt.multimask) == (3, False)
    meta.prompt_mode = "none"
    assert isinstance(task_from_meta(meta), AutomaticTask)
