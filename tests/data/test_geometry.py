"""SAM geometry: resize the longest side, pad bottom/right, and come back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_medft.data.transforms import IGNORE_INDEX, SamGeometry, preprocess_shape, to_model_input


@pytest.mark.parametrize("shape", [(64, 64), (48, 64), (64, 40), (37, 53)])
def test_labels_round_trip_through_the_lowres_grid(shape):
    """At the low-res size itself, pad -> unpad -> resize back returns the labels exactly."""
    g = SamGeometry(input_size=256, mask_size=64)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=shape)
    low = g.mask_to_lowres(labels)
    assert low.shape == (64, 64)
    nh, nw = g.lowres_shape(shape)
    assert (low[nh:] == IGNORE_INDEX).all() and (low[:, nw:] == IGNORE_INDEX).all()
    # one-hot "logits" of the low-res labels, back to the original frame
    onehot = torch.nn.functional.one_hot(low.clamp(min=0), 3).permute(2, 0, 1).float() * 10
    back = g.logits_to_original(onehot, shape).argmax(0).numpy()
    assert back.shape == shape
    if max(shape) == 64:  # no resampling at all: exact
        np.testing.assert_array_equal(back, labels)


def test_larger_images_come_back_at_their_size_with_blocky_labels():
    g = SamGeometry(input_size=256, mask_size=64)
    labels = np.zeros((300, 200), dtype=np.int64)
    labels[40:200, 60:160] = 2
    back = g.logits_to_original(
        torch.nn.functional.one_hot(g.mask_to_lowres(labels).clamp(min=0), 3)
        .permute(2, 0, 1).float() * 10, (300, 200)).argmax(0).numpy()
    assert back.shape == (300, 200)
    assert set(np.unique(back)) == {0, 2}
    assert (back == labels).mean() > 0.97


def test_image_is_resized_by_the_longest_side_and_padded_with_zeros():
    g = SamGeometry(input_size=256, mask_size=64)
    image = np.full((100, 50, 3), 200, dtype=np.uint8)
    px, original, resized = to_model_input(image, g, "sam")
    assert px.shape == (3, 256, 256) and original == (100, 50) and resized == (256, 128)
    assert torch.all(px[:, :, 128:] == 0) and torch.all(px[:, :256, :128] != 0)
    assert preprocess_shape(100, 50, 1024) == (1024, 512)


def test_prompt_coordinates_follow_the_same_scale():
    g = SamGeometry(input_size=1024, mask_size=256)
    box = g.coords_to_model([10.0, 20.0, 110.0, 220.0], (400, 200))
    np.testing.assert_allclose(box.numpy(), [25.6, 51.2, 281.6, 563.2], rtol=1e-6)
    np.testing.assert_allclose(g.coords_to_original(box, (400, 200)).numpy(), [10, 20, 110, 220],
                               rtol=1e-6)
