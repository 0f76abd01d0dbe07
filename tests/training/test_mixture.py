"""Setup 2: a mixture of labelled data sets with different label sets.

Two real synthetic data sets on disk, one labelling organ_a only and the other organ_b only;
the real tiny SamModel; the one Trainer and `sam-medft eval`'s evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam_medft.config import LossConfig, load_recipe, validate_recipe
from sam_medft.data.dataset import EpochSampler
from sam_medft.data.mixture import ConcatSource, check_data, data_splits
from sam_medft.errors import SamMedftError
from sam_medft.eval.evaluate import evaluate_run
from sam_medft.models.forward import automatic_forward
from sam_medft.models.registry import build_tiny
from sam_medft.tasks.automatic import AutomaticTask
from sam_medft.tasks.base import Outputs
from sam_medft.training.trainer import train

SETUPS = Path(__file__).resolve().parents[2] / "recipes" / "setups"
A_ONLY = {0: "background", 128: "organ_a", 255: "background"}
B_ONLY = {0: "background", 128: "background", 255: "organ_b"}


def _entry(name, seed, labels, n_train=4, weight=1.0):
    return {"name": name, "source": "synthetic", "labels": labels, "weight": weight,
            "synthetic": {"n_train": n_train, "n_val": 2, "n_test": 2, "size": 64, "seed": seed}}


def _mixture(*entries):
    return validate_recipe({"data": {"datasets": list(entries)}}).data


def test_recipe_mistakes_are_one_message():
    with pytest.raises(SamMedftError, match="names must be unique"):
        _mixture(_entry("a", 0, A_ONLY), _entry("a", 1, B_ONLY))
    with pytest.raises(SamMedftError, match="not binary: true"):
        _mixture({**_entry("a", 0, A_ONLY), "labels": None, "binary": True})
    with pytest.raises(SamMedftError, match="each data set's own"):
        validate_recipe({"data": {"datasets": [_entry("a", 0, A_ONLY)],
                                  "labels": {0: "background", 1: "x"}}})
    with pytest.raises(SamMedftError, match="cannot be a member"):
        _mixture({**_entry("a", 0, A_ONLY), "source": "python"})


def test_union_classes_masks_and_weights():
    data = _mixture(_entry("a_set", 0, A_ONLY, n_train=6, weight=3.0),
                    _entry("b_set", 1, B_ONLY, n_train=2, weight=1.0))
    report = check_data(data)
    assert report.ok, report.errors
    assert report.label_map.class_names == ["background", "organ_a", "organ_b"]
    splits = data_splits(data)
    train_src = splits["train"]
    assert isinstance(train_src, ConcatSource) and len(train_src) == 8
    assert train_src.names[0].startswith("a_set/") and train_src.names[-1].startswith("b_set/")
    # the b set's organ_b (raw 255) is union class 2; its organ_a (raw 128) is background
    b = train_src.load(7)
    assert set(np.unique(b.raw_mask)) <= {0, 2} and (b.raw_mask == 2).any()
    a = train_src.load(0)
    assert set(np.unique(a.raw_mask)) <= {0, 1}
    assert train_src.valid_classes().tolist() == [[True, True, False], [True, False, True]]
    # weights are shares of the draws, whatever the sizes: 3:1 although a has 3x the images
    w = train_src.sample_weights()
    assert w[:6].sum() == pytest.approx(0.75) and w[6:].sum() == pytest.approx(0.25)
    drawn = [i for e in range(50) for _, i in _epoch(EpochSampler(8, seed=0, weights=w), e)]
    assert np.mean(np.array(drawn) >= 6) == pytest.approx(0.25, abs=0.04)
    assert splits["val"].union.class_names == report.label_map.class_names


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_ignored_classes_receive_no_gradient():
    """A batch from a data set that labels organ_a only: the organ_b logits, its IoU entry
    and its hypernetwork MLP get exactly zero gradient; organ_a's do not."""
    torch.manual_seed(0)
    model = build_tiny(3).train()
    x = torch.randn(2, 3, 256, 256)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 20:40, 20:40] = 1
    valid = torch.tensor([[True, True, False]] * 2)
    task = AutomaticTask(loss=LossConfig())
    logits, iou = automatic_forward(model, x)
    logits.retain_grad()
    iou.retain_grad()
    task.loss(Outputs(logits, iou), {"labels": labels, "valid_classes": valid}).backward()
    assert logits.grad[:, 2].abs().max() == 0 and iou.grad[:, 2].abs().max() == 0
    assert logits.grad[:, 1].abs().max() > 0 and iou.grad[:, 1].abs().max() > 0
    mlps = model.mask_decoder.output_hypernetworks_mlps  # token c + 1 is class c
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in mlps[3].parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in mlps[2].parameters())
    # without the mask the same batch teaches "no organ_b here": a gradient
    model.zero_grad()
    logits, iou = automatic_forward(model, x)
    logits.retain_grad()
    task.loss(Outputs(logits, iou), {"labels": labels}).backward()
    assert logits.grad[:, 2].abs().max() > 0


