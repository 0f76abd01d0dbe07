"""Choosing the task: the one place where the recipe's `prompt.mode` string is read."""

from __future__ import annotations

from sam_medft.config import LossConfig, PromptConfig
from sam_medft.tasks.automatic import AutomaticTask
from sam_medft.tasks.base import Task
from sam_medft.tasks.prompted import PromptedTask

AUTOMATIC_MODE = "none"


def task_for(prompt: PromptConfig | None = None, loss: LossConfig | None = None) -> Task:
    """The task a recipe's `prompt` (and `loss`) section describes."""
    prompt = prompt or PromptConfig()
    cls = AutomaticTask if prompt.mode == AUTOMATIC_MODE else PromptedTask
    return cls(prompt, loss)


def task_from_meta(meta, prompt: PromptConfig | None = None, *, multimask: bool | None = None
                   ) -> Task:
    """The task a saved artifact (`AdapterMeta`) was trained in. `prompt`: the evaluation's
    prompt settings (its `mode` is replaced by the artifact's), `multimask` likewise."""
    update: dict = {"mode": meta.prompt_mode}
    if multimask is not None:
        update["multimask"] = multimask
    return task_for((prompt or PromptConfig()).model_copy(update=update))
