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


def test_fine_tune_from_a_pushed_mixture_run(fake_hub, tmp_path):
    """`model.name=<Hub id of a pushed Setup 2 run>`: its weights start the target run."""
    from sam_medft.adapters.artifact import load_adapter_model
    from sam_medft.hub import push_run
    from sam_medft.training.trainer import train

    mix = load_recipe(SETUPS / "setup2_mixture.yaml", [
        f"output_dir={tmp_path}", "name=mix", "train.log_with=none", "train.batch_size=2",
        "train.max_steps=1", "data.datasets.0.synthetic.n_val=0",
        "data.datasets.1.synthetic.n_val=0", "data.datasets.0.synthetic.n_train=2",
        "data.datasets.1.synthetic.n_train=2"])
    mix_run = train(mix).run_dir
    repo = f"{fake_hub.user}/mixture"
    push_run(mix_run, repo)
    target = load_recipe(SETUPS / "setup3_finetune.yaml", [
        f"output_dir={tmp_path}", "name=target", f"model.name={repo}", "model.encoder_weights=",
        "data.labels={0: background, 128: organ_a, 255: background}", "train.max_steps=1",
        "data.synthetic.n_train=2", "data.synthetic.n_val=0", "data.synthetic.n_test=0",
        "train.batch_size=2", "train.log_with=none"])
    model, base_id, _ = build_model(target, LabelMap({0: "background", 128: "organ_a"}))
    mixed, _ = load_adapter_model(mix_run / "adapter")
    key = "patch_embed.projection.weight"
    assert base_id == repo
    assert torch.equal(model.get_base_model().vision_encoder.state_dict()[key],
                       mixed.vision_encoder.state_dict()[key])
    run = train(target).run_dir
    again, meta = load_adapter_model(run / "adapter")  # its base comes from the Hub cache
    assert meta.base_model == repo


def test_a_failing_hub_is_no_run_at_once(fake_hub):
    """Asking whether `model.name` is a pushed run costs one request and no retries: a Hub
    answering 503 says "no", and the base model's own loading reports the Hub's failure."""
    import time

    from sam_medft.hub import is_hub_run

    fake_hub.fail_with(503)
    t = time.perf_counter()
    assert is_hub_run(f"{fake_hub.user}/whatever") is False
    assert time.perf_counter() - t < 5 and len(fake_hub.requests) <= 1
