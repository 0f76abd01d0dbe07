"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG, step, data position.

Only the trainable tensors are written (the frozen base would be 0.4-2.5 GB per checkpoint
for ViT-B..H). A checkpoint is written into a temporary folder and renamed into place, so a
kill at any moment leaves either the previous checkpoints or the new one, never half of
one. Every rank writes its own RNG state; the main process writes the rest and renames.
A full disk or an unwritable folder stops the run with one message (the temporary folder
removed, earlier checkpoints untouched); `--resume` skips a damaged newest checkpoint for
the one before, and keeps the damaged one (renamed `corrupt-checkpoint-*`) for the user.

Under FSDP2 the parameters and optimizer state are sharded DTensors: every rank takes part
in gathering full tensors (torch.distributed.checkpoint's state-dict API), the main process
writes them, and on resume every rank reads the full tensors and keeps its own shard. The
files are the same as for one process, so a run can resume under another launch mode.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from sam_medft.errors import SamMedftError
from sam_medft.files import apply_umask_modes, disk_error
from sam_medft.models.loading import trainable_tensors
from sam_medft.runs import CHECKPOINT_PREFIX, checkpoint_folders

log = logging.getLogger("sam_medft.training")

CORRUPT_PREFIX = "corrupt-"
# what reading a damaged checkpoint raises (truncated zip/safetensors, bad JSON or pickle)
# what a failed write raises: OSError, or a library's wrapper of it (files.os_error_of)
_WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
_READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError,
                pickle.UnpicklingError, SafetensorError, zipfile.BadZipFile)
# per-parameter-id (torch) or per-name (torch.distributed.checkpoint, sharded runs)
OPTIM_FILE = {False: "optimizer.pt", True: "optimizer_by_name.pt"}


def is_sharded(model: torch.nn.Module) -> bool:
    """True when parameters are DTensors (FSDP2): saving and loading are then collectives."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_trainable(model: torch.nn.Module, is_main: bool) -> dict[str, torch.Tensor]:
    """Full trainable tensors (on CPU) on the main process; {} elsewhere. Under FSDP2 every
    rank must call it (all-gather)."""
    if not is_sharded(model):
        return trainable_tensors(model) if is_main else {}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_full_options(cpu_offload=True,
                                                           ignore_frozen_params=True))
    return trainable_tensors(model, sd) if is_main else {}


def _optimizer_state(model, optimizer, is_main: bool) -> dict | None:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    if not is_sharded(model):
        return inner.state_dict() if is_main else None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, inner, options=_full_options(cpu_offload=True))
    return sd if is_main else None


def save_checkpoint(accelerator, ckpt_root: Path, step: int, model: torch.nn.Module,
                    optimizer, scheduler, state: dict, keep_last: int) -> Path:
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = ckpt_root / f".tmp-{CHECKPOINT_PREFIX}{step:08d}"
    main = accelerator.is_main_process
    failed: Exception | None = None
    if main:
        for stale in ckpt_root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            failed = e
    _agree_written(accelerator, failed, tmp, final)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    try:
        torch.save(rng, tmp / f"rng_{accelerator.process_index}.pt")
    except _WRITE_ERRORS as e:
        failed = e
    inner = accelerator.unwrap_model(model)
    tensors = gather_trainable(inner, main)  # collectives under FSDP2: every rank, always
    optim_state = _optimizer_state(inner, optimizer, main)
    if main and failed is None:
        try:
            save_file(tensors, str(tmp / "trainable.safetensors"))
            torch.save(optim_state, tmp / OPTIM_FILE[is_sharded(inner)])
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(dict(state, step=step), indent=2))
            apply_umask_modes(tmp)  # safetensors writes 0600 files
        except _WRITE_ERRORS as e:
            failed = e
    _agree_written(accelerator, failed, tmp, final)
    if main:
        try:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as e:
            failed = e
    _agree_written(accelerator, failed, tmp, final)
    if main:
        for old in list_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _agree_written(accelerator, failed: Exception | None, tmp: Path, final: Path) -> None:
    """Every rank learns whether any rank failed to write (one scalar all-reduce where a
    barrier stood), so all stop together with the main process's message, not a hang."""
    if accelerator.num_processes > 1:
        flag = torch.tensor([0.0 if failed is None else 1.0], device=accelerator.device)
        anyone = accelerator.reduce(flag, reduction="sum").item() > 0
    else:
        anyone = failed is not None
    if not anyone:
        return
    friendly = None if failed is None else disk_error(
        failed, tmp, f"checkpoint {final.name}",
        after="then continue with the same command plus --resume (the checkpoints before it "
              "are unchanged)")  # asked before the clean-up: a probe may need the full disk
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed is None:
        raise SamMedftError(f"checkpoint {final} could not be written by another process; see "
                            f"its message")
    if friendly is None:
        raise failed
    raise friendly from failed


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """The checkpoints with their trainer state, oldest first (rotation keeps the last N)."""
    return [p for p in checkpoint_folders(ckpt_root) if (p / "trainer_state.json").is_file()]


