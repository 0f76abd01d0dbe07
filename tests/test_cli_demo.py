"""The demo recipe end to end through the real CLI, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sam_medft.resources import recipes_dir


@pytest.mark.slow
def test_demo_recipe_learns(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", SAM_MEDFT_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "sam_medft", "train", str(recipes_dir() / "demo.yaml"),
           f"output_dir={tmp_path / 'runs'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "demo"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["best_val_dice"] >= 0.8, summary
    assert "best validation foreground Dice" in proc.stdout
    for name in ("recipe.yaml", "adapter/sam_medft.json", "adapter/trainable_model.safetensors",
                 "logs/train.log"):
        assert (run / name).is_file(), name
    assert list((run / "logs").rglob("events.out.tfevents*")), "no tensorboard log"
