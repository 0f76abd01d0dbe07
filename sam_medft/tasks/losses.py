"""Segmentation losses on the low-res grid, padding excluded.

Softmax cross-entropy + soft Dice over the same softmax (the study paired a sigmoid Dice
with a softmax CE and counted background in both). Each term is a per-image mean first,
then a mean over images: the loss of a batch split over N processes then averages to the
loss of the whole batch, so DDP and one process take the same step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sam_medft.config import LossConfig
from sam_medft.data.transforms import IGNORE_INDEX


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: LossConfig,
                      valid_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """logits (B,C,M,M) float, labels (B,M,M) int64 with IGNORE_INDEX -> loss terms.
    `valid_classes` (B,C) bool: the classes each image's data set labels (a Setup 2
    mixture); the others are left out of the softmax and the Dice, so they get no gradient
    (a liver data set does not teach "no kidney here")."""
    logits = logits.float()
    if valid_classes is not None:
        logits = logits.masked_fill(~valid_classes[:, :, None, None], -1e4)
    num_classes = logits.shape[1]
    valid = labels != IGNORE_INDEX
    target = labels.clamp(min=0)
    weight = (torch.tensor(cfg.class_weights, device=logits.device, dtype=logits.dtype)
              if cfg.class_weights else None)
    ce_map = F.cross_entropy(logits, target, weight=weight, reduction="none")  # (B,M,M)
    if weight is not None:
        denom = (weight[target] * valid).flatten(1).sum(1).clamp(min=1e-6)
    else:
        denom = valid.flatten(1).sum(1).clamp(min=1)
    ce = ((ce_map * valid).flatten(1).sum(1) / denom).mean()

    probs = logits.softmax(dim=1) * valid[:, None]
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid[:, None]
    first = 0 if cfg.include_background else 1
    p, t = probs[:, first:].flatten(2), onehot[:, first:].flatten(2)
    inter = (p * t).sum(-1)
    dice = 1 - (2 * inter + 1.0) / (p.sum(-1) + t.sum(-1) + 1.0)  # (B, C') smooth 1
    if valid_classes is not None:
        keep = valid_classes[:, first:].to(dice.dtype)
        dice = (dice * keep).sum() / keep.sum().clamp(min=1)
    else:
        dice = dice.mean()
    total = cfg.ce_weight * ce + cfg.dice_weight * dice
    return {"loss": total, "ce": ce.detach(), "dice_loss": dice.detach()}


def iou_head_loss(iou_pred: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                  valid_classes: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the IoU head's per-class prediction and the real IoU of the argmax mask.

    SAM trains its IoU head this way; it also keeps the head in the graph, which DDP needs.
    iou_pred (B,C), logits (B,C,M,M), labels (B,M,M); `valid_classes` (B,C): only these.
    """
    if valid_classes is not None:
        logits = logits.masked_fill(~valid_classes[:, :, None, None], float("-inf"))
        keep = valid_classes.to(iou_pred.dtype)
        err = (iou_pred.float() - iou_head_target(logits, labels)) ** 2
        return (err * keep).sum() / keep.sum().clamp(min=1) + 0.0 * iou_pred.sum()
    return F.mse_loss(iou_pred.float(), iou_head_target(logits, labels))


def iou_head_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,C) the real IoU of each class's argmax mask (1 where both are empty)."""
    with torch.no_grad():
        valid = labels != IGNORE_INDEX
        pred = logits.argmax(1)
        ious = []
        for c in range(logits.shape[1]):
            p, t = (pred == c) & valid, (labels == c) & valid
            inter = (p & t).flatten(1).sum(1).float()
            union = (p | t).flatten(1).sum(1).float()
            ious.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
        return torch.stack(ious, dim=1)
