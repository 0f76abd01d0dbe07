"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG, step, data position.

Only the trainable tensors are written (the frozen base would be 0.4-2.5 GB per checkpoint
for ViT-B..H). A checkpoint is written into a temporary folder and renamed into place, so a
kill at any moment leaves either the previous checkpoints or the new one, never half of
one. Every rank writes its own RNG state; the main process writes the rest and renames.

Under FSDP2 the parameters and optimizer state are sharded DTensors: every rank takes part
in gathering full tensors (torch.distributed.checkpoint's state-dict API), the main process
writes them, and on resume every rank reads the full tensors and keeps its own shard. The
files are the same as for one process, so a run can resume under another launch mode.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sam_medft.errors import SamMedftError

PREFIX = "checkpoint-"
# per-parameter-id (torch) or per-name (torch.distributed.checkpoint, sharded runs)
OPTIM_FILE = {False: "optimizer.pt", True: "optimizer_by_name.pt"}


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


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

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sd = get_model_state_dict(model, options=_full_options(cpu_offload=True,
                                                           ignore_frozen_params=True))
    return {n: sd[n].contiguous() for n in names} if is_main else {}


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
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp = ckpt_root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        for stale in ckpt_root.glob(f".tmp-{PREFIX}*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / f"rng_{accelerator.process_index}.pt")
    inner = accelerator.unwrap_model(model)
    tensors = gather_trainable(inner, accelerator.is_main_process)
    optim_state = _optimizer_state(inner, optimizer, accelerator.is_main_process)
    if accelerator.is_main_process:
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save(optim_state, tmp / OPTIM_FILE[is_sharded(inner)])
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(dict(state, step=step), indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and (p / "trainer_state.json").is_file())


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
