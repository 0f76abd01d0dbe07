"""Trainer behaviour users rely on: early stopping, best-adapter selection, run-folder rules."""

from __future__ import annotations

import json

import pytest
import torch

from sam_medft.config import load_recipe
from sam_medft.errors import SamMedftError
from sam_medft.resources import recipes_dir
from sam_medft.training.trainer import train

DEMO = recipes_dir() / "demo.yaml"  # absolute: the tests run from any folder
SMALL = ["data.synthetic.n_train=8", "data.synthetic.n_val=4", "data.synthetic.n_test=2",
         "train.log_with=none", "train.batch_size=4", "peft.method=lora", "peft.scope=decoder",
         "augment.enabled=false"]


def test_early_stopping_with_patience(tmp_path):
    # a learning rate too small to change the Dice: no improvement after the first evaluation
    r = load_recipe(DEMO, [*SMALL, f"output_dir={tmp_path}", "name=es",
                                          "train.lr=1e-12", "train.warmup_steps=0",
                                          "train.max_steps=40", "train.eval_every=2",
                                          "train.patience=1"])
    result = train(r)
    assert result.steps == 6  # evals at 2 (best), 4 (bad 1), 6 (bad 2 > patience 1): stop
    assert result.best_step == 2
    summary = json.loads((result.run_dir / "train_summary.json").read_text())
    assert [h["step"] for h in summary["history"]] == [2, 4, 6]
    assert (result.run_dir / "checkpoints" / "checkpoint-00000006").is_dir()


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path):
    args = [*SMALL, f"output_dir={tmp_path}", "name=twice", "train.max_steps=2",
            "train.eval_every=2"]
    train(load_recipe(DEMO, args))
    with pytest.raises(SamMedftError, match="--overwrite"):
        train(load_recipe(DEMO, args))
    result = train(load_recipe(DEMO, args), overwrite=True)
    assert result.steps == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    r = load_recipe(DEMO, [*SMALL, f"output_dir={tmp_path}", "name=nothing"])
    with pytest.raises(SamMedftError, match="no checkpoint"):
        train(r, resume=True)


def test_cached_embeddings_train_like_uncached(tmp_path):
    """Decoder-only without augmentation: the embedding cache changes nothing but speed."""
    from safetensors.torch import load_file

    weights = {}
    for cache in ("true", "false"):
        r = load_recipe(DEMO, [*SMALL, f"output_dir={tmp_path}", f"name=c{cache}",
                                              "train.max_steps=6", "train.eval_every=3",
                                              f"train.cache_embeddings={cache}"])
        result = train(r)
        weights[cache] = load_file(str(result.run_dir / "checkpoints" / "checkpoint-00000006"
                                       / "trainable.safetensors"))
    assert weights["true"].keys() == weights["false"].keys()
    for k in weights["true"]:
        torch.testing.assert_close(weights["true"][k], weights["false"][k], atol=1e-6, rtol=1e-5)


def test_cache_on_a_trained_encoder_is_refused(tmp_path):
    r = load_recipe(DEMO, [*SMALL, f"output_dir={tmp_path}", "name=bad",
                                          "peft.scope=encdec", "train.cache_embeddings=true"])
    with pytest.raises(SamMedftError, match="cache_embeddings"):
        train(r)


@pytest.mark.parametrize(
    "pipeline",
    [
        ["train.transform_device=accelerator", "train.preprocess_cache=disk",
         "train.num_workers=2"],
        ["train.preprocess_cache=off"],
    ],
    ids=["batch-finish+disk-store+workers", "no-store"],
)
def test_data_pipelines_train_identically(tmp_path, pipeline):
    """uint8 store + augmentation per batch on the accelerator (here the CPU), a disk store
    read by 2 workers, or decoding every time: the same weights as the default pipeline
    (memory store, finished per item in the loader), bit for bit on the CPU."""
    from safetensors.torch import load_file

    weights = {}
    for name, extra in (("default", []), ("other", pipeline)):
        r = load_recipe(DEMO, [
            *SMALL, f"output_dir={tmp_path}", f"name={name}", "augment.enabled=true",
            "augment.vflip=0.5", "augment.gamma=0.2", "peft.scope=encdec",
            "train.max_steps=4", "train.eval_every=2", *extra])
        result = train(r)
        weights[name] = load_file(str(result.run_dir / "checkpoints" / "checkpoint-00000004"
                                      / "trainable.safetensors"))
        assert not (result.run_dir / "cache").exists()  # disk stores are per-run scratch
        log = (result.run_dir / "logs" / "train.log").read_text()
        stored = "train.preprocess_cache=off" not in extra
        assert ("preprocessed 8 train images once" in log) == stored
    assert weights["default"].keys() == weights["other"].keys()
    for k in weights["default"]:
        assert torch.equal(weights["default"][k], weights["other"][k]), k
