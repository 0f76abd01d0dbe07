"""PromptedTask on the real tiny SAM: one binary mask per prompt set, padding ignored."""

from __future__ import annotations

import pytest
import torch

from sam_medft.config import PromptConfig
from sam_medft.data.transforms import IGNORE_INDEX
from sam_medft.errors import SamMedftError
from sam_medft.models.registry import build_tiny
from sam_medft.tasks import Outputs, PromptedTask


def _batch() -> dict:
    """Two images: the first with two boxed objects, the second with one (slot 2 padding)."""
    targets = torch.zeros(2, 2, 64, 64, dtype=torch.long)
    targets[0, 0, 8:24, 8:24] = 1
    targets[0, 1, 30:50, 30:60] = 1
    targets[1, 0, 10:40, 20:30] = 1
    targets[..., 60:, :] = IGNORE_INDEX  # the padded rows of the low-res grid
    boxes = torch.tensor([[[32, 32, 92, 92], [120, 120, 236, 196]],
                          [[80, 40, 116, 156], [0, 0, 0, 0]]], dtype=torch.float32)
    return {"pixel_values": torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)),
            "input_boxes": boxes, "targets": targets,
            "prompt_valid": torch.tensor([[True, True], [True, False]])}


@pytest.mark.parametrize(("multimask", "k"), [(True, 3), (False, 1)])
def test_sams_three_mask_tokens_for_any_class_count(multimask, k):
    task = PromptedTask(PromptConfig(mode="box", multimask=multimask))
    assert task.mask_outputs(2) == task.mask_outputs(9) == 3
    out = task.forward(build_tiny(task.mask_outputs(5)), _batch(), frozen_encoder=True)
    assert out.logits.shape == (2, 2, k, 64, 64) and out.iou.shape == (2, 2, k)


def test_loss_ignores_padded_prompt_slots_and_trains_the_decoder():
    task = PromptedTask(PromptConfig(mode="box"))
    model = build_tiny(3).train()
    batch = _batch()
    out = task.forward(model, batch, frozen_encoder=True)
    loss = task.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.mask_decoder.mask_tokens.weight.grad.abs().sum() > 0
    logits = out.logits.detach().clone()
    padded = logits.clone()
    padded[1, 1] = 50.0  # the padded slot predicts everything: no effect
    same = task.loss(Outputs(padded, out.iou.detach()), batch)
    assert torch.allclose(same, task.loss(Outputs(logits, out.iou.detach()), batch))
    real = logits.clone()
    real[1, 0] = 50.0  # a real prompt's masks change: the loss does
    assert task.loss(Outputs(real, out.iou.detach()), batch) > same


def test_score_keeps_one_row_per_image_and_summarize_drops_the_padding():
    """Rows padded to max_objects_per_image (the same shape on every rank for gathering)."""
    task = PromptedTask(PromptConfig(mode="box", max_objects_per_image=4))
    batch = _batch()
    targets = batch["targets"]
    perfect = torch.where(targets == 1, 20.0, -20.0)[:, :, None].expand(2, 2, 3, 64, 64)
    iou = torch.tensor([0.9, 0.1, 0.1]).expand(2, 2, 3)
    counts = task.score(Outputs(perfect, iou), batch)
    assert counts.shape == (2, 4, 3)
    assert (counts[1, 1:] == -1).all() and (counts[0, 2:] == -1).all()
    assert task.summarize(counts) == {"dice": 1.0, "per_class": [1.0], "n_images": 2}

    worst_first = perfect.clone()
    worst_first[:, :, 1] = -perfect[:, :, 0]  # mask 1 is the inverse of the target ...
    chosen = torch.tensor([0.1, 0.9, 0.1]).expand(2, 2, 3)  # ... and has the best IoU score
    assert task.summarize(task.score(Outputs(worst_first, chosen), batch))["dice"] == 0.0


def test_prompt_settings_come_from_the_recipe():
    task = PromptedTask(PromptConfig(mode="hybrid", n_points=2, box_jitter=0.2))
    settings = task.prompt_settings()
    assert (settings.mode, settings.n_points, settings.box_jitter) == ("hybrid", 2, 0.2)
    assert task.prompt_settings(jitter=False).box_jitter == 0.0  # validation: tight boxes
    assert not task.caches_embeddings and not task.finishes_on_accelerator


def test_prompt_mode_needs_prompts_at_prediction():
    task = PromptedTask(PromptConfig(mode="point"))
    task.check_prediction(has_prompts=True)
    with pytest.raises(SamMedftError, match=r"prompt.mode=point.*pass prompts"):
        task.check_prediction(has_prompts=False)
