"""Everything a run writes gets the modes the user's umask gives (0666/0777 & ~umask), so the
other members of a shared lab folder can read adapters, checkpoints and eval results.

Before: `tempfile.mkdtemp` made adapter/ 0700 and safetensors wrote its files 0600 whatever
the umask. Real writers, real files; the umask is the process's, set for the test.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from sam_medft.config import PeftSettings, load_recipe
from sam_medft.files import current_umask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def assert_modes(root: Path, mask: int) -> int:
    """Every file 0666 & ~mask, every folder 0777 & ~mask; returns how many were checked."""
    paths = [root, *root.rglob("*")]
    for p in paths:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        got = stat.S_IMODE(p.stat().st_mode)
        assert got == want, f"{p.relative_to(root.parent)}: {oct(got)}, want {oct(want)}"
    return len(paths)


def tiny_lora():
    from sam_medft.adapters.methods import apply_method
    from sam_medft.models.registry import build_tiny

    model, _ = apply_method(build_tiny(3), PeftSettings(method="lora", scope="decoder"))
    return model


def meta(**kw):
    from sam_medft.runs import AdapterMeta

    base = dict(base_model="tiny", num_classes=3, class_names=["background", "organ_a", "organ_b"],
                method="lora", scope="decoder", normalization="sam", input_size=256, mask_size=64,
                mask_outputs=3, labels={"0": "background", "128": "organ_a", "255": "organ_b"})
    return AdapterMeta(**{**base, **kw})


def test_current_umask_reads_without_changing_it():
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o002], indirect=True, ids=oct)
def test_adapter_checkpoint_and_run_folder_follow_the_umask(tmp_path, umask):
    from accelerate import Accelerator

    from sam_medft.adapters.artifact import save_adapter
    from sam_medft.runs import RunFolder
    from sam_medft.training.checkpoint import save_checkpoint
    from sam_medft.training.schedules import build_scheduler

    run = RunFolder(tmp_path / "run")
    lock = run.open_for_training(resume=False, overwrite=False)
    try:
        assert stat.S_IMODE(run.lock_file.stat().st_mode) == 0o666 & ~umask
        model = tiny_lora()
        save_adapter(model, meta(), run.adapter)
        save_adapter(model, meta(), run.adapter)  # the replace path too
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        sched = build_scheduler(opt, warmup=1, total=4, kind="cosine")
        save_checkpoint(Accelerator(cpu=True), run.checkpoints, 1, model, opt, sched,
                        {"epoch": 0}, keep_last=2)
        from sam_medft.files import write_text_atomic

        write_text_atomic(run.recipe_file, "name: run\n")
    finally:
        lock.release()
    names = {p.name for p in run.root.rglob("*")}
    assert {"adapter_model.safetensors", "trainable.safetensors", "optimizer.pt", "recipe.yaml",
            ".sam_medft_run", "logs"} <= names
    assert assert_modes(run.root, umask) > 12


@pytest.mark.parametrize("umask", [0o002], indirect=True, ids=oct)
def test_eval_outputs_follow_the_umask(tmp_path, umask):
    from sam_medft.adapters.artifact import save_adapter
    from sam_medft.adapters.methods import apply_method
    from sam_medft.eval.evaluate import evaluate_run
    from sam_medft.models.registry import build_tiny

    run = tmp_path / "run"
    model, _ = apply_method(build_tiny(3), PeftSettings(method="vanilla", scope="decoder"))
    save_adapter(model, meta(method="vanilla"), run / "adapter")
    recipe = load_recipe(REPO / "recipes" / "demo.yaml", [
        "data.synthetic.n_train=2", "data.synthetic.n_val=1", "data.synthetic.n_test=2",
        "data.synthetic.size=64", "eval.overlays=1"])
    (run / "recipe.yaml").write_text(recipe.to_yaml())
    result = evaluate_run(run, show_progress=False)
    assert result.report is not None and result.report.is_file()
    assert (run / "eval" / "overlays").is_dir()
    assert assert_modes(run / "eval", umask) >= 5
    assert not (run / ".sam_medft_lock").exists()  # the eval's lock is released


def test_manifest_round_trip_and_an_unreadable_one(tmp_path):
    """The record of what a command wrote: read back as written (filtered), and a damaged one
    is one message (which files are ours is then unknown, so nothing may be replaced)."""
    import pytest

    from sam_medft.errors import SamMedftError
    from sam_medft.files import read_manifest, write_manifest

    path = tmp_path / "out" / "manifest.json"
    assert read_manifest(path, "predict", keep=lambda f: True, fix="x") == set()
    write_manifest(path, "predict", {"b.png", "a.png", "../escape.png"})
    kept = read_manifest(path, "predict", keep=lambda f: ".." not in f, fix="x")
    assert kept == {"a.png", "b.png"}
    path.write_text("{not json")
    with pytest.raises(SamMedftError, match=r"manifest.json cannot be read .*`sam-medft "
                                            r"predict` wrote is unknown: choose another --out"):
        read_manifest(path, "predict", keep=lambda f: True, fix="choose another --out")
