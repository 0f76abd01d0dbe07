"""Checkpoints and adapters under faults (issue 12): a damaged newest checkpoint is skipped
on --resume (kept for the user, renamed aside), a full disk or a read-only folder while
writing is one message, the temporary folder is gone and every earlier file is unchanged
(a digest of the folder before and after).

Real writers everywhere. A full disk is simulated twice: a patched writer raising
OSError(ENOSPC) (always runs), and a real tmpfs of a few hundred KB where mounting is allowed,
which also shows what the libraries really raise (safetensors: SafetensorError "os error 28";
torch.save: a RuntimeError without the cause).
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
import torch
from fault_helpers import digest, read_only, small_tmpfs
from safetensors.torch import load_file

from sam_medft.errors import SamMedftError
from sam_medft.training import checkpoint as ckpt_mod
from sam_medft.training.checkpoint import CORRUPT_PREFIX, resume_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


class World:
    """A tiny SamModel with a small trainable part (~66k parameters: checkpoints of ~0.8 MB),
    AdamW with real state, a cosine schedule and a one-process CPU accelerator."""

    def __init__(self, seed: int = 0) -> None:
        from accelerate import Accelerator

        from sam_medft.models.registry import build_tiny
        from sam_medft.training.schedules import build_scheduler

        torch.manual_seed(seed)
        self.model = build_tiny(2)
        self.model.requires_grad_(False)
        self.model.mask_decoder.upscale_conv1.requires_grad_(True)
        self.model.mask_decoder.mask_tokens.requires_grad_(True)
        with torch.no_grad():
            for p in self.trainable().values():
                p.normal_()
        self.opt = torch.optim.AdamW(list(self.trainable().values()), lr=1e-2)
        self.sched = build_scheduler(self.opt, warmup=1, total=20, kind="cosine")
        self.acc = Accelerator(cpu=True)

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def step(self) -> None:
        sum((p.float() ** 2).mean() for p in self.trainable().values()).backward()
        self.opt.step()
        self.opt.zero_grad()
        self.sched.step()

    def save(self, root: Path, step: int, keep_last: int = 3) -> Path:
        return save_checkpoint(self.acc, root, step, self.model, self.opt, self.sched,
                               {"epoch": 0, "batches_in_epoch": step}, keep_last=keep_last)


@pytest.fixture
def two_checkpoints(tmp_path):
    """checkpoints/ with checkpoint-00000002 and checkpoint-00000004 (different weights)."""
    w = World()
    root = tmp_path / "checkpoints"
    w.step(), w.step()
    w.save(root, 2)
    w.step(), w.step()
    w.save(root, 4)
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated weights": lambda c: truncate(c / "trainable.safetensors"),
    "garbled weights header": lambda c: (c / "trainable.safetensors").write_bytes(b"\xff" * 64),
    "no optimizer file": lambda c: (c / "optimizer.pt").unlink(),
    "truncated optimizer": lambda c: truncate(c / "optimizer.pt"),
    "truncated scheduler": lambda c: truncate(c / "scheduler.pt"),
    "bad trainer_state.json": lambda c: (c / "trainer_state.json").write_text('{"step": 4, "ep'),
    "no trainer_state.json": lambda c: (c / "trainer_state.json").unlink(),
}
REASON = {
    "truncated weights": "trainable.safetensors is damaged",
    "garbled weights header": "trainable.safetensors is damaged",
    "no optimizer file": "the optimizer state (optimizer.pt) is missing",
    "truncated optimizer": "optimizer.pt is damaged",
    "truncated scheduler": "scheduler.pt is damaged",
    "bad trainer_state.json": "trainer_state.json is unreadable",
    "no trainer_state.json": "trainer_state.json is missing",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_skips_a_damaged_newest_checkpoint(two_checkpoints, damage, caplog):
    root = two_checkpoints
    newest = root / "checkpoint-00000004"
    DAMAGE[damage](newest)
    damaged, previous = digest(newest), digest(root / "checkpoint-00000002")

    w = World(seed=1)  # other weights, empty optimizer: everything must come from the file
    with caplog.at_level(logging.WARNING, logger="sam_medft"):
        used, state = resume_checkpoint(w.acc, root, w.model, w.opt, w.sched)
    assert used == root / "checkpoint-00000002" and state["step"] == 2
    assert f"--resume: skipping {newest}: {REASON[damage]}" in caplog.text
    saved = load_file(str(used / "trainable.safetensors"))
    assert all(torch.equal(saved[n], p) for n, p in w.trainable().items())
    assert w.sched.last_epoch == 2 and len(w.opt.state) == len(saved)
    # the damaged one is kept, unchanged, out of the way of rotation and of the next save
    (kept,) = root.glob(f"{CORRUPT_PREFIX}checkpoint-00000004-*")
    assert digest(kept) == damaged and f"is kept as {kept}" in caplog.text
    assert digest(used) == previous


def test_resume_without_a_whole_checkpoint_is_one_error(two_checkpoints):
    root = two_checkpoints
    truncate(root / "checkpoint-00000004" / "trainable.safetensors")
    (root / "checkpoint-00000002" / "optimizer.pt").unlink()
    before = digest(root)
    w = World(seed=1)
    with pytest.raises(SamMedftError) as err:
        resume_checkpoint(w.acc, root, w.model, w.opt, w.sched)
    msg = str(err.value)
    assert msg.startswith(f"--resume: no usable checkpoint in {root} (checkpoint-00000004: "
                          f"trainable.safetensors is damaged")
    assert "checkpoint-00000002: the optimizer state (optimizer.pt) is missing" in msg
    assert "start the run again with --overwrite" in msg
    assert digest(root) == before  # nothing renamed or removed


def enospc_after_half(real):
    """A writer that writes half of the file, then finds the disk full."""

    def write(obj, path, *a, **k):
        real(obj, path, *a, **k)
        truncate(Path(path))
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return write


@pytest.mark.parametrize("writer", ["save_file", "torch.save"])
def test_disk_full_while_writing_a_checkpoint(two_checkpoints, writer, monkeypatch):
    root = two_checkpoints
    before = digest(root)
    if writer == "save_file":
        monkeypatch.setattr(ckpt_mod, "save_file", enospc_after_half(ckpt_mod.save_file))
    else:
        monkeypatch.setattr(ckpt_mod.torch, "save", enospc_after_half(torch.save))
    w = World()
    with pytest.raises(SamMedftError) as err:
        w.save(root, 6)
    msg = str(err.value)
    assert f"no space left on the disk of {root / '.tmp-checkpoint-00000006'}" in msg
    assert "while writing checkpoint checkpoint-00000006: free space there" in msg
    assert "continue with the same command plus --resume" in msg
    assert digest(root) == before  # no temporary folder, earlier checkpoints as they were


def test_a_real_full_disk_while_writing_a_checkpoint(tmp_path):
    with small_tmpfs(tmp_path / "disk", "1200k") as disk:
        root = disk / "checkpoints"
        w = World()
        w.step()
        w.save(root, 2)  # ~0.8 MB: fits once, not twice
        before = digest(root)
        w.step()
        with pytest.raises(SamMedftError) as err:
            w.save(root, 4)
        assert "no space left on the disk of" in str(err.value)
        assert "while writing checkpoint checkpoint-00000004" in str(err.value)
        assert digest(root) == before


def test_a_read_only_checkpoints_folder(two_checkpoints):
    root = two_checkpoints
    before = digest(root)
    with read_only(root):
        with pytest.raises(SamMedftError) as err:
            World().save(root, 6)
    assert f"cannot write checkpoint checkpoint-00000006 to {root / '.tmp-checkpoint-00000006'}" \
        in str(err.value)
    assert "choose a writable output_dir" in str(err.value)
    assert digest(root) == before


# ---- the adapter -------------------------------------------------------------------------------


def save(w: World, out: Path) -> Path:
    from sam_medft.adapters.artifact import save_adapter
    from sam_medft.runs import AdapterMeta

    meta = AdapterMeta(base_model="tiny", num_classes=2, class_names=["background", "organ"],
                       method="vanilla", scope="decoder", normalization="sam", input_size=256,
                       mask_size=64)
    return save_adapter(w.model, meta, out)


def test_disk_full_while_saving_the_adapter(tmp_path, monkeypatch):
    from sam_medft.adapters import artifact

    w = World()
    save(w, tmp_path / "run" / "adapter")
    before = digest(tmp_path)
    monkeypatch.setattr(artifact, "save_file", enospc_after_half(artifact.save_file))
    w.step()
    with pytest.raises(SamMedftError) as err:
        save(w, tmp_path / "run" / "adapter")
    assert "no space left on the disk of" in str(err.value)
    assert f"while writing the adapter {tmp_path / 'run' / 'adapter'}" in str(err.value)
    assert digest(tmp_path) == before  # the earlier adapter as it was, no .adapter.tmp-*


def test_a_real_full_disk_while_saving_the_adapter(tmp_path):
    with small_tmpfs(tmp_path / "disk", "400k") as disk:
        w = World()
        save(w, disk / "adapter")  # ~0.27 MB: fits once, not twice
        before = digest(disk)
        w.step()
        with pytest.raises(SamMedftError, match="no space left on the disk of"):
            save(w, disk / "adapter")
        assert digest(disk) == before


def test_a_read_only_run_folder_while_saving_the_adapter(tmp_path):
    w = World()
    save(w, tmp_path / "run" / "adapter")
    before = digest(tmp_path)
    with read_only(tmp_path / "run"):
        with pytest.raises(SamMedftError) as err:
            save(w, tmp_path / "run" / "adapter")
    assert f"cannot write the adapter {tmp_path / 'run' / 'adapter'} to" in str(err.value)
    assert digest(tmp_path) == before


# ---- the same through the trainer ------------------------------------------------------------


@pytest.mark.slow
def test_training_full_disk_then_resume_then_damaged_newest_then_resume(tmp_path, monkeypatch,
                                                                       caplog):
    """The user's path: the disk fills at the second checkpoint (message, lock released, the
    first checkpoint intact); --resume continues; later the newest checkpoint is damaged and
    --resume takes the one before, keeping the damaged one."""
    from sam_medft.config import load_recipe
    from sam_medft.training.trainer import train

    args = ["data.synthetic.n_train=8", "data.synthetic.n_val=2", "data.synthetic.n_test=1",
            "data.synthetic.size=64", "train.log_with=none", "train.batch_size=4",
            "peft.method=lora", "peft.scope=decoder", "augment.enabled=false",
            "train.save_every=2", "train.eval_every=1000", f"output_dir={tmp_path}", "name=r"]
    run = tmp_path / "r"
    calls = []
    real = ckpt_mod.save_file

    def second_fails(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", second_fails)
    with pytest.raises(SamMedftError, match="no space left on the disk.*checkpoint-00000004"):
        train(load_recipe(REPO / "recipes" / "demo.yaml", [*args, "train.max_steps=6"]))
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-00000002"]
    assert not (run / ".sam_medft_lock").exists()

    result = train(load_recipe(REPO / "recipes" / "demo.yaml", [*args, "train.max_steps=6"]),
                   resume=True)
    assert result.steps == 6
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-00000004", "checkpoint-00000006"]

    truncate(ckpts / "checkpoint-00000006" / "trainable.safetensors")
    damaged = digest(ckpts / "checkpoint-00000006")
    with caplog.at_level(logging.WARNING, logger="sam_medft"):
        result = train(load_recipe(REPO / "recipes" / "demo.yaml", [*args, "train.max_steps=8"]),
                       resume=True)
    assert result.steps == 8
    log = (run / "logs" / "train.log").read_text()
    assert f"skipping {ckpts / 'checkpoint-00000006'}: trainable.safetensors is damaged" in log
    assert f"resumed from {ckpts / 'checkpoint-00000004'} (step 4)" in log
    (kept,) = ckpts.glob(f"{CORRUPT_PREFIX}checkpoint-00000006-*")
    assert digest(kept) == damaged
    assert json.loads((ckpts / "checkpoint-00000008" / "trainer_state.json").read_text())["step"] == 8
