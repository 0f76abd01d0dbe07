"""AutomaticTask on the real tiny SAM: one mask token per class, its loss, score and errors."""

from __future__ import annotations

import pytest
import torch

from sam_medft.config import LossConfig
from sam_medft.data.transforms import IGNORE_INDEX
from sam_medft.errors import SamMedftError
from sam_medft.models.registry import build_tiny
from sam_medft.tasks import AutomaticTask, Outputs


def _batch(num_classes: int = 3, batch: int = 2) -> dict:
    """Tiny-model pixels and a label map with every class, its last rows padding."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.zeros(batch, 64, 64, dtype=torch.long)
    for c in range(1, num_classes):
        labels[:, 8 * c : 8 * c + 12, 10:40] = c
    labels[:, 56:] = IGNORE_INDEX
    return {"pixel_values": torch.randn(batch, 3, 256, 256, generator=gen), "labels": labels}


def test_one_mask_output_per_class_and_one_logit_map_each():
    task = AutomaticTask()
    assert task.mask_outputs(4) == 4
    model = build_tiny(task.mask_outputs(4))
    out = task.forward(model, _batch(4), frozen_encoder=True)
    assert out.logits.shape == (2, 4, 64, 64) and out.iou.shape == (2, 4)


@pytest.mark.parametrize("iou_weight", [1.0, 0.0])
def test_loss_reaches_every_head_even_without_the_iou_term(iou_weight):
    """DDP needs every trainable output in the graph: the IoU head gets a gradient (zero
    when its loss weight is 0) and the mask tokens a real one."""
    task = AutomaticTask(loss=LossConfig(iou_weight=iou_weight))
    model = build_tiny(3).train()
    batch = _batch()
    loss = task.loss(task.forward(model, batch, frozen_encoder=True), batch)
    loss.backward()
    assert torch.isfinite(loss)
    head = [p.grad for p in model.mask_decoder.iou_prediction_head.parameters()]
    assert all(g is not None for g in head)
    assert any(g.abs().sum() > 0 for g in head) == (iou_weight > 0)
    assert model.mask_decoder.mask_tokens.weight.grad.abs().sum() > 0


def test_score_counts_foreground_per_class_and_ignores_padding():
    batch = _batch()
    labels = batch["labels"]
    perfect = torch.nn.functional.one_hot(labels.clamp(min=0), 3).permute(0, 3, 1, 2).float()
    perfect[:, 1, 56:] = 10.0  # predicted class 1 in the padding: not a false positive
    task = AutomaticTask()
    counts = task.score(Outputs(perfect, torch.zeros(2, 3)), batch)
    assert counts.shape == (2, 2, 3)  # images x foreground classes x tp/fp/fn
    assert counts[..., 1:].sum() == 0 and (counts[..., 0] > 0).all()
    assert task.summarize(counts) == {"dice": 1.0, "per_class": [1.0, 1.0], "n_images": 2}

    missed = perfect.clone()
    missed[:, 0] += 100.0 * (labels == 2)  # class 2 predicted as background everywhere
    summary = task.summarize(task.score(Outputs(missed, torch.zeros(2, 3)), batch))
    assert summary["per_class"] == [1.0, 0.0] and summary["dice"] == 0.5


def test_automatic_mode_has_no_prompts_and_refuses_them_at_prediction():
    task = AutomaticTask()
    assert task.prompt_settings() is None
    assert task.caches_embeddings and task.finishes_on_accelerator
    task.check_prediction(has_prompts=False)
    with pytest.raises(SamMedftError, match=r"automatic mode \(prompt.mode=none\).*prompt.mode=box"):
        task.check_prediction(has_prompts=True)
