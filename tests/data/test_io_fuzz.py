"""Fuzzing image and mask decoding: any file content is arrays or ONE SamMedftError.

The data check decodes every mask and checks every image header before training; a file
that is truncated, bit-flipped, empty or not an image at all must be reported by name
("corrupt mask: masks/x.png: ..."), never crash the check with a decoder's own exception.
"""

from __future__ import annotations

import io as _io

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from sam_medft.data.io import image_header, read_image, read_mask
from sam_medft.errors import SamMedftError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PIL on corrupt TIFF tags

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _encoded(fmt: str, mode: str) -> bytes:
    a = np.arange(64, dtype=np.uint8).reshape(8, 8)
    img = Image.fromarray(a).convert(mode)
    buf = _io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


_SEEDS = [_encoded(f, m) for f, m in (("PNG", "L"), ("PNG", "RGB"), ("PNG", "P"), ("TIFF", "I;16"),
                                      ("JPEG", "L"), ("BMP", "RGB"))]  # fmt: skip


@st.composite
def _mutated(draw) -> bytes:
    """A real encoded image, truncated and/or with a few bytes overwritten."""
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@FUZZ
@given(data=_mutated() | st.binary(max_size=64))
@example(data=b"")
@example(data=_SEEDS[0][:40])  # a PNG cut inside its first chunk
def test_any_bytes_decode_or_give_one_error(data):
    for decode in (
        lambda: read_mask(data, "m.png"),
        lambda: read_image(data, name="i.png"),
        lambda: image_header(data, "i.png", verify=True),
    ):
        try:
            out = decode()
        except SamMedftError as e:
            assert "m.png" in str(e) or "i.png" in str(e)
            continue
        if isinstance(out, np.ndarray):
            assert out.ndim in (2, 3) and out.size > 0


@FUZZ
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from(["uint8", "int16", "float32", "float64", "bool", "complex64", "U1"]),
)
@example(shape=[0, 5], dtype="uint8")  # an empty slice
@example(shape=[0, 0, 0], dtype="uint8")  # empty with a channel axis: crashed a reshape
@example(shape=[4, 4, 3], dtype="float32")
def test_any_npy_array_decodes_or_gives_one_error(tmp_path, shape, dtype):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(shape, dtype=dtype))
    for decode in (lambda: read_mask(path), lambda: read_image(path), lambda: image_header(path)):
        try:
            decode()
        except SamMedftError as e:
            assert "a.npy" in str(e)
