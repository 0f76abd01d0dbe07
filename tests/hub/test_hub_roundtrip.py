"""A trained tiny adapter goes to the loopback Hub and comes back with identical predictions,
and training continues from the pushed adapter (`model.adapter=REPO_ID`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import sam_medft
from sam_medft.cli import app
from sam_medft.config import load_recipe
from sam_medft.training.trainer import train

RECIPE = "recipes/demo.yaml"
SMALL = ["data.synthetic.n_train=8", "data.synthetic.n_val=4", "data.synthetic.n_test=4",
         "train.max_steps=4", "train.eval_every=2", "train.save_every=4", "train.batch_size=2",
         "train.log_with=none", "peft.method=lora", "peft.scope=encdec", "peft.layers=all"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(RECIPE, [*SMALL, f"output_dir={out}", "name=hubrun"])
    return train(recipe).run_dir


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((96, 128)) * 255).astype(np.uint8)


def test_push_pull_identical_predictions(trained_run, fake_hub, tmp_path, monkeypatch):
    repo = f"{fake_hub.user}/tiny-demo-lora"
    result = CliRunner().invoke(app, ["push", str(trained_run), repo])
    assert result.exit_code == 0, repr(result.exception)
    files = set(fake_hub.repos[repo].files("main"))
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "sam_medft.json",
            "recipe.yaml"} <= files

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "fresh_cache"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "fresh_cache"))
    local = sam_medft.load(trained_run, device="cpu")
    remote = sam_medft.load(repo, device="cpu")
    image = _image()
    a, b = local.predict_proba([image])[0], remote.predict_proba([image])[0]
    assert a.shape == (3, 96, 128)
    np.testing.assert_array_equal(a, b)
    card = (fake_hub.repos[repo].files("main")["README.md"]).decode()
    assert "library_name: peft" in card and "segment-anything" in card


def test_continue_training_from_hub_adapter(trained_run, fake_hub, tmp_path):
    from sam_medft.hub import push_run

    repo = f"{fake_hub.user}/continue-me"
    push_run(trained_run, repo)
    recipe = load_recipe(RECIPE, [*SMALL, f"output_dir={tmp_path}", "name=cont",
                                  f"model.adapter={repo}", "model.name=sam-vit-huge"])
    result = train(recipe)
    meta = json.loads((result.run_dir / "adapter" / "sam_medft.json").read_text())
    # base model and classes come from the adapter, not from model.name
    assert meta["base_model"] == "tiny" and meta["num_classes"] == 3
