"""SAM's image geometry and intensity normalisation, in one place.

SAM was trained on images whose longest side was resized to the input size (1024) and then
padded bottom/right to a square; its masks live on a low-res grid (256 = 4x the embedding
grid). Everything that moves between the original image frame and the model frame (images,
masks, prompt coordinates, predicted logits) goes through `SamGeometry`, so training,
prompts and prediction agree to the pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from sam_medft.errors import SamMedftError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = -100  # label value of padded low-res pixels: excluded from loss and metrics

Normalization = Literal["sam", "medsam"]


def preprocess_shape(height: int, width: int, longest: int) -> tuple[int, int]:
    """Size after resizing the longest side to `longest` (segment-anything's rounding), at
    least 1 pixel a side: a very thin image (1 x 3000 at 1024) would round to 0 rows there,
    and nothing can be resized to, or cropped back from, an empty grid."""
    if height < 1 or width < 1:
        raise SamMedftError(
            f"an image of {height}x{width} (HxW) pixels has no pixels to segment; give a 2-D "
            "image at least 1x1"
        )
    scale = longest / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@dataclass(frozen=True)
class SamGeometry:
    """Input size of the vision encoder and size of the decoder's low-res mask grid."""

    input_size: int = 1024
    mask_size: int = 256

    def resized_shape(self, original: tuple[int, int]) -> tuple[int, int]:
        return preprocess_shape(original[0], original[1], self.input_size)

    def lowres_shape(self, original: tuple[int, int]) -> tuple[int, int]:
        return preprocess_shape(original[0], original[1], self.mask_size)

    # ---- images -------------------------------------------------------------------------
    def image_to_model(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """HxWx3 (or 3xHxW tensor) in [0, 255] -> 3xSxS float, resized (bilinear) and padded.

        Normalisation is applied separately (`normalize`) so padding stays zero *after*
        normalisation, as in segment-anything.
        """
        t = _as_chw_float(image)
        h, w = t.shape[-2:]
        nh, nw = self.resized_shape((h, w))
        t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=True)[0]
        return t, (h, w), (nh, nw)

    def pad(self, t: torch.Tensor, size: int, value: float = 0.0) -> torch.Tensor:
        h, w = t.shape[-2:]
        return F.pad(t, (0, size - w, 0, size - h), value=value)

    # ---- masks --------------------------------------------------------------------------
    def mask_to_lowres(self, mask: np.ndarray | torch.Tensor) -> torch.Tensor:
        """HxW integer label map -> mask_size x mask_size int64, nearest resize, padded with
        IGNORE_INDEX so the padding never counts in the loss."""
        m = torch.as_tensor(np.asarray(mask), dtype=torch.int64)
        nh, nw = self.lowres_shape(tuple(m.shape))
        m = F.interpolate(m[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0]
        return self.pad(m.long(), self.mask_size, value=IGNORE_INDEX)

    def mask_to_input(self, mask: np.ndarray | torch.Tensor) -> torch.Tensor:
        """HxW label map -> input_size x input_size (nearest), padded with IGNORE_INDEX."""
        m = torch.as_tensor(np.asarray(mask), dtype=torch.int64)
        nh, nw = self.resized_shape(tuple(m.shape))
        m = F.interpolate(m[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0]
        return self.pad(m.long(), self.input_size, value=IGNORE_INDEX)

    # ---- predictions --------------------------------------------------------------------
    def logits_to_original(self, logits: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
        """(..., mask_size, mask_size) low-res logits -> (..., H, W) at the original size.

        Same steps as transformers' `post_process_masks`: upsample to the input size, crop
        the padding away, resize to the original size (bilinear).
        """
        lead = logits.shape[:-2]
        x = logits.reshape(-1, 1, *logits.shape[-2:]).float()
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False)
        nh, nw = self.resized_shape(original)
        x = x[..., :nh, :nw]
        x = F.interpolate(x, size=tuple(original), mode="bilinear", align_corners=False)
        return x.reshape(*lead, *original)

    # ---- prompt coordinates -------------------------------------------------------------
    def coords_to_model(self, coords: np.ndarray | torch.Tensor,
                        original: tuple[int, int]) -> torch.Tensor:
        """(..., 2) x,y (or (..., 4) x0,y0,x1,y1) in original pixels -> the model frame."""
        c = torch.as_tensor(np.asarray(coords), dtype=torch.float32).clone()
        h, w = original
        nh, nw = self.resized_shape(original)
        c[..., 0::2] *= nw / w
        c[..., 1::2] *= nh / h
        return c

    def coords_to_original(self, coords: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
        c = torch.as_tensor(coords, dtype=torch.float32).clone()
        h, w = original
        nh, nw = self.resized_shape(original)
        c[..., 0::2] *= w / nw
        c[..., 1::2] *= h / nh
        return c


def normalize(pixels: torch.Tensor, preset: Normalization) -> torch.Tensor:
    """Normalise a 3xHxW image in [0, 255] (before padding).

    `sam`: ImageNet mean/std, what facebook/sam-* were trained with.
    `medsam`: per-image min-max to [0, 1], what the original MedSAM was trained with.
    """
    if preset == "sam":
        mean = torch.tensor(IMAGENET_MEAN, dtype=pixels.dtype).view(3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, dtype=pixels.dtype).view(3, 1, 1) * 255
        return (pixels - mean) / std
    if preset == "medsam":
        lo, hi = pixels.min(), pixels.max()
        return (pixels - lo) / torch.clamp(hi - lo, min=1e-8)
    raise ValueError(f"unknown normalisation preset {preset!r}; use 'sam' or 'medsam'")


def to_model_input(image: np.ndarray | torch.Tensor, geometry: SamGeometry,
                   preset: Normalization) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Image in [0,255] -> normalised, resized, padded 3xSxS tensor, original and resized sizes."""
    t, original, resized = geometry.image_to_model(image)
    t = normalize(t, preset)
    return geometry.pad(t, geometry.input_size), original, resized


def _as_chw_float(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        t = image.float()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            return t.expand(3, -1, -1) if t.shape[0] == 1 else t
        if t.ndim == 3:
            t = t.permute(2, 0, 1)
        elif t.ndim == 2:
            t = t[None]
        return t.expand(3, -1, -1) if t.shape[0] == 1 else t
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    t = torch.from_numpy(np.ascontiguousarray(a)).float().permute(2, 0, 1)
    return t.expand(3, -1, -1) if t.shape[0] == 1 else t
