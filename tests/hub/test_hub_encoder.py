"""Setup 3's pretrained encoder goes to the loopback Hub with `sam-medft push` and
fine-tuning starts from the repo id (`model.encoder_weights=REPO_ID`)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from sam_medft.cli import app
from sam_medft.config import load_recipe
from sam_medft.data.labels import LabelMap
from sam_medft.training.pretrain import pretrain
from sam_medft.training.trainer import build_model

SETUPS = Path(__file__).resolve().parents[2] / "recipes" / "setups"


def test_push_encoder_and_fine_tune_from_the_repo(fake_hub, tmp_path):
    recipe = load_recipe(SETUPS / "setup3_pretrain.yaml", [
        f"output_dir={tmp_path}", "name=pre", "data.synthetic.n_train=4",
        "data.synthetic.n_val=0", "data.synthetic.n_test=0", "pretrain.splits=[train]",
        "train.max_steps=1", "train.batch_size=2", "train.log_with=none"])
    run = pretrain(recipe).run_dir
    repo = f"{fake_hub.user}/tiny-encoder"
    result = CliRunner().invoke(app, ["push", str(run), repo])
    assert result.exit_code == 0, result.output
    files = set(fake_hub.repos[repo].files("main"))
    assert {"model.safetensors", "sam_medft_encoder.json", "recipe.yaml", "README.md"} <= files

    ft = load_recipe(SETUPS / "setup3_finetune.yaml", [f"model.encoder_weights={repo}"])
    model, _, _ = build_model(ft, LabelMap({0: "background", 128: "a", 255: "b"}))
    saved = load_file(str(run / "encoder" / "model.safetensors"))
    loaded = model.get_base_model().vision_encoder.state_dict()
    assert torch.equal(loaded["patch_embed.projection.weight"],
                       saved["vision_encoder.patch_embed.projection.weight"])
