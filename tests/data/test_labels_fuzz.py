"""Fuzzing label maps: any mapping and any mask values end in classes or ONE SamMedftError.

`data.labels` is typed by hand (and read back from an adapter's sam_medft.json), and masks
hold whatever an export tool wrote, so neither may ever reach the model as an out-of-range
class (the study's CUDA device-side assert) or end in a traceback.
"""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sam_medft.data.labels import LabelMap
from sam_medft.errors import SamMedftError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True)

_RAW = st.integers(-(2**40), 2**40) | st.sampled_from([0, 1, 2, 128, 255, 65535, 2**20, -1])
_NAME = st.text(max_size=6) | st.sampled_from(["background", "organ", "organ", " ", ""])
_VALUES = st.dictionaries(_RAW, _NAME, max_size=6)


def _label_map(values):
    try:
        return LabelMap(values)
    except SamMedftError as e:
        assert str(e).strip()
        return None


@FUZZ
@given(values=_VALUES, mask=st.lists(_RAW, min_size=1, max_size=12))
@example(values={0: "background", 1: ""}, mask=[0, 1])  # a nameless class
@example(values={0: "bg", 1: "bg"}, mask=[0, 1])  # nothing but background
@example(values={0: "background", 2**40: "far"}, mask=[0, 2**40, -(2**40)])
def test_any_mapping_and_mask_give_classes_in_range_or_one_error(values, mask):
    lm = _label_map(values)
    if lm is None:
        return
    assert lm.num_classes >= 2 and all(name.strip() for name in lm.class_names)
    raw = np.array(mask, dtype=np.int64).reshape(1, -1)
    unknown = sorted({v for v in mask if v not in values})
    assert sorted(set(lm.unmapped(mask))) == unknown
    try:
        out = lm.apply(raw, source="m.png")
    except SamMedftError as e:
        assert unknown and "m.png" in str(e) and str(unknown[0]) in str(e)
        return
    assert not unknown and out.shape == raw.shape and out.dtype == np.int64
    assert out.min() >= 0 and out.max() < lm.num_classes
    # every class index written back gives a raw value of that class
    for c in np.unique(out):
        assert lm.apply(np.array([lm.raw_values[c]]))[0] == c


@FUZZ
@given(values=_VALUES)
def test_json_round_trip_is_exact(values):
    lm = _label_map(values)
    if lm is not None:
        again = LabelMap.from_json(lm.to_json())
        assert again == lm and again.raw_values == lm.raw_values


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@FUZZ
@given(
    d=st.fixed_dictionaries(
        {}, optional={"binary": _JSONISH, "values": _JSONISH, "class_names": _JSONISH}
    )
    | _JSONISH
)
@example(d={"binary": False})  # no values at all
@example(d={"values": {"zero": "background"}})  # a key that is not a number
@example(d={"values": ["background"]})
def test_any_saved_label_map_loads_or_one_error(d):
    try:
        lm = LabelMap.from_json(d)
    except SamMedftError as e:
        assert "label map" in str(e)
        return
    assert lm.binary or lm.num_classes >= 2


@FUZZ
@given(seen=st.lists(_RAW, max_size=8))
def test_infer_gives_contiguous_classes_or_one_error(seen):
    try:
        lm = LabelMap.infer(seen)
    except SamMedftError:
        assert sorted(set(seen)) != list(range(len(set(seen)))) or len(set(seen)) < 2
        return
    assert lm.values == {v: lm.values[v] for v in range(len(set(seen)))}
