"""Fuzzing SAM's geometry: any image size and aspect ratio goes to the model frame and back.

Every pixel a user gives (image, mask, prompt) crosses `SamGeometry` twice: resize the
longest side + pad on the way in, crop + resize on the way out. Whatever the size (1 pixel
high, 5000 wide, odd, square), the inverse must return the original shape and the padding
must never be taken for data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sam_medft.data.transforms import (
    IGNORE_INDEX,
    SamGeometry,
    normalize_batch,
    preprocess_shape,
    to_model_input,
    valid_window,
)
from sam_medft.errors import SamMedftError

FUZZ = settings(max_examples=120, deadline=None, derandomize=True)

_SIDE = st.integers(1, 64) | st.integers(1, 5000)
# small geometries keep each example cheap; the shape rules are the same at 1024/256
_GEOMETRY = st.sampled_from([(16, 4), (32, 8), (64, 16), (24, 24), (1024, 256)])


@FUZZ
@given(h=_SIDE, w=_SIDE, longest=st.integers(1, 2048))
@example(h=1, w=5000, longest=1024)  # rounds to 0 rows in segment-anything's formula
@example(h=3000, w=1, longest=256)
def test_resized_shape_keeps_aspect_and_never_loses_a_side(h, w, longest):
    nh, nw = preprocess_shape(h, w, longest)
    assert max(nh, nw) == longest and min(nh, nw) >= 1
    if min(nh, nw) > 1:  # away from the 1-pixel clamp: segment-anything's rounding
        assert abs(nh - h * longest / max(h, w)) <= 0.5 and abs(nw - w * longest / max(h, w)) <= 0.5


@FUZZ
@given(h=st.integers(-3, 0) | _SIDE, w=st.integers(-3, 0))
def test_empty_sizes_are_one_clear_error(h, w):
    with pytest.raises(SamMedftError, match="no pixels"):
        preprocess_shape(h, w, 1024)


@FUZZ
@given(h=_SIDE, w=_SIDE, geo=_GEOMETRY, data=st.data())
@example(h=1, w=5000, geo=(1024, 256), data=None)
@example(h=7, w=1, geo=(16, 4), data=None)
def test_image_and_mask_to_the_model_frame_and_back(h, w, geo, data):
    input_size, mask_size = geo
    g = SamGeometry(input_size, mask_size)
    if h * w > 300_000:  # big sizes: shapes only (pure arithmetic), pixels on small ones
        h, w = max(1, h // 50), max(1, w // 50)
    k = 3 if data is None else data.draw(st.integers(1, 4))
    rng = np.random.default_rng(h * 7919 + w)
    mask = rng.integers(0, k, (h, w))
    image = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)

    pixels, original, resized = to_model_input(image, g, "sam")
    assert pixels.shape == (3, input_size, input_size) and original == (h, w)
    assert resized == g.resized_shape((h, w)) and torch.isfinite(pixels).all()
    assert (pixels[:, resized[0] :, :] == 0).all() and (pixels[:, :, resized[1] :] == 0).all()

    low = g.mask_to_lowres(mask)
    lh, lw = g.lowres_shape((h, w))
    assert low.shape == (mask_size, mask_size)
    assert (low[lh:] == IGNORE_INDEX).all() and (low[:, lw:] == IGNORE_INDEX).all()
    assert set(low[:lh, :lw].unique().tolist()) <= set(np.unique(mask).tolist())
    full = g.mask_to_input(mask)
    assert full.shape == (input_size, input_size)
    assert set(full[: resized[0], : resized[1]].unique().tolist()) <= set(np.unique(mask).tolist())

    # back: low-res logits of a constant mask -> the original size. A square image has no
    # padding, so all of it comes back; otherwise the low-res grid and the input crop round
    # separately (as in transformers' post_process_masks), so the last row/column may blend
    # with the padding
    logits = torch.where(low[None] == IGNORE_INDEX, -5.0, 5.0).float()
    back = g.logits_to_original(logits, (h, w))
    assert back.shape == (1, h, w) and back[0, 0, 0] > 0
    assert (back > 0).all() if h == w else (back > 0).float().mean() >= 0.5


@FUZZ
@given(
    h=_SIDE,
    w=_SIDE,
    geo=_GEOMETRY,
    xy=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_prompt_coordinates_round_trip(h, w, geo, xy):
    g = SamGeometry(*geo)
    pt = torch.tensor([[xy[0] * (w - 1), xy[1] * (h - 1)]])
    there = g.coords_to_model(pt, (h, w))
    nh, nw = g.resized_shape((h, w))
    assert (there[..., 0] <= nw).all() and (there[..., 1] <= nh).all()
    torch.testing.assert_close(g.coords_to_original(there, (h, w)), pt, rtol=1e-5, atol=1e-3)


@FUZZ
@given(
    value=st.integers(0, 255),
    preset=st.sampled_from(["sam", "medsam"]),
    h=st.integers(1, 8),
    w=st.integers(1, 8),
)
def test_normalising_a_constant_image_is_finite(value, preset, h, w):
    images = torch.full((1, 3, 8, 8), value, dtype=torch.uint8)
    valid = valid_window(torch.tensor([[h, w]]), 8, "cpu")
    out = normalize_batch(images, valid, preset)
    assert torch.isfinite(out).all()
    assert (out[:, :, h:] == 0).all() and (out[:, :, :, w:] == 0).all()  # padding stays 0
