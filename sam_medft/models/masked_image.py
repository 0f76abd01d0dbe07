"""SimMIM-style masked image modelling on the SAM image encoder (Setup 3's pretraining).

SAM's ViT mixes windowed and global attention over the full patch grid (64 x 64 at 1024 px),
so masked patches cannot be dropped as MAE does: their patch embeddings are replaced by one
learned mask token (a hook on the patch embedding, so the encoder's own forward, its fast
attention and any PEFT wrapping run unchanged), and a light decoder (a 1x1 convolution on
the neck's output + pixel shuffle, as SimMIM) predicts the pixels of every patch.

MobileSAM's TinyViT embeds patches as a channels-first map at 1/4 resolution (its first stage
is convolutional): there the token replaces every position of a masked 16 px square, as
SimMIM does for its convolutional-stem encoders.
"""

from __future__ import annotations

import torch
from torch import nn

from sam_medft.models.tiny_vit import TinyViTEncoder


class MaskedImageModel(nn.Module):
    """`vision_encoder` (a SamVisionEncoder) + mask token + pixel decoder.

    forward(pixel_values (B,3,S,S), mask (B,G,G) bool on the patch grid) -> (B,3,S,S)."""

    def __init__(self, vision_encoder: nn.Module):
        super().__init__()
        self.vision_encoder = vision_encoder
        cfg = vision_encoder.config
        self.patch_size = cfg.patch_size
        self.grid = cfg.image_size // cfg.patch_size
        # SAM's ViT: (B,G,G,C) patch embeddings; TinyViT: a (B,C,S/4,S/4) feature map
        self.channels_first = isinstance(vision_encoder, TinyViTEncoder)
        width = cfg.embed_dims[0] if self.channels_first else cfg.hidden_size
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        out = cfg.output_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(out, self.patch_size**2 * cfg.num_channels, kernel_size=1),
            nn.PixelShuffle(self.patch_size))
        self._mask: torch.Tensor | None = None
        vision_encoder.patch_embed.register_forward_hook(self._replace_masked)

    @property
    def config(self):
        return self.vision_encoder.config

    def _replace_masked(self, module, args, hidden: torch.Tensor) -> torch.Tensor | None:
        """Patch embeddings -> the masked ones replaced by the mask token."""
        if self._mask is None:
            return None
        m = self._mask.to(hidden.device, hidden.dtype)
        token = self.mask_token.to(hidden.dtype)
        if self.channels_first:  # each patch-grid cell covers a square of the feature map
            f = hidden.shape[-1] // self.grid
            m = m.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)[:, None]
            token = token[None, :, None, None]
        else:
            m = m[..., None]
        return hidden * (1 - m) + token * m

    def forward(self, pixel_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"mask grid {tuple(mask.shape[-2:])} != patch grid {self.grid}")
        self._mask = mask
        try:
            features = self.vision_encoder(pixel_values).last_hidden_state  # (B,256,G,G)
        finally:
            self._mask = None
        return self.decoder(features)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's tensors under SamModel's names (`vision_encoder.*`), on the CPU."""
        return {f"vision_encoder.{k}": v.detach().cpu().contiguous()
                for k, v in self.vision_encoder.state_dict().items()}
