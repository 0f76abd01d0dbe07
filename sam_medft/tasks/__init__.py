"""One class per training/prediction mode: the only place that knows what the mode means.

A task owns the forward pass, the loss, the validation score, and the rules that differ
between modes (mask-output count, embedding caching, where batches are finished). It is
chosen once, from the recipe (`task_for`) or from a saved artifact (`task_from_meta`);
nothing else in the package tests the mode string. A new mode is one new class here.
"""

from sam_medft.tasks.automatic import AutomaticTask
from sam_medft.tasks.base import Outputs, Task, dice_from_counts
from sam_medft.tasks.prompted import PromptedTask
from sam_medft.tasks.select import task_for, task_from_meta

__all__ = ["AutomaticTask", "Outputs", "PromptedTask", "Task", "dice_from_counts", "task_for",
           "task_from_meta"]
