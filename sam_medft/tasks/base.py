"""What every task provides, and the Dice arithmetic the tasks share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from sam_medft.config import LossConfig, PromptConfig


@dataclass
class Outputs:
    """A forward pass: mask logits and predicted IoUs, shaped as the task defines them."""

    logits: torch.Tensor
    iou: torch.Tensor


class Task(ABC):
    """A mode of fine-tuning SAM. Subclasses say what a batch trains and how it is scored."""

    #: the recipe's `prompt.mode` value(s) this task serves
    prompted: bool = False

    def __init__(self, prompt: PromptConfig | None = None, loss: LossConfig | None = None):
        self.prompt = prompt or PromptConfig()
        self.loss_cfg = loss or LossConfig()

    @property
    def mode(self) -> str:
        """The mode's name as recipes and `sam_medft.json` write it."""
        return self.prompt.mode

    @abstractmethod
    def mask_outputs(self, num_classes: int) -> int:
        """How many mask tokens the decoder gets for `num_classes` classes."""

    @abstractmethod
    def forward(self, model: torch.nn.Module, batch: dict, *, frozen_encoder: bool,
                embeddings=None) -> Outputs:
        """One forward pass of a finished batch (`embeddings`: precomputed, or None)."""

    @abstractmethod
    def loss(self, outputs: Outputs, batch: dict) -> torch.Tensor:
        """The training loss; every trainable output stays in the graph (DDP)."""

    @abstractmethod
    def score(self, outputs: Outputs, batch: dict) -> torch.Tensor:
        """Per-image confusion counts, the same shape on every rank (gathered for metrics)."""

    @abstractmethod
    def summarize(self, counts: torch.Tensor) -> dict:
        """Gathered counts -> {"dice", "per_class", "n_images"}."""

    def prompt_settings(self, *, jitter: bool = True):
        """How prompts are simulated from a mask for training (None: no prompts)."""
        return None

    @property
    def caches_embeddings(self) -> bool:
        """Whether frozen-encoder embeddings may be cached per image (no prompt in them)."""
        return False

    @property
    def finishes_on_accelerator(self) -> bool:
        """Whether batches may be normalised/augmented on the accelerator after loading
        (prompt simulation needs the augmented mask on the host, in the loader)."""
        return False

    def plan_notes(self) -> list[str]:
        """What `train --dry-run` should add about this mode."""
        return []

    @abstractmethod
    def check_prediction(self, has_prompts: bool) -> None:
        """Raise a clear error when a prediction asks what this mode cannot do."""


def dice_from_counts(counts: torch.Tensor) -> dict:
    """counts (N, C-1, 3) tp/fp/fn -> mean Dice per class and over classes; an image where
    a class is absent in both reference and prediction is left out of that class's mean."""
    tp, fp, fn = counts.double().unbind(-1)
    denom = 2 * tp + fp + fn
    dice = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    per_class = torch.nanmean(dice, dim=0)
    return {"dice": float(torch.nanmean(per_class)) if per_class.numel() else float("nan"),
            "per_class": [float(x) for x in per_class], "n_images": int(counts.shape[0])}
