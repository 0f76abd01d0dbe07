"""Shared fixtures. Torch gets one thread per test process: the CI machine has 2 cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_model():
    """The deterministic random tiny SamModel (2 classes: background + 1)."""
    from sam_medft.models.registry import build_tiny

    return build_tiny(num_classes=2)


# ---- tiny trained runs, shared by the eval and infer tests (trained once per session) -------
_DEMO_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"
_SMALL_DEMO = [
    "data.synthetic.n_train=24",
    "data.synthetic.n_val=4",
    "data.synthetic.n_test=6",
    "train.log_with=none",
    "train.batch_size=4",
    "train.save_every=1000",
]


def _train_tiny(tmp_path_factory, name: str, *overrides: str):
    from sam_medft.config import load_recipe
    from sam_medft.training.trainer import train

    out = tmp_path_factory.mktemp(f"run_{name}")
    recipe = load_recipe(
        _DEMO_RECIPE, [f"output_dir={out}", f"name={name}", *_SMALL_DEMO, *overrides]
    )
    return train(recipe).run_dir


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo recipe (automatic mode, 3 classes) trained 60 steps: a run folder."""
    return _train_tiny(tmp_path_factory, "demo", "train.max_steps=60", "train.eval_every=60")


@pytest.fixture(scope="session")
def box_run(tmp_path_factory):
    """The demo recipe in box-prompt mode trained 40 steps: a run folder."""
    return _train_tiny(
        tmp_path_factory, "demo_box", "prompt.mode=box", "train.max_steps=40", "train.eval_every=40"
    )


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory):
    """`make(prompt_mode) -> run folder`: the tiny base saved as a vanilla adapter without any
    training (a real artifact in a second, for tests that only need a loadable model)."""
    from sam_medft.adapters.artifact import save_adapter
    from sam_medft.adapters.methods import apply_method
    from sam_medft.config import PeftSettings
    from sam_medft.models.registry import build_tiny
    from sam_medft.runs import AdapterMeta

    def make(prompt_mode: str = "none") -> Path:
        run = tmp_path_factory.mktemp(f"untrained_{prompt_mode}")
        meta = AdapterMeta(
            base_model="tiny", num_classes=3, class_names=["background", "organ_a", "organ_b"],
            method="vanilla", scope="decoder", normalization="sam", input_size=256,
            mask_size=64, mask_outputs=3, labels={"0": "background", "128": "organ_a",
            "255": "organ_b"}, prompt_mode=prompt_mode,
        )  # fmt: skip
        model, _ = apply_method(build_tiny(3), PeftSettings(method="vanilla", scope="decoder"))
        save_adapter(model, meta, run / "adapter")
        return run

    return make