def checkpoint_problem(ckpt: Path, num_processes: int = 1) -> str | None:
    """Why `ckpt` cannot be resumed (None: it looks whole). Cheap: JSON, the safetensors
    header against the file size, the zip directories of the torch files; the same answer
    on every rank (all ranks' RNG files are checked)."""
    ckpt = Path(ckpt)
    state_file = ckpt / "trainer_state.json"
    if not state_file.is_file():
        return "trainer_state.json is missing"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"trainer_state.json is unreadable ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "trainer_state.json has no step"
    weights = ckpt / "trainable.safetensors"
    if not weights.is_file():
        return "trainable.safetensors is missing"
    try:
        with safe_open(str(weights), "pt"):
            pass
    except (OSError, SafetensorError) as e:
        return f"trainable.safetensors is damaged ({e})"
    optim = [ckpt / f for f in OPTIM_FILE.values() if (ckpt / f).is_file()]
    if not optim:
        return f"the optimizer state ({OPTIM_FILE[False]}) is missing"
    files = [*optim, ckpt / "scheduler.pt"]
    files += [ckpt / f"rng_{i}.pt" for i in range(num_processes) if (ckpt / f"rng_{i}.pt").exists()]
    for f in files:
        if not f.is_file():
            return f"{f.name} is missing"
        try:
            with zipfile.ZipFile(f) as z:
                z.namelist()
        except (OSError, zipfile.BadZipFile) as e:
            return f"{f.name} is damaged ({e})"
    return None


def resume_checkpoint(accelerator, ckpt_root: Path, model: torch.nn.Module, optimizer,
                      scheduler) -> tuple[Path, dict]:
    """Load the newest checkpoint that reads back whole; the damaged newer ones are skipped
    with a warning and renamed `corrupt-checkpoint-*` (kept for the user, never reused or
    rotated away). None whole: one error listing each and why."""
    skipped: list[tuple[Path, str]] = []
    for ckpt in reversed(checkpoint_folders(ckpt_root)):
        problem = checkpoint_problem(ckpt, accelerator.num_processes)
        if problem is None:
            try:
                state = load_checkpoint(accelerator, ckpt, model, optimizer, scheduler)
            except SamMedftError:
                raise  # the recipe does not fit the run: no other checkpoint would either
            except _READ_ERRORS as e:
                problem = f"it does not read back ({type(e).__name__}: {str(e)[:200]})"
        if accelerator.num_processes > 1:
            flag = torch.tensor([0.0 if problem is None else 1.0], device=accelerator.device)
            if accelerator.reduce(flag, reduction="sum").item() > 0 and problem is None:
                problem = "another process could not read it back"
        if problem is None:
            _set_aside(accelerator, skipped)
            return ckpt, state
        log.warning("--resume: skipping %s: %s; trying the checkpoint before it", ckpt, problem)
        skipped.append((ckpt, problem))
    reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped) or "none found"
    raise SamMedftError(
        f"--resume: no usable checkpoint in {ckpt_root} ({reasons}). They are left as they are; "
        f"start the run again with --overwrite instead of --resume")


def _set_aside(accelerator, skipped: list[tuple[Path, str]]) -> None:
    """Rename skipped checkpoints out of the way: the resumed run would otherwise overwrite
    them when it reaches their step, or rotate them away."""
    if not accelerator.is_main_process:
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for ckpt, problem in skipped:
        kept = ckpt.with_name(f"{CORRUPT_PREFIX}{ckpt.name}-{stamp}")
        try:
            os.replace(ckpt, kept)
            log.warning("--resume: the skipped %s (%s) is kept as %s", ckpt.name, problem, kept)
        except OSError as e:
            log.warning("--resume: could not rename the skipped %s aside (%s)", ckpt, e)


def load_checkpoint(accelerator, ckpt: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the trainer state."""
    ckpt = Path(ckpt)
    tensors = load_file(str(ckpt / "trainable.safetensors"))
    inner = accelerator.unwrap_model(model)
    expected = {n for n, p in inner.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise SamMedftError(f"checkpoint {ckpt} does not match this recipe's trainable parameters "
                            f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the "
                            f"recipe.yaml saved in the run folder")
    _load_tensors(inner, tensors)
    _load_optimizer(inner, optimizer, ckpt)
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_file = ckpt / f"rng_{accelerator.process_index}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)  # our own file: python/numpy RNG tuples
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "trainer_state.json").read_text())


def _load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, tensors, options=_full_options(strict=False))
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def _load_optimizer(model: torch.nn.Module, optimizer, ckpt: Path) -> None:
    inner = getattr(optimizer, "optimizer", optimizer)
    sharded = is_sharded(model)
    path = ckpt / OPTIM_FILE[sharded]
    if not path.is_file():
        other = ckpt / OPTIM_FILE[not sharded]
        if not other.is_file():
            raise SamMedftError(f"checkpoint {ckpt} has no optimizer state ({path.name}); it is "
                                f"incomplete: delete it to resume from the one before")
        if sharded:
            raise SamMedftError(f"checkpoint {ckpt} was written without FSDP; resume it with the "
                                f"launch config it was written with (multi_gpu.yaml / one process)")
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state = torch.load(other, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(model, inner, state, options=_full_options())
        return
    state = torch.load(path, map_location="cpu", weights_only=True)
    if sharded:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, inner, state, options=_full_options())
    else:
        inner.load_state_dict(state)
