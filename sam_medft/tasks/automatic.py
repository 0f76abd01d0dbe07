"""Automatic (prompt-free, multi-class) mode: one mask token per class, softmax over classes.

The prompt encoder contributes only its no-mask embedding and the decoder's `num_classes`
mask tokens give one logit map per class (class 0 = background). The loss is soft Dice +
cross-entropy on the low-res grid, plus the optional IoU-head loss.
"""

from __future__ import annotations

import torch

from sam_medft.data.transforms import IGNORE_INDEX
from sam_medft.errors import SamMedftError
from sam_medft.models.forward import automatic_forward
from sam_medft.tasks.base import Outputs, Task, dice_from_counts
from sam_medft.tasks.losses import iou_head_loss, segmentation_loss


class AutomaticTask(Task):
    prompted = False

    def mask_outputs(self, num_classes: int) -> int:
        return num_classes

    def forward(self, model, batch, *, frozen_encoder, embeddings=None) -> Outputs:
        logits, iou = automatic_forward(model, batch["pixel_values"], embeddings=embeddings,
                                        frozen_encoder=frozen_encoder)
        return Outputs(logits, iou)

    def loss(self, outputs: Outputs, batch: dict) -> torch.Tensor:
        cfg = self.loss_cfg
        logits, iou = outputs.logits, outputs.iou
        valid = batch.get("valid_classes")  # a Setup 2 mixture: the classes each image labels
        loss = segmentation_loss(logits, batch["labels"], cfg, valid)["loss"]
        if cfg.iou_weight:
            return loss + cfg.iou_weight * iou_head_loss(iou, logits.detach(), batch["labels"],
                                                         valid)
        return loss + 0.0 * iou.sum()  # keeps the (trainable) IoU head in the graph for DDP

    def score(self, outputs: Outputs, batch: dict) -> torch.Tensor:
        """Confusion counts; a class the image's data set does not label counts nothing
        (all zero: its Dice there is undefined and left out of the means)."""
        valid = batch.get("valid_classes")
        counts = confusion_counts(outputs.logits, batch["labels"])
        if valid is not None:
            counts = counts * valid[:, 1:, None].to(counts.dtype)
        return counts

    def summarize(self, counts: torch.Tensor) -> dict:
        return dice_from_counts(counts)

    @property
    def caches_embeddings(self) -> bool:
        return True

    @property
    def finishes_on_accelerator(self) -> bool:
        return True

    def check_prediction(self, has_prompts: bool) -> None:
        if has_prompts:
            raise SamMedftError(
                "this model was fine-tuned in automatic mode (prompt.mode=none): its decoder has "
                "one mask token per class, not prompt tokens, so boxes/points cannot steer it. "
                "Predict without prompts, or fine-tune a prompt run (e.g. `sam-medft train "
                "RECIPE prompt.mode=box`).")


def confusion_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, C-1, 3) tp/fp/fn per foreground class on valid (non-padding) pixels."""
    valid = labels != IGNORE_INDEX
    pred = logits.argmax(1)
    rows = []
    for c in range(1, logits.shape[1]):
        p, t = (pred == c) & valid, (labels == c) & valid
        rows.append(torch.stack([(p & t).flatten(1).sum(1), (p & ~t).flatten(1).sum(1),
                                 (~p & t).flatten(1).sum(1)], dim=1))
    return torch.stack(rows, dim=1)
