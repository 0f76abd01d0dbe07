"""Raw mask values -> class indices, and the errors that say how to fix a recipe."""

from __future__ import annotations

import numpy as np
import pytest

from sam_medft.data.labels import LabelMap
from sam_medft.errors import SamMedftError


def test_binary_is_combine_all():
    lm = LabelMap(binary=True)
    assert lm.class_names == ["background", "foreground"] and lm.num_classes == 2
    raw = np.array([[0, 1, 128], [255, 0, 7]])
    np.testing.assert_array_equal(lm.apply(raw), [[0, 1, 1], [1, 0, 1]])


def test_mapping_follows_order_with_background_first():
    lm = LabelMap({255: "organ_b", 0: "background", 128: "organ_a"})
    assert lm.class_names == ["background", "organ_b", "organ_a"]
    raw = np.array([[0, 128, 255]], dtype=np.uint8)
    out = lm.apply(raw)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 2, 1]])
    assert lm.raw_values == [0, 255, 128]


def test_equal_names_share_a_class():
    lm = LabelMap({0: "background", 1: "kidney", 2: "kidney", 3: "background"})
    assert lm.class_names == ["background", "kidney"]
    np.testing.assert_array_equal(lm.apply(np.array([0, 1, 2, 3])), [0, 1, 1, 0])


def test_large_and_negative_raw_values():
    lm = LabelMap({0: "background", 70000: "a", -1: "b"})
    np.testing.assert_array_equal(lm.apply(np.array([0, 70000, -1])), [0, 1, 2])


def test_value_not_in_mapping_names_file_values_and_fix():
    lm = LabelMap({0: "background", 1: "prostate"})
    with pytest.raises(SamMedftError) as e:
        lm.apply(np.array([[0, 1, 3, 9]]), source="masks/case7.png")
    msg = str(e.value)
    assert "masks/case7.png" in msg and "[3, 9]" in msg
    assert "1: prostate" in msg and "data.labels" in msg and "binary" in msg


def test_background_required():
    with pytest.raises(SamMedftError, match="background value 0"):
        LabelMap({1: "a"})


def test_infer_contiguous():
    lm = LabelMap.infer([2, 0, 1, 1])
    assert lm.class_names == ["background", "class_1", "class_2"]


def test_infer_non_contiguous_shows_snippet():
    with pytest.raises(SamMedftError) as e:
        LabelMap.infer([0, 128, 255])
    msg = str(e.value)
    assert (
        "0, 128, 255" in msg
        and "labels:" in msg
        and "128: class_1" in msg
        and "255: class_2" in msg
    )


def test_infer_single_value_suggests_binary_and_empty_is_an_error():
    with pytest.raises(SamMedftError, match="binary: true"):
        LabelMap.infer([0, 255])
    with pytest.raises(SamMedftError, match="empty"):
        LabelMap.infer([0])


def test_json_round_trip():
    for lm, raw in (
        (LabelMap({0: "bg", 5: "liver", 9: "spleen"}), np.array([0, 9, 5])),
        (LabelMap(binary=True), np.array([0, 3])),
    ):
        again = LabelMap.from_json(lm.to_json())
        assert again == lm and again.class_names == lm.class_names
        np.testing.assert_array_equal(again.apply(raw), lm.apply(raw))
    assert '"5": "liver"' in LabelMap({0: "bg", 5: "liver"}).to_json()  # keys as strings


def test_nameless_or_background_only_maps_are_errors():
    with pytest.raises(SamMedftError, match="the value 1 an empty class name"):
        LabelMap({0: "background", 1: " "})
    with pytest.raises(SamMedftError, match="every value to the background class 'bg'"):
        LabelMap({0: "bg", 7: "bg"})
    with pytest.raises(SamMedftError, match="key 'x' is not an integer mask value"):
        LabelMap({0: "bg", "x": "a"})


def test_saved_label_map_errors_name_the_label_map():
    for bad in ('{"values": null}', "[1]", '{"values": {"zero": "bg"}}', "{not json"):
        with pytest.raises(SamMedftError, match="saved label map"):
            LabelMap.from_json(bad)


def test_unmapped_value_advice_works_as_given():
    # the advice names an override that load_recipe accepts on a recipe with labels
    from sam_medft.config import load_recipe
    from sam_medft.resources import recipes_dir

    with pytest.raises(SamMedftError) as e:
        LabelMap({0: "background", 255: "organ"}).apply(np.array([[0, 254]]), source="m.png")
    msg = str(e.value)
    assert "254" in msg and "data.binary=true" in msg
    r = load_recipe(recipes_dir() / "demo.yaml", ["data.binary=true"])  # recipe has labels
    assert r.data.binary and r.data.labels is None
