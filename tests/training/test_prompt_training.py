"""Prompt-based fine-tuning (point, box, hybrid) on the tiny model and the synthetic set."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from sam_medft.config import load_recipe
from sam_medft.resources import recipes_dir
from sam_medft.training.trainer import train

DEMO = recipes_dir() / "demo.yaml"  # absolute: the tests run from any folder
SMALL = ["data.synthetic.n_train=12", "data.synthetic.n_val=6", "data.synthetic.n_test=2",
         "train.log_with=none", "train.batch_size=4", "peft.method=vanilla", "peft.scope=encdec"]


@pytest.mark.parametrize("mode", ["point", "box", "hybrid"])
def test_each_prompt_mode_trains(tmp_path, mode):
    r = load_recipe(DEMO, [*SMALL, f"output_dir={tmp_path}", f"name={mode}",
                                          f"prompt.mode={mode}", "train.max_steps=3",
                                          "train.eval_every=3", "prompt.n_points=2"])
    result = train(r)
    meta = json.loads((result.run_dir / "adapter" / "sam_medft.json").read_text())
    assert meta["prompt_mode"] == mode and meta["mask_outputs"] == 3
    assert result.history and result.history[-1]["val_dice"] >= 0


def test_mixed_object_counts_in_one_batch_train(tmp_path):
    """Images with 0, 1 and 3 objects share a batch (padded prompt slots are masked)."""
    from sam_medft.data.check import check_dataset
    from sam_medft.data.dataset import ModelFrameSpec, SamSegmentationDataset, collate
    from sam_medft.data.sources import build_splits
    from sam_medft.models.registry import build_tiny
    from sam_medft.tasks.prompted import prompt_loss, prompt_settings, prompted_forward

    r = load_recipe(DEMO, [*SMALL, "prompt.mode=box", "augment.enabled=false"])
    label_map = check_dataset(r.data).label_map
    source = build_splits(r.data)["train"]
    from sam_medft.data.transforms import SamGeometry

    ds = SamSegmentationDataset(source, ModelFrameSpec(SamGeometry(256, 64), "sam", label_map),
                                None, prompts=prompt_settings(r.prompt))
    counts = {i: len(ds[i]["prompts"]) for i in range(len(ds))}
    pick = [next(i for i, n in counts.items() if n == k) for k in (0, 1)]
    pick.append(max(counts, key=counts.get))
    assert counts[pick[2]] >= 2
    batch = collate([ds[i] for i in pick])
    assert batch["prompt_valid"].sum(1).tolist() == [0, 1, counts[pick[2]]]
    model = build_tiny(3).train()
    logits, iou = prompted_forward(model, batch, multimask=True, frozen_encoder=False)
    loss = prompt_loss(logits, iou, batch["targets"], batch["prompt_valid"], r.loss)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.mask_decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_box_training_improves_box_dice(tmp_path):
    """Validation box-prompt Dice of the untrained tiny model vs after 60 steps."""
    from accelerate import Accelerator

    from sam_medft.data.check import check_dataset
    from sam_medft.data.dataset import ModelFrameSpec, SamSegmentationDataset, collate
    from sam_medft.data.sources import build_splits
    from sam_medft.data.transforms import SamGeometry
    from sam_medft.models.registry import build_tiny
    from sam_medft.tasks import task_for
    from sam_medft.tasks.prompted import prompt_settings
    from sam_medft.training.validate import validate

    r = load_recipe(DEMO, [*SMALL, f"output_dir={tmp_path}", "name=box",
                                          "prompt.mode=box", "train.max_steps=60",
                                          "train.eval_every=30", "train.lr=1e-3"])
    label_map = check_dataset(r.data).label_map
    spec = ModelFrameSpec(SamGeometry(256, 64), "sam", label_map)
    val = SamSegmentationDataset(build_splits(r.data)["val"], spec, None, seed=r.train.seed,
                                 prompts=prompt_settings(r.prompt))
    before = validate(build_tiny(3), DataLoader(val, batch_size=4, collate_fn=collate),
                      Accelerator(cpu=True), task=task_for(r.prompt), frozen_encoder=False)["dice"]
    after = train(r).best_dice
    assert after > before + 0.1, (before, after)
