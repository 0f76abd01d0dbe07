"""The trained artifact carries everything prediction needs (issue 13): sam_medft.json is
format 2 with `multimask`, and a run's recipe.yaml is no longer read to predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sam_medft.config import load_recipe
from sam_medft.runs import SCHEMA_VERSION, AdapterMeta, RunFolder

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"


@pytest.fixture(scope="module")
def single_mask_box_run(tmp_path_factory) -> Path:
    """The demo recipe in box mode with `prompt.multimask: false`, trained 2 steps."""
    from sam_medft.training.trainer import train

    out = tmp_path_factory.mktemp("single_mask")
    recipe = load_recipe(DEMO, [
        f"output_dir={out}", "name=box_single", "prompt.mode=box", "prompt.multimask=false",
        "data.synthetic.n_train=4", "data.synthetic.n_val=2", "data.synthetic.n_test=2",
        "train.log_with=none", "train.batch_size=2", "train.max_steps=2", "train.eval_every=2",
        "train.save_every=1000"])
    return train(recipe).run_dir


def test_trained_demo_run_writes_format_2_with_multimask(demo_run):
    written = json.loads(RunFolder(demo_run).meta_file.read_text())
    assert written["schema_version"] == SCHEMA_VERSION == 2
    assert written["multimask"] is True and written["prompt_mode"] == "none"
    meta = RunFolder(demo_run).read_meta()
    assert meta == AdapterMeta.read(demo_run / "adapter") and meta.schema_version == 2


def test_single_mask_box_run_predicts_single_mask_without_its_recipe(single_mask_box_run,
                                                                     tmp_path):
    import sam_medft

    run = RunFolder(single_mask_box_run)
    assert json.loads(run.meta_file.read_text())["multimask"] is False
    copy = tmp_path / "copy"
    shutil.copytree(run.root, copy, ignore=shutil.ignore_patterns(".sam_medft_lock"))
    (copy / "recipe.yaml").unlink()  # prediction must not need it any more
    assert not list(copy.rglob("recipe.yaml"))

    predictor = sam_medft.load(copy, device="cpu")
    assert predictor.multimask is False and predictor.task.prompt.multimask is False
    assert predictor.meta.prompt_mode == "box"
    image = np.random.default_rng(0).uniform(0, 255, (40, 50, 3)).astype(np.float32)
    labels = predictor.predict(image, prompts=[{"label": 1, "box": [5, 5, 30, 25]}])
    assert labels.shape == (40, 50) and labels.dtype == np.uint8
