"""Reading images and label maps: explicit scaling, palette indices, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam_medft.config import IntensityConfig
from sam_medft.data.io import image_header, image_size, read_image, read_mask, scale_intensity
from sam_medft.errors import SamMedftError


def _ramp16(h: int = 40, w: int = 50) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 30 + 1000).astype(np.uint16)


def test_8bit_grey_is_replicated_unchanged(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (30, 20), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png", IntensityConfig())
    assert img.shape == (30, 20, 3) and img.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], a.astype(np.float32))


def test_rgba_drops_alpha_and_rgb_kept(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(img, a[..., :3].astype(np.float32))


def test_16bit_auto_is_percentile_scaled(tmp_path):
    a = _ramp16()
    Image.fromarray(a).save(tmp_path / "ct.png")
    assert Image.open(tmp_path / "ct.png").mode == "I;16"
    img = read_image(tmp_path / "ct.png", IntensityConfig(mode="auto", percentiles=(1, 99)))
    lo, hi = np.percentile(a, (1, 99))
    expected = np.clip((a.astype(np.float64) - lo) / (hi - lo) * 255, 0, 255)
    np.testing.assert_allclose(img[..., 0], expected, atol=1e-3)
    assert img.min() == 0 and img.max() == 255  # full range used, not clipped at 255 raw


def test_16bit_window(tmp_path):
    a = _ramp16()
    Image.fromarray(a).save(tmp_path / "ct.png")
    img = read_image(tmp_path / "ct.png", IntensityConfig(mode="window", window=(2000, 1000)))
    expected = np.clip((a.astype(np.float64) - 1500) / 1000 * 255, 0, 255)
    np.testing.assert_allclose(img[..., 1], expected, atol=1e-3)


def test_window_needs_window(tmp_path):
    Image.fromarray(_ramp16()).save(tmp_path / "ct.png")
    with pytest.raises(SamMedftError, match=r"intensity\.window"):
        read_image(tmp_path / "ct.png", IntensityConfig(mode="window"))


def test_16bit_with_mode_none_is_an_error_naming_the_file(tmp_path):
    Image.fromarray(_ramp16()).save(tmp_path / "ct.png")
    with pytest.raises(SamMedftError, match=r"ct\.png.*percentile.*window"):
        read_image(tmp_path / "ct.png", IntensityConfig(mode="none"))


def test_percentile_forces_scaling_of_8bit(tmp_path):
    a = np.linspace(100, 150, 20 * 20).reshape(20, 20).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "low.png")
    assert read_image(tmp_path / "low.png").max() <= 150  # auto: identity for 8-bit
    scaled = read_image(
        tmp_path / "low.png", IntensityConfig(mode="percentile", percentiles=(0, 100))
    )
    assert scaled.min() == 0 and scaled.max() == 255


def test_float_tiff_and_npy(tmp_path):
    a = np.random.default_rng(2).normal(0, 1, (16, 24)).astype(np.float32)
    Image.fromarray(a).save(tmp_path / "f.tif")
    np.save(tmp_path / "f.npy", a)
    cfg = IntensityConfig(percentiles=(0, 100))
    t, n = read_image(tmp_path / "f.tif", cfg), read_image(tmp_path / "f.npy", cfg)
    np.testing.assert_allclose(t, n, atol=1e-4)
    assert t.min() == 0 and t.max() == 255
    assert image_size(tmp_path / "f.npy") == (16, 24)


def test_scale_intensity_on_arrays_matches_files(tmp_path):
    a = _ramp16()
    Image.fromarray(a).save(tmp_path / "ct.png")
    np.testing.assert_array_equal(scale_intensity(a), read_image(tmp_path / "ct.png"))


def test_palette_mask_keeps_indices(tmp_path):
    idx = np.array([[0, 1, 2], [3, 0, 1]], dtype=np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    p.save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    m = read_mask(tmp_path / "m.png")
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, idx)  # convert("L") would give luminances like 76, 149


def test_16bit_and_grey_rgb_masks(tmp_path):
    m16 = np.array([[0, 1000], [65535, 7]], dtype=np.uint16)
    Image.fromarray(m16).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), m16.astype(np.int64))
    grey = np.array([[0, 128], [255, 0]], dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), grey)


def test_true_colour_mask_is_an_error(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(SamMedftError, match=r"colour\.png.*single-channel label map"):
        read_mask(tmp_path / "colour.png")


def test_float_mask_with_fractions_is_an_error(tmp_path):
    np.save(tmp_path / "m.npy", np.array([[0.0, 0.5]], dtype=np.float32))
    with pytest.raises(SamMedftError, match="non-integer"):
        read_mask(tmp_path / "m.npy")


def test_truncated_png_is_a_clear_error(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(data[: len(data) // 2])
    for fn in (read_image, read_mask):
        with pytest.raises(SamMedftError, match=r"bad\.png.*(corrupt|truncated)"):
            fn(tmp_path / "bad.png")
    with pytest.raises(SamMedftError, match=r"bad\.png"):
        image_header(tmp_path / "bad.png", verify=True)
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(SamMedftError, match=r"junk\.png"):
        read_image(tmp_path / "junk.png")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(SamMedftError, match=r"nope\.png.*not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "vol.nii.gz").write_bytes(b"x")
    with pytest.raises(SamMedftError, match="NIfTI"):
        read_mask(tmp_path / "vol.nii.gz")


def test_header_is_cheap_and_right(tmp_path):
    Image.fromarray(_ramp16(7, 9)).save(tmp_path / "h.png")
    h = image_header(tmp_path / "h.png")
    assert (h.height, h.width, h.channels, h.depth) == (7, 9, 1, "16-bit")
    assert image_size(tmp_path / "h.png") == (7, 9)
