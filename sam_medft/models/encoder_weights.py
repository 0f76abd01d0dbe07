"""Image-encoder weights written by `sam-medft pretrain` (Setup 3), and loading them into a
base model before fine-tuning (`model.encoder_weights`).

The encoder is saved as SamModel's own tensor names (`vision_encoder.*`) in one safetensors
file, so a pretrain run's `encoder/` folder, and a converted or downloaded transformers SAM
folder, are read the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sam_medft.errors import SamMedftError
from sam_medft.files import disk_errors, write_text_atomic
from sam_medft.hub import download_encoder, is_hub_id, looks_like_path
from sam_medft.runs import ENCODER_DIR, ENCODER_META
from sam_medft.runs import ENCODER_WEIGHTS as WEIGHTS_FILE

log = logging.getLogger("sam_medft.models")

PREFIX = "vision_encoder."


def save_encoder(tensors: dict[str, torch.Tensor], folder: Path, meta: dict) -> None:
    """Write the encoder tensors and their metadata, each file whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / WEIGHTS_FILE
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    with disk_errors(target, "the pretrained encoder"):
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(target)
        write_text_atomic(folder / ENCODER_META, json.dumps(meta, indent=2))


def encoder_weights_file(path: str | Path) -> Path:
    """A pretrain run folder, its encoder/ folder, a transformers SAM folder, a
    .safetensors file or the Hub id of a pushed pretrain run -> the file holding
    `vision_encoder.*` tensors."""
    p = Path(path).expanduser()
    if not p.exists() and not looks_like_path(str(path)) and is_hub_id(str(path)):
        p = download_encoder(str(path))  # a pushed pretrain run (`sam-medft push`)
    for candidate in (p, p / ENCODER_DIR / WEIGHTS_FILE, p / WEIGHTS_FILE):
        if candidate.is_file():
            return candidate
    raise SamMedftError(
        f"model.encoder_weights={path}: no {WEIGHTS_FILE} in {p} or {p / ENCODER_DIR}; pass the "
        f"run folder `sam-medft pretrain` wrote (runs/<name>), its {ENCODER_DIR}/ folder, or a "
        f"transformers SAM folder (`sam-medft convert` writes one)")


def read_encoder_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The `vision_encoder.*` tensors of `path` (names without the prefix)."""
    file = encoder_weights_file(path)
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise SamMedftError(f"model.encoder_weights: {file} cannot be read as safetensors "
                            f"({e}); re-run `sam-medft pretrain` or re-convert it") from None
    out = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    if not out:
        raise SamMedftError(f"model.encoder_weights: {file} holds no image-encoder tensors "
                            f"({PREFIX}*); it is not a SAM model or pretrained encoder")
    return out


def load_encoder_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Copy the pretrained encoder into `model.vision_encoder` (every tensor, same shapes,
    or one message naming the first difference). -> the number of tensors loaded."""
    tensors = read_encoder_tensors(path)
    own = model.vision_encoder.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = [(k, tuple(tensors[k].shape), tuple(own[k].shape)) for k in own
             if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or wrong:
        what = (f"shape of {wrong[0][0]} is {wrong[0][1]}, the model's {wrong[0][2]}" if wrong
                else f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}")
        raise SamMedftError(
            f"model.encoder_weights={path} does not fit model.name's image encoder ({what}); "
            f"use the model.name the encoder was pretrained from (its {ENCODER_META} says which)")
    model.vision_encoder.load_state_dict(tensors, strict=True)
    log.info("image encoder: %d tensors from %s", len(tensors), encoder_weights_file(path))
    return len(tensors)
