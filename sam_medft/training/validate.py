"""Validation during training: the task's score of every validation image, gathered.

This is the fast metric that picks the best adapter (on the model's low-res grid); the
published numbers come from `sam-medft eval` at each image's original resolution. Images
where a class is absent in both ground truth and prediction are left out of that class's
mean (not scored as 1).

Each result also says how many pixels of each class were predicted and are in the
reference (`predicted_pixels`, `reference_pixels`: tp + fp and tp + fn over all images), so
the trainer can tell a class that is never predicted from one it predicts badly.
"""

from __future__ import annotations

import torch

from sam_medft.tasks import Task
from sam_medft.training.embedding_cache import batch_keys, cached_embeddings


@torch.no_grad()
def validate(model, loader, accelerator, *, task: Task, frozen_encoder: bool, cache=None,
             finish=None, groups: torch.Tensor | None = None,
             group_names: list[str] | None = None) -> dict:
    """Automatic mode: per-image per-class Dice. Prompt modes: per-prompt Dice of the mask
    with the highest predicted IoU (prompts simulated from the ground truth, seeded).
    `finish`: makes pixels and labels of uint8 batches (`model_frame.finish_batch`).
    `groups` (N,): the data set of each validation image (a Setup 2 mixture, names in
    `group_names`): the result then also has `per_dataset`, each data set's own summary."""
    was_training = model.training
    model.eval()
    gathered, indices = [], []
    for batch in loader:
        if finish is not None:
            batch = finish(batch)
        with accelerator.autocast():
            emb = cached_embeddings(cache, model, batch["pixel_values"], batch_keys(batch))
            outputs = task.forward(model, batch, frozen_encoder=frozen_encoder, embeddings=emb)
        gathered.append(accelerator.gather_for_metrics(task.score(outputs, batch)).cpu())
        if groups is not None:
            indices.append(accelerator.gather_for_metrics(batch["index"]).cpu())
    model.train(was_training)
    if not gathered:
        return {"dice": float("nan"), "n_images": 0}
    counts = torch.cat(gathered)
    out = task.summarize(counts) | pixel_totals(counts, prompted=task.prompted)
    if groups is not None:
        of = groups[torch.cat(indices)]
        out["per_dataset"] = {name: task.summarize(counts[of == k])
                              for k, name in enumerate(group_names or []) if (of == k).any()}
    return out


def pixel_totals(counts: torch.Tensor, *, prompted: bool) -> dict:
    """Predicted (tp + fp) and reference (tp + fn) pixels per entry of `per_class`: per
    foreground class in automatic mode (counts (N, C-1, 3)), one entry for all prompts in
    the prompt modes (counts (N, P, 3), padding rows -1)."""
    c = counts.clamp(min=0).long()
    pred, ref = c[..., 0] + c[..., 1], c[..., 0] + c[..., 2]
    if prompted:
        pred, ref = pred.sum().reshape(1), ref.sum().reshape(1)
    else:
        pred, ref = pred.sum(0), ref.sum(0)
    return {"predicted_pixels": [int(x) for x in pred],
            "reference_pixels": [int(x) for x in ref]}
