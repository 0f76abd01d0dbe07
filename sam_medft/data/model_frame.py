"""uint8 model-frame batches -> what the model trains on: normalised pixels and int64 labels.

The pixels are made by the one normalisation every route uses (`transforms.normalize_batch`
of `transforms.preprocess_image`'s uint8 images; prediction: `sam_medft.infer.pipeline`).

The data loader hands over uint8 images and compact class masks (a quarter of the bytes of
float pixels and int64 labels). `finish_batch` normalises, augments and makes the low-res
labels for a whole batch at once, on whatever device the batch is on: the GPU in training
(augmentation costs the CPU nothing and the transfer is 4x smaller), or the CPU in a loader
worker (prompt modes, which simulate prompts from the augmented mask, and CPU runs).

The per-sample facts that steer these steps (the un-padded window, the augmentation
parameters, the embedding-cache keys) travel in `HostMeta`, which accelerate does not move
to the device: every decision is taken on the host, and the GPU work is queued without a
host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam_medft.config import AugmentConfig
from sam_medft.data.augment import apply_augment
from sam_medft.data.preprocessed import lowres_from_input, stored_to_labels
from sam_medft.data.transforms import SamGeometry, normalize_batch, valid_window

UINT8_KEYS = ("image_u8", "mask_input", "mask_lowres")
__all__ = ["UINT8_KEYS", "HostMeta", "finish_batch", "normalize_batch", "valid_window"]


@dataclass
class HostMeta:
    """CPU-side facts of a uint8 batch (not a Mapping and no `.to`: stays on the host)."""

    resized: torch.Tensor  # (B, 2) int: the un-padded (h, w) at the input size
    pad: int  # padding value of the stored masks
    augment: dict[str, torch.Tensor] | None = None  # (B,) parameters from draw_params
    keys: list[str] | None = None  # embedding-cache keys of the uint8 images

    @staticmethod
    def collate(metas: list[HostMeta]) -> HostMeta:
        augment = None
        if metas[0].augment is not None:
            augment = {k: torch.cat([m.augment[k] for m in metas]) for k in metas[0].augment}
        keys = None if metas[0].keys is None else [k for m in metas for k in m.keys]
        return HostMeta(torch.cat([m.resized for m in metas]), metas[0].pad, augment, keys)


def finish_batch(batch: dict, geometry: SamGeometry, normalization: str,
                 augment: AugmentConfig | None = None, keep_input_mask: bool = False) -> dict:
    """A uint8 batch (from `collate`) -> the same dict with `pixel_values` (B, 3, S, S) float
    and `labels` (B, M, M) int64; the uint8 entries are dropped. A batch that already has
    `pixel_values` is returned as is. `keep_input_mask`: also `mask_input` (B, S, S) int64,
    augmented like the pixels (prompt simulation needs it)."""
    if "pixel_values" in batch:
        return batch
    out = {k: v for k, v in batch.items() if k not in UINT8_KEYS}
    host: HostMeta = batch["host"]
    images = batch["image_u8"]
    valid = valid_window(host.resized, geometry.input_size, images.device)
    pixels = normalize_batch(images, valid, normalization)
    mask = None
    if augment is not None and augment.enabled and host.augment is not None:
        mask = stored_to_labels(batch["mask_input"], host.pad)
        pixels, mask = apply_augment(pixels, mask, augment, host.augment, valid_hw=host.resized)
    elif keep_input_mask:
        mask = stored_to_labels(batch["mask_input"], host.pad)
    if mask is None:  # un-augmented: the low-res labels made from the original mask
        out["labels"] = stored_to_labels(batch["mask_lowres"], host.pad)
    else:  # labels (and prompts) follow the input-size mask
        out["labels"] = lowres_from_input(mask, geometry.mask_size)
        if keep_input_mask:
            out["mask_input"] = mask
    out["pixel_values"] = pixels
    return out
