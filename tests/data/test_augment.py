"""Joint augmentation in the model frame: labels stay labels, image and mask move together."""

from __future__ import annotations

import torch

from sam_medft.config import AugmentConfig
from sam_medft.data.augment import augment_batch, augment_sample
from sam_medft.data.transforms import IGNORE_INDEX

S = 64
H, W = 48, 64  # valid window (padding at the bottom, as SamGeometry pads)


def _sample() -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking image with zero padding; an asymmetric L-shaped object (class 1)
    and a small square (class 2)."""
    img = torch.zeros(3, S, S)
    mask = torch.full((S, S), IGNORE_INDEX, dtype=torch.long)
    img[:, :H, :W] = -1.0
    mask[:H, :W] = 0
    img[:, 8:30, 10:18] = 2.0
    mask[8:30, 10:18] = 1
    img[:, 22:30, 18:34] = 2.0
    mask[22:30, 18:34] = 1
    img[:, 34:42, 44:52] = 3.0
    mask[34:42, 44:52] = 2
    return img, mask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


NO_INTENSITY = dict(brightness=0.0, contrast=0.0, gamma=0.0)


def test_disabled_is_identity():
    img, mask = _sample()
    out_i, out_m = augment_sample(img, mask, AugmentConfig(enabled=False), _gen())
    assert torch.equal(out_i, img) and torch.equal(out_m, mask)


def test_labels_stay_labels_and_padding_stays_put():
    img, mask = _sample()
    cfg = AugmentConfig(p=1.0, rotate_degrees=40, scale=(0.7, 1.3), hflip=0.5, vflip=0.5, gamma=0.3)
    for seed in range(8):
        out_i, out_m = augment_sample(img, mask, cfg, _gen(seed))
        assert out_m.dtype == torch.long
        assert set(out_m.unique().tolist()) <= {IGNORE_INDEX, 0, 1, 2}
        assert (out_m[H:] == IGNORE_INDEX).all() and (out_i[:, H:] == 0).all()  # padding intact
        assert not torch.equal(out_m, mask)


def test_flip_is_exact_within_the_valid_window():
    img, mask = _sample()
    cfg = AugmentConfig(p=1.0, hflip=1.0, vflip=1.0, rotate_degrees=0, scale=(1, 1), **NO_INTENSITY)
    out_i, out_m = augment_sample(img, mask, cfg, _gen())
    assert torch.equal(out_i[:, :H, :W], img[:, :H, :W].flip(-1, -2))
    assert torch.equal(out_m[:H, :W], mask[:H, :W].flip(-1, -2))
    assert torch.equal(out_m[H:], mask[H:])


def test_same_seed_same_output_and_seed_matters():
    img, mask = _sample()
    cfg = AugmentConfig(p=1.0, gamma=0.2)
    a = augment_sample(img, mask, cfg, _gen(5))
    b = augment_sample(img, mask, cfg, _gen(5))
    c = augment_sample(img, mask, cfg, _gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_image_and_mask_move_together_under_rotation():
    img, mask = _sample()
    cfg = AugmentConfig(p=1.0, rotate_degrees=35, scale=(0.9, 1.1), hflip=0.5, **NO_INTENSITY)
    for seed in range(6):
        out_i, out_m = augment_sample(img, mask, cfg, _gen(seed))
        bright = out_i[0] > 1.5  # the object's pixels in the warped image
        obj = (out_m == 1) | (out_m == 2)
        inter = (bright & obj).sum().item()
        dice = 2 * inter / (bright.sum().item() + obj.sum().item())
        assert dice > 0.9, (seed, dice)
        assert not torch.equal(obj, (mask == 1) | (mask == 2))  # it did move
        # class 2 (the small, brightest square) lands where the image is brightest
        assert out_i[0][out_m == 2].mean() > 2.5


def test_low_res_mask_follows_the_image():
    img, mask = _sample()
    low = mask[::4, ::4].clone()  # a 16x16 label grid for a 64x64 image
    cfg = AugmentConfig(p=1.0, rotate_degrees=30, scale=(1.0, 1.0), **NO_INTENSITY)
    out_i, out_m = augment_sample(img, low, cfg, _gen(1))
    assert out_m.shape == (16, 16)
    up = out_m.repeat_interleave(4, 0).repeat_interleave(4, 1)
    bright = out_i[0] > 1.5
    agree = (bright == ((up == 1) | (up == 2)))[up != IGNORE_INDEX].float().mean()
    assert agree > 0.9


def test_intensity_touches_valid_pixels_only():
    img, mask = _sample()
    cfg = AugmentConfig(p=0.0, brightness=0.3, contrast=0.3, gamma=0.3)
    out_i, out_m = augment_sample(img, mask, cfg, _gen(2))
    assert torch.equal(out_m, mask)
    assert (out_i[:, H:] == 0).all()
    assert not torch.allclose(out_i[:, :H, :W], img[:, :H, :W])
    # order of intensities is kept (monotone transform): object stays brighter than background
    assert out_i[0][mask == 2].mean() > out_i[0][mask == 1].mean() > out_i[0][mask == 0].mean()


def test_batch_gives_per_sample_parameters():
    img, mask = _sample()
    images, masks = torch.stack([img] * 4), torch.stack([mask] * 4)
    cfg = AugmentConfig(p=1.0, rotate_degrees=45)
    out_i, out_m = augment_batch(images, masks, cfg, _gen(3))
    assert out_i.shape == images.shape and out_m.shape == masks.shape
    assert len({tuple(m.flatten().tolist()) for m in out_m}) == 4  # all different
    again = augment_batch(images, masks, cfg, _gen(3))
    assert torch.equal(again[0], out_i) and torch.equal(again[1], out_m)


def test_warp_is_about_the_valid_window_centre():
    """A (nearly) pure flip through the resampling path equals the exact window flip: the
    affine turns about the un-padded window's centre, not the padded square's."""
    img, mask = _sample()
    cfg = AugmentConfig(
        p=1.0, hflip=0.0, vflip=1.0, rotate_degrees=0.01, scale=(1, 1), **NO_INTENSITY
    )
    out_i, out_m = augment_sample(img, mask, cfg, _gen(0))
    expected = mask.clone()
    expected[:H, :W] = mask[:H, :W].flip(-2)
    assert (out_m == expected).float().mean() > 0.99
    torch.testing.assert_close(
        out_i[:, 1 : H - 1], img[:, :H].flip(-2)[:, 1 : H - 1], atol=0.05, rtol=0
    )
