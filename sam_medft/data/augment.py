"""Training-only joint augmentation in the model frame, on tensors (CPU or GPU).

Runs after resize + normalisation + padding, so it can run batched on the accelerator and
preprocessed tensors can be cached. The random parameters are drawn per sample on the CPU
(`draw_params`, seeded by sample) and applied to a whole batch on any device
(`apply_augment`): the result does not depend on where or in which batch it runs. Flip, rotation and scale are one affine per sample
(bilinear for the image, nearest for the mask; the study used nearest for images too),
about the centre of the valid (un-padded) window, which stays where it is: padding stays
bottom/right, zero in the image and IGNORE_INDEX in the mask, exactly as at inference.
Intensity changes touch valid pixels only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sam_medft.config import AugmentConfig
from sam_medft.data.transforms import IGNORE_INDEX


def augment_sample(
    image: torch.Tensor, mask: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """image [3,S,S] (normalised, zero padding), mask [Sm,Sm] long (class ids, IGNORE_INDEX
    in the padding; Sm may differ from S, e.g. the low-res grid) -> both augmented."""
    img, m = augment_batch(image[None], mask[None], cfg, generator)
    return img[0], m[0]


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """images [B,3,S,S], masks [B,Sm,Sm] -> augmented, with per-sample random parameters.
    Deterministic given the generator's state; identity when cfg.enabled is False."""
    if not cfg.enabled:
        return images, masks
    return apply_augment(images, masks, cfg, draw_params(cfg, images.shape[0], generator))


def draw_params(cfg: AugmentConfig, b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """All random parameters of `b` samples at once, on the generator's device (the stream
    never depends on branches taken). The data loader draws them per sample from a
    (seed, epoch, index) generator, so a batch augmented later on the GPU gets exactly the
    parameters the worker would have used."""

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=g, device=g.device)

    rot = math.radians(cfg.rotate_degrees)
    return {
        "apply": u(0, 1) < cfg.p,
        "hflip": u(0, 1) < cfg.hflip,
        "vflip": u(0, 1) < cfg.vflip,
        "angle": u(-rot, rot),
        "scale": u(*cfg.scale),
        "gamma": torch.exp(u(-cfg.gamma, cfg.gamma)),
        "contrast": 1 + u(-cfg.contrast, cfg.contrast),
        "brightness": u(-cfg.brightness, cfg.brightness),
    }


def apply_augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    cfg: AugmentConfig,
    params: dict[str, torch.Tensor],
    valid_hw: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmentation that `params` ([B] tensors from `draw_params`) describe, batched, on
    the images' device. `valid_hw` ([B, 2], on the CPU): the un-padded window of each mask,
    when known; with it and CPU `params`, nothing here waits for the GPU (no host sync)."""
    host = {k: v.cpu() for k, v in params.items()}  # decisions are made on the host
    if valid_hw is None:
        hm, wm = (t.cpu() for t in _valid_window(masks))
    else:
        hm, wm = valid_hw[:, 0].cpu().long(), valid_hw[:, 1].cpu().long()
    s, sm = images.shape[-1], masks.shape[-1]
    hi = torch.round(hm * s / sm).long()
    wi = torch.round(wm * s / sm).long()

    spatial = host["apply"] & (hm > 0) & (wm > 0)
    pure_flip = spatial & (host["angle"] == 0) & (host["scale"] == 1)
    warp = torch.nonzero(spatial & ~pure_flip).flatten()
    dev = images.device
    if len(warp) == len(images):  # the common case: warp the whole batch, no copies
        images, masks = _warp_pair(images, masks, *_on(dev, _linear(host, warp), hi, wi, hm, wm))
    elif spatial.any():
        images, masks = images.clone(), masks.clone()
        for k in torch.nonzero(pure_flip).flatten().tolist():  # exact, no resampling
            dims = [d for d, on in ((-1, host["hflip"][k]), (-2, host["vflip"][k])) if on]
            if dims:
                h, w, mh, mw = int(hi[k]), int(wi[k]), int(hm[k]), int(wm[k])
                images[k, :, :h, :w] = images[k, :, :h, :w].flip(dims)
                masks[k, :mh, :mw] = masks[k, :mh, :mw].flip(dims)
        if len(warp):
            (w_dev,) = _on(dev, warp)
            images[w_dev], masks[w_dev] = _warp_pair(
                images[w_dev], masks[w_dev],
                *_on(dev, _linear(host, warp), hi[warp], wi[warp], hm[warp], wm[warp]))
    valid = masks != IGNORE_INDEX
    if sm != s:
        valid = F.interpolate(valid[:, None].float(), size=(s, s), mode="nearest")[:, 0] > 0.5
    p = dict(zip(host, _on(dev, *host.values()), strict=True))
    images = _intensity(images, valid, p, cfg)
    return images, masks


def _on(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Host tensors to `device` without a host sync: a blocking copy to a GPU waits for
    every kernel queued before it (the training step), a non-blocking one does not."""
    return [t.to(device, non_blocking=True) for t in tensors]