def test_two_data_sets_train_and_evaluate_per_data_set(tmp_path):
    recipe = load_recipe(SETUPS / "setup2_mixture.yaml", [
        f"output_dir={tmp_path}", "name=mix", "train.log_with=none", "train.batch_size=4",
        "train.max_steps=2", "train.eval_every=2", "train.save_every=2",
        *[f"data.datasets.{k}.synthetic.{n}={v}"
          for k in (0, 1) for n, v in (("n_train", 4), ("n_val", 2), ("n_test", 2))]])
    result = train(recipe)
    last = result.history[-1]
    assert set(last["per_dataset"]) == {"organ_a_set", "organ_b_set"}
    assert last["n_images"] == 4
    ev = evaluate_run(result.run_dir, show_progress=False)
    per = ev.summary["per_dataset"]
    assert set(per) == {"organ_a_set", "organ_b_set"}
    # each data set is scored on the class it labels only
    assert list(per["organ_a_set"]["class_names"].values()) == ["organ_a"]
    assert list(per["organ_b_set"]["class_names"].values()) == ["organ_b"]
    assert {r["class_name"] for r in ev.rows if r["case"].startswith("organ_a_set/")} == {"organ_a"}
    assert ev.summary["n_cases"] == 4


def test_fine_tune_the_mixture_model_on_one_target(tmp_path):
    """`model.name=runs/<setup2 run>`: the mixture's weights (LoRA merged) start a new
    fine-tuning with the target's classes (fresh heads); its artifact reloads from the run."""
    from sam_medft.adapters.artifact import load_adapter_model

    mix = load_recipe(SETUPS / "setup2_mixture.yaml", [
        f"output_dir={tmp_path}", "name=mix", "train.log_with=none", "train.batch_size=2",
        "train.max_steps=1", "peft.method=lora", "data.datasets.0.synthetic.n_val=0",
        "data.datasets.1.synthetic.n_val=0", "data.datasets.0.synthetic.n_train=2",
        "data.datasets.1.synthetic.n_train=2"])
    mix_run = train(mix).run_dir
    mixed, _ = load_adapter_model(mix_run / "adapter")
    merged = mixed.merge_and_unload().vision_encoder.state_dict()
    target = load_recipe(SETUPS / "setup3_finetune.yaml", [
        f"output_dir={tmp_path}", "name=target", f"model.name={mix_run}",
        "model.encoder_weights=", "data.labels={0: background, 128: organ_a, 255: background}",
        "data.synthetic.n_train=2", "data.synthetic.n_val=0", "data.synthetic.n_test=0",
        "train.batch_size=2", "train.max_steps=1", "train.log_with=none"])
    from sam_medft.data.labels import LabelMap
    from sam_medft.training.trainer import build_model

    model, base_id, _ = build_model(target, LabelMap({0: "background", 128: "organ_a"}))
    start = model.get_base_model()
    assert base_id == str(mix_run)
    assert start.mask_decoder.mask_tokens.weight.shape[0] == 3  # 2 classes + SAM's token 0
    key = "layers.1.attn.qkv.weight"
    assert torch.equal(start.vision_encoder.state_dict()[key.replace("qkv.", "qkv.base_layer.")],
                       merged[key])
    run = train(target).run_dir
    again, meta = load_adapter_model(run / "adapter")
    assert meta.base_model == str(mix_run) and meta.num_classes == 2
