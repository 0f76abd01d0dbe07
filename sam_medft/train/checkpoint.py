"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG, step, data position.

Only the trainable tensors are written (the frozen base would be 0.4-2.5 GB per checkpoint
for ViT-B..H). A checkpoint is written into a temporary folder and renamed into place, so a
kill at any moment leaves either the previous checkpoints or the new one, never half of
one. Every rank writes its own RNG state; the main process writes the rest and renames.
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


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(accelerator, ckpt_root: Path, step: int, model: torch.nn.Module,
                    optimizer, scheduler, state: dict, keep_last: int) -> Path:
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp = ckpt_root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_tensors(accelerator.unwrap_model(model)), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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
    params = dict(inner.named_parameters())
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
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
