"""Issue 14: a rare class is named before the first step, a class no validation predicts is
named after each validation and at the end, and a foreground Dice of 0 is never "best"."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from sam_medft.training.api import train

LABELS_TWO = {0: "background", 1: "big", 2: "small"}
LABELS_SMALL_ONLY = {0: "background", 2: "small"}


def pair(seed: int, small: bool, big: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 slice: a bright 30x30 square ('big', or unlabelled) and, when asked, a 6x6
    'small' spot (0.9 % of the pixels)."""
    rng = np.random.default_rng(seed)
    img = (rng.random((64, 64)) * 40).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    img[10:40, 10:40] += 150
    if big:
        mask[10:40, 10:40] = 1
    if small:
        img[50:56, 50:56] += 200
        mask[50:56, 50:56] = 2
    return img, mask


def run(tmp_path, caplog, *, big: bool, max_steps: int, eval_every: int):
    """'small' is in 1 of 5 training slices and in both validation slices; at lr 3e-3 the
    tiny model learns to predict background there within a few steps (deterministic)."""
    train_data = [pair(i, small=i == 0, big=big) for i in range(5)]
    val_data = [pair(10 + i, small=True, big=big) for i in range(2)]
    with caplog.at_level(logging.INFO, logger="sam_medft"):
        result = train("demo", train_data, val_data, output_dir=str(tmp_path), name="rare",
                       data={"labels": LABELS_TWO if big else LABELS_SMALL_ONLY},
                       train={"max_steps": max_steps, "eval_every": eval_every,
                              "save_every": 1000, "batch_size": 5, "log_with": "none",
                              "warmup_steps": 0, "lr": 3e-3},
                       augment={"enabled": False})
    summary = json.loads((result.run_dir / "train_summary.json").read_text())
    messages = [r.getMessage() for r in caplog.records]
    return result, summary, messages


def test_rare_and_never_predicted_class_is_named(tmp_path, caplog):
    result, summary, messages = run(tmp_path, caplog, big=True, max_steps=8, eval_every=8)
    # 1. before the first step: the 1-in-5 class, its shares, and the remedies that exist
    rare = [m for m in messages if "class small is rare" in m]
    assert len(rare) == 1
    assert "in 1 of 5 training images (20.0%)" in rare[0]
    assert "loss.class_weights=[1, 1, 5]" in rare[0] and "train.max_steps" in rare[0]
    assert "no sampling" in rare[0]
    assert not any("class big is rare" in m for m in messages)
    assert summary["rare_classes"] == [
        {"class": "small", "images": 1, "of_images": 5, "pixel_share": pytest.approx(0.0018, abs=1e-4),
         "foreground_share": pytest.approx(36 / (5 * 900 + 36), abs=1e-6)}]
    # 2. after the validation: which Dice it is, and the class nothing predicted (once)
    val_lines = [m for m in messages if m.startswith("step 8: validation Dice on the low-res grid "
                                                     "(picks the best adapter)")]
    assert len(val_lines) == 1 and "small 0.0000" in val_lines[0]
    assert "best" in val_lines[0] and result.best_dice > 0  # 'big' is segmented
    so_far = [m for m in messages if "class small: not predicted on any validation image" in m]
    assert len(so_far) == 1 and "loss.class_weights" in so_far[0]
    # ... and the reminder at the end names the saved adapter
    end = [m for m in messages if "class small was never predicted at any of the 1 validations" in m]
    assert len(end) == 1 and "the saved adapter (step 8) never segmented small" in end[0]
    assert summary["classes"] == {
        "big": {"first_predicted_step": 8, "predicted_by_saved_adapter": True},
        "small": {"first_predicted_step": None, "predicted_by_saved_adapter": False}}
    assert summary["never_predicted"] == ["small"]
    assert summary["foreground_segmented"] is True
    assert summary["history"][0]["predicted_pixels"][1] == 0
    assert "low-res" in summary["val_dice_on"]


def test_foreground_dice_zero_is_never_called_best(tmp_path, caplog):
    result, summary, messages = run(tmp_path, caplog, big=False, max_steps=8, eval_every=4)
    val_lines = [m for m in messages if "validation Dice on the low-res grid" in m]
    assert len(val_lines) == 2
    for line in val_lines:
        assert "foreground 0.0000" in line and "best 0.0000" not in line
        assert "no validation so far has segmented any foreground" in line
        assert "it predicted no foreground pixel" in line
    # one warning per class while it stays unpredicted, then the reminder at the end
    assert sum("class small: not predicted on any validation image" in m for m in messages) == 1
    assert any("the saved adapter (step 4) never segmented small" in m for m in messages)
    final = [m for m in messages if m.startswith("no validation segmented any foreground")]
    assert len(final) == 1 and "segments nothing" in final[0] and "artifact" in final[0]
    assert (result.run_dir / "adapter").is_dir()  # the run still has an artifact
    assert summary["foreground_segmented"] is False
    assert summary["never_predicted"] == ["small"]
    assert summary["classes"]["small"]["first_predicted_step"] is None


def test_pixel_totals_per_class_and_per_prompt_set():
    import torch

    from sam_medft.training.validate import pixel_totals

    # automatic: (N, C-1, 3) tp/fp/fn -> per class tp+fp and tp+fn over the images
    counts = torch.tensor([[[2, 1, 0], [0, 0, 5]], [[1, 0, 1], [0, 0, 3]]])
    assert pixel_totals(counts, prompted=False) == {"predicted_pixels": [4, 0],
                                                    "reference_pixels": [4, 8]}
    # prompt modes: (N, P, 3) with -1 padding rows -> one entry for all prompts
    counts = torch.tensor([[[2, 1, 0], [-1, -1, -1]], [[0, 3, 4], [-1, -1, -1]]])
    assert pixel_totals(counts, prompted=True) == {"predicted_pixels": [6],
                                                   "reference_pixels": [6]}
