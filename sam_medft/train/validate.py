"""Validation during training: per-image, per-class Dice on the low-res grid.

This is the fast metric that picks the best adapter; the published numbers come from
`sam-medft eval` at each image's original resolution. Images where a class is absent in
both ground truth and prediction are left out of that class's mean (not scored as 1).
"""

from __future__ import annotations

import torch

from sam_medft.data.transforms import IGNORE_INDEX
from sam_medft.models.forward import automatic_forward


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


def dice_from_counts(counts: torch.Tensor) -> dict:
    """counts (N, C-1, 3) -> mean Dice per class and over classes (both-empty excluded)."""
    tp, fp, fn = counts.double().unbind(-1)
    denom = 2 * tp + fp + fn
    dice = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    per_class = torch.nanmean(dice, dim=0)
    return {"dice": float(torch.nanmean(per_class)) if per_class.numel() else float("nan"),
            "per_class": [float(x) for x in per_class], "n_images": int(counts.shape[0])}


@torch.no_grad()
def validate(model, loader, accelerator, *, frozen_encoder: bool, prompt=None, cache=None,
             finish=None) -> dict:
    """Automatic mode: per-image per-class Dice. Prompt modes: per-prompt Dice of the mask
    with the highest predicted IoU (prompts simulated from the ground truth, seeded).
    `finish`: makes pixels and labels of uint8 batches (`model_frame.finish_batch`)."""
    was_training = model.training
    model.eval()
    gathered = []
    prompted = prompt is not None and prompt.mode != "none"
    for batch in loader:
        if finish is not None:
            batch = finish(batch)
        if prompted:
            from sam_medft.train.prompted import prompt_counts, prompted_forward

            with accelerator.autocast():
                logits, iou = prompted_forward(model, batch, multimask=prompt.multimask,
                                               frozen_encoder=frozen_encoder)
            counts = prompt_counts(logits, iou, batch["targets"], batch["prompt_valid"])
            # one row per image: pad prompts so gather_for_metrics sees the batch dimension
            counts = _per_image(counts, batch["prompt_valid"], prompt.max_objects_per_image)
        else:
            from sam_medft.train.trainer import batch_keys, cached_embeddings

            with accelerator.autocast():
                emb = cached_embeddings(cache, model, batch["pixel_values"], batch_keys(batch))
                logits, _ = automatic_forward(model, batch["pixel_values"], embeddings=emb,
                                              frozen_encoder=frozen_encoder)
            counts = confusion_counts(logits, batch["labels"])
        gathered.append(accelerator.gather_for_metrics(counts).cpu())
    model.train(was_training)
    if not gathered:
        return {"dice": float("nan"), "n_images": 0}
    counts = torch.cat(gathered)
    if prompted:
        rows = counts.flatten(0, 1)
        rows = rows[rows[:, 0] >= 0]  # drop padding rows
        return dice_from_counts(rows[:, None]) | {"n_images": int(counts.shape[0])}
    return dice_from_counts(counts)


def _per_image(counts: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """(N_valid,3) -> (B, width, 3) with -1 rows for padded prompts (same shape on every rank)."""
    out = torch.full((valid.shape[0], width, 3), -1, dtype=counts.dtype, device=counts.device)
    out[:, : valid.shape[1]][valid] = counts
    return out
