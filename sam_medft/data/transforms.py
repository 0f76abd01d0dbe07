"""SAM's image geometry and intensity normalisation, in one place.

SAM was trained on images whose longest side was resized to the input size (1024) and then
padded bottom/right to a square; its masks live on a low-res grid (256 = 4x the embedding
grid). Everything that moves between the original image frame and the model frame (images,
masks, prompt coordinates, predicted logits) goes through `SamGeometry`, so training,
prompts and prediction agree to the pixel.

Every image reaches a model by the same two steps, whichever route it takes (training,
validation, eval, prediction): `preprocess_image` (resize, round to uint8, pad: what the
training store keeps) and `normalize_batch` (uint8 -> normalised floats, on any device).
One path, so a pixel is never rounded in training and not in prediction (no skew).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

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
    def image_to_model(self, image: np.ndarray | torch.Tensor
                       ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """HxWx3 (or 3xHxW tensor) in [0, 255] -> 3 x h x w float resized (bilinear,
        antialiased, not padded), the original and the resized size: the resize step of
        `preprocess_image`, which is what callers want."""
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


class ModelImage(NamedTuple):
    """An image in the model frame, as every route hands it to the model."""

    pixels: torch.Tensor  # (3, S, S) uint8, zero-padded bottom/right
    original: tuple[int, int]  # (H, W) of the image as given
    resized: tuple[int, int]  # (h, w) of the un-padded window at the input size


def preprocess_image(image: np.ndarray | torch.Tensor, geometry: SamGeometry) -> ModelImage:
    """The one preprocessing of an image in [0, 255] (HxWx3, HxW or a 3xHxW tensor):
    longest side resized to the input size, rounded to uint8, zero-padded to a square.

    uint8 at the input size is what training keeps per image (a quarter of the bytes of
    floats), so every other route rounds at the same place (at most half a grey level from
    the float resize; SAM's own processor also resizes uint8 images)."""
    pixels, original, resized = geometry.image_to_model(image)
    pixels = pixels.round_().clamp_(0, 255).to(torch.uint8)
    return ModelImage(geometry.pad(pixels, geometry.input_size), tuple(original), tuple(resized))


def valid_window(resized: torch.Tensor, size: int, device) -> torch.Tensor:
    """(B, 1, S, S) bool: True inside each image's un-padded window."""
    r = resized.to(device, non_blocking=True)
    idx = torch.arange(size, device=device)
    rows = idx[None, :, None] < r[:, 0, None, None]
    cols = idx[None, None, :] < r[:, 1, None, None]
    return (rows & cols)[:, None]


def normalize_batch(images_u8: torch.Tensor, valid: torch.Tensor, preset: str) -> torch.Tensor:
    """The one normalisation: (B, 3, S, S) uint8 from `preprocess_image` -> float,
    normalised inside the window (`valid_window`) and zero in the padding (segment-anything
    pads after normalising), on whatever device the batch is on.

    `sam`: ImageNet mean/std, what facebook/sam-* were trained with.
    `medsam`: per-image min-max of the window to [0, 1], what the original MedSAM used.
    """
    x = images_u8.float()
    if preset == "sam":
        # built on the host, copied without blocking (torch.tensor(..., device=cuda) would
        # wait for the queued training step)
        mean = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255).to(x.device, non_blocking=True)
        std = (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).to(x.device, non_blocking=True)
        x = (x - mean) / std
    elif preset == "medsam":
        v = valid.expand_as(x)
        lo = x.masked_fill(~v, float("inf")).amin((1, 2, 3), keepdim=True)
        hi = x.masked_fill(~v, float("-inf")).amax((1, 2, 3), keepdim=True)
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    else:
        raise ValueError(f"unknown normalisation preset {preset!r}; use 'sam' or 'medsam'")
    return x.masked_fill(~valid, 0.0)


def to_model_input(image: np.ndarray | torch.Tensor, geometry: SamGeometry,
                   preset: Normalization) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """One image through the one path (`preprocess_image`, then `normalize_batch`) -> the
    normalised, padded 3xSxS float tensor, the original and the resized size."""
    m = preprocess_image(image, geometry)
    valid = valid_window(torch.tensor([m.resized]), geometry.input_size, m.pixels.device)
    return normalize_batch(m.pixels[None], valid, preset)[0], m.original, m.resized


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