def _valid_window(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Height and width of the un-padded top-left window of each mask."""
    valid = masks != IGNORE_INDEX
    idx_r = torch.arange(1, masks.shape[-2] + 1, device=masks.device)
    idx_c = torch.arange(1, masks.shape[-1] + 1, device=masks.device)
    h = (valid.any(-1) * idx_r).amax(-1)
    w = (valid.any(-2) * idx_c).amax(-1)
    return h, w


def _linear(p: dict, idx: torch.Tensor) -> torch.Tensor:
    """[n,2,2] output->input map in normalised (x, y): flips . rotation / scale."""
    ang, sc = p["angle"][idx].float(), p["scale"][idx].float()
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    fx = 1 - 2 * p["hflip"][idx].float()
    fy = 1 - 2 * p["vflip"][idx].float()
    return torch.stack(
        [torch.stack([fx * cos, -fx * sin], -1), torch.stack([fy * sin, fy * cos], -1)], -2
    )


def _theta(a: torch.Tensor, h: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:
    """Affine about the centre of the valid window: u_in = c + A (u_out - c)."""
    c = torch.stack([w.float() / size - 1, h.float() / size - 1], -1)  # (x, y), normalised
    t = c - (a @ c[..., None])[..., 0]
    return torch.cat([a, t[..., None]], -1)


def _outside(h: torch.Tensor, w: torch.Tensor, size: int, device) -> torch.Tensor:
    r = torch.arange(size, device=device)
    return (r[None, :, None] >= h[:, None, None]) | (r[None, None, :] >= w[:, None, None])


def _warp_pair(images, masks, a, hi, wi, hm, wm) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images and masks; one sampling grid and padding mask serve both when they have
    the same size (at 1024 px the grid costs as much as the bilinear sampling)."""
    shared = None
    if images.shape[-1] == masks.shape[-1] and images.dtype == torch.float32:
        size = images.shape[-1]
        grid = F.affine_grid(_theta(a, hi, wi, size), [len(images), 1, size, size],
                             align_corners=False)
        shared = (grid, _outside(hi, wi, size, images.device))
    return _warp_image(images, a, hi, wi, shared), _warp_mask(masks, a, hm, wm, shared)


def _warp_image(x: torch.Tensor, a: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                shared: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    size = x.shape[-1]
    if shared is None:
        theta = _theta(a, h, w, size).to(x.dtype if x.is_floating_point() else torch.float32)
        shared = (F.affine_grid(theta, list(x.shape), align_corners=False),
                  _outside(h, w, size, x.device))
    grid, outside = shared
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.masked_fill_(outside[:, None], 0.0)


def _warp_mask(m: torch.Tensor, a: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
               shared: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Nearest resampling of (label - IGNORE_INDEX), so zeros padding becomes IGNORE_INDEX."""
    size = m.shape[-1]
    shifted = (m - IGNORE_INDEX).float()[:, None]
    if shared is None:
        shared = (F.affine_grid(_theta(a, h, w, size), list(shifted.shape), align_corners=False),
                  _outside(h, w, size, m.device))
    grid, outside = shared
    out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out = out[:, 0].round().long() + IGNORE_INDEX
    return out.masked_fill_(outside, IGNORE_INDEX)


def _intensity(x: torch.Tensor, valid: torch.Tensor, p: dict, cfg: AugmentConfig) -> torch.Tensor:
    """Gamma, contrast, brightness per sample and channel, relative to the valid pixels'
    range (so it works for any normalisation preset); padding stays as it was."""
    if not (cfg.gamma > 0 or cfg.contrast > 0 or cfg.brightness > 0):
        return x
    v = valid[:, None].expand_as(x)
    count = valid.sum((-2, -1))[:, None, None, None].clamp(min=1)
    big = torch.finfo(x.dtype).max
    lo = x.masked_fill(~v, big).amin((-2, -1), keepdim=True)
    hi = x.masked_fill(~v, -big).amax((-2, -1), keepdim=True)
    empty = (valid.sum((-2, -1)) == 0)[:, None, None, None]
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.ones_like(hi), hi)
    span = (hi - lo).clamp(min=1e-6)
    y = x
    if cfg.gamma > 0:
        g = p["gamma"].to(x.dtype)[:, None, None, None]
        y = lo + span * ((y - lo) / span).clamp(0, 1) ** g
    if cfg.contrast > 0:
        mean = (y * v).sum((-2, -1), keepdim=True) / count
        y = mean + (y - mean) * p["contrast"].to(x.dtype)[:, None, None, None]
    if cfg.brightness > 0:
        y = y + p["brightness"].to(x.dtype)[:, None, None, None] * span
    return torch.where(v, y, x)
