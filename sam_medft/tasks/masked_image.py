"""Masked image modelling (Setup 3's self-supervised step) as a task of the one trainer.

A batch's masks are drawn here (SimMIM: `mask_ratio` of the `mask_patch_size` squares), the
model reconstructs the pixels, and the loss is the L1 error on the masked pixels only, in
the normalised pixel space the fine-tuning sees. Labels are never read.
"""

from __future__ import annotations

import torch

from sam_medft.config import PretrainConfig
from sam_medft.errors import SamMedftError
from sam_medft.tasks.base import Outputs, Task


def random_patch_masks(batch: int, grid: int, patch: int, cfg: PretrainConfig, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, grid, grid) bool: `mask_ratio` of the mask squares (`mask_patch_size` pixels =
    `scale` model patches a side) set, the same count in every image."""
    scale = cfg.mask_patch_size // patch
    cells = grid // scale
    n = cells * cells
    k = max(1, round(cfg.mask_ratio * n))
    order = torch.rand(batch, n, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    mask = mask.view(batch, cells, cells)
    return mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def check_mask_geometry(cfg: PretrainConfig, patch: int, image_size: int) -> None:
    """A mask square that does not tile the model's patch grid fails before training."""
    size = cfg.mask_patch_size
    if size % patch or image_size % size:
        raise SamMedftError(
            f"pretrain.mask_patch_size={size} must be a multiple of the encoder's patch size "
            f"({patch}) that divides its input size ({image_size}); e.g. "
            f"pretrain.mask_patch_size={2 * patch}")


class MaskedImageTask(Task):
    """forward -> Outputs(logits=reconstruction (B,3,S,S), iou=mask (B,G,G)); loss: L1 on
    the masked pixels."""

    prompted = False

    def __init__(self, cfg: PretrainConfig, *, seed: int | None = None):
        super().__init__()
        self.cfg = cfg
        # validation: a fixed generator, so every validation scores the same masks
        self.seed = seed

    @property
    def mode(self) -> str:
        return "pretrain"

    def mask_outputs(self, num_classes: int) -> int:
        return 1

    def masks_for(self, model, batch: dict) -> torch.Tensor:
        g = getattr(model, "module", model)  # DDP
        gen = None
        if self.seed is not None:
            gen = torch.Generator().manual_seed(self.seed + 7919 * int(batch["index"][0]))
        return random_patch_masks(batch["pixel_values"].shape[0], g.grid, g.patch_size,
                                  self.cfg, generator=gen)

    def forward(self, model, batch, *, frozen_encoder=False, embeddings=None) -> Outputs:
        mask = self.masks_for(model, batch).to(batch["pixel_values"].device)
        return Outputs(model(batch["pixel_values"], mask), mask)

    def loss(self, outputs: Outputs, batch: dict) -> torch.Tensor:
        err, count = self.masked_error(outputs, batch)
        return err.sum() / count.sum().clamp(min=1)

    def masked_error(self, outputs: Outputs, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: the summed L1 error over masked pixels, and their count (x channels)."""
        target = batch["pixel_values"].float()
        recon, mask = outputs.logits.float(), outputs.iou
        scale = target.shape[-1] // mask.shape[-1]
        pixel_mask = mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        pixel_mask = pixel_mask[:, None].to(target.dtype)
        err = ((recon - target).abs() * pixel_mask).flatten(1).sum(1)
        return err, pixel_mask.flatten(1).sum(1) * target.shape[1]

    def score(self, outputs: Outputs, batch: dict) -> torch.Tensor:
        err, count = self.masked_error(outputs, batch)
        return torch.stack([err, count], dim=1)

    def summarize(self, counts: torch.Tensor) -> dict:
        err, count = counts.double().sum(0)
        return {"recon_loss": float(err / count.clamp(min=1)), "n_images": int(counts.shape[0])}

    def check_prediction(self, has_prompts: bool) -> None:
        raise SamMedftError("a pretraining run has no segmentation head: fine-tune it first "
                            "(model.encoder_weights=runs/<pretrain run>)")
