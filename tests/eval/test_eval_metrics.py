"""Closed-form checks of the per-case metrics (MONAI underneath) and the empty cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sam_medft.errors import SamMedftError
from sam_medft.eval.metrics import case_metrics, dataset_metrics


def square(shift_x: int = 0, label: int = 1, size: int = 32) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.int64)
    m[10:20, 10 + shift_x : 20 + shift_x] = label
    return m


# Closed form for a 10x10 square A and the same square B shifted 2 columns right.
# Overlap 10x8 = 80, so Dice = 2*80/200 = 0.8 and IoU = 80/120.
# MONAI measures distances between edge pixels (mask XOR its erosion: 36 per square)
# with a Euclidean distance transform. From A's edge to B's edge (pixel units):
#   top+bottom rows, 20 px: 16 lie on B's rows (0), columns 11 -> 1 and 10 -> 2 (x2 rows);
#   left column rows 11..18, 8 px: B's left column is 2 columns away -> 2;
#   right column rows 11..18, 8 px: min(dist to B's top/bottom row, 2) -> 1,2,2,2,2,2,2,1.
# So 16 zeros, 4 ones, 16 twos (B to A is the mirror image). numpy's 95th percentile of the
# 36 sorted values interpolates between ranks 33 and 34, both 2: HD95 = 2 (max 2 too).
# NSD with tolerance t: (#d<=t from A + #d<=t from B) / 72 -> t=0.5: 32/72, t=1: 40/72,
# t=2: 72/72. With spacing (2, 2) every distance doubles: HD95 = 4, NSD(t=1) = 32/72.
def test_shifted_square_closed_form_pixels():
    (row,) = case_metrics(square(2), square(), [1])
    assert row["dice"] == pytest.approx(0.8)
    assert row["iou"] == pytest.approx(80 / 120)
    assert row["hd95"] == pytest.approx(2.0)
    assert row["nsd"] == pytest.approx(40 / 72)
    assert (row["tp"], row["fp"], row["fn"]) == (80, 20, 20)
    assert (row["gt_pixels"], row["pred_pixels"]) == (100, 100)
    assert row["empty_case"] == "normal"


@pytest.mark.parametrize(
    ("tolerance", "expected"), [(0.5, 32 / 72), (1.0, 40 / 72), (2.0, 1.0), (1.9, 40 / 72)]
)
def test_shifted_square_nsd_tolerance(tolerance, expected):
    (row,) = case_metrics(square(2), square(), [1], nsd_tolerance=tolerance)
    assert row["nsd"] == pytest.approx(expected)


def test_shifted_square_spacing_scales_distances_not_overlap():
    (row,) = case_metrics(square(2), square(), [1], spacing=(2.0, 2.0), nsd_tolerance=1.0)
    assert row["dice"] == pytest.approx(0.8)
    assert row["hd95"] == pytest.approx(4.0)
    assert row["nsd"] == pytest.approx(32 / 72)  # only the zero distances are within 1 mm


def test_spacing_is_row_then_column():
    # The shift is along columns (x): only the column spacing stretches it.
    (wide,) = case_metrics(square(2), square(), [1], spacing=(1.0, 3.0))
    (tall,) = case_metrics(square(2), square(), [1], spacing=(3.0, 1.0))
    assert wide["hd95"] == pytest.approx(6.0)
    assert tall["hd95"] == pytest.approx(2.0)


def test_identical_masks_are_perfect():
    (row,) = case_metrics(square(), square(), [1])
    assert (row["dice"], row["iou"], row["hd95"], row["nsd"]) == (1.0, 1.0, 0.0, 1.0)


def test_empty_cases_raw_values():
    empty = np.zeros((32, 32), dtype=np.int64)
    (both,) = case_metrics(empty, empty, [1])
    (fp,) = case_metrics(square(), empty, [1])
    (miss,) = case_metrics(empty, square(), [1])
    assert both["empty_case"] == "both_empty"
    assert all(math.isnan(both[k]) for k in ("dice", "iou", "hd95", "nsd"))
    assert fp["empty_case"] == "false_positive"
    assert (fp["dice"], fp["iou"], fp["fp"], fp["gt_pixels"]) == (0.0, 0.0, 100, 0)
    assert math.isnan(fp["hd95"]) and math.isnan(fp["nsd"])
    assert miss["empty_case"] == "miss"
    assert (miss["dice"], miss["iou"], miss["fn"], miss["pred_pixels"]) == (0.0, 0.0, 100, 0)
    assert math.isnan(miss["hd95"]) and math.isnan(miss["nsd"])


def test_multi_class_rows_are_independent():
    gt = square()
    gt[25:30, 0:5] = 2
    pred = square(2)
    pred[25:30, 0:5] = 2
    pred[0:3, 0:3] = 3  # class 3 predicted, absent in gt
    rows = case_metrics(
        pred, gt, [1, 2, 3, 4], case="c1", class_names={1: "a", 2: "b", 3: "c", 4: "d"}
    )
    by = {r["class_id"]: r for r in rows}
    assert [r["class_id"] for r in rows] == [1, 2, 3, 4]
    assert by[1]["dice"] == pytest.approx(0.8) and by[1]["hd95"] == pytest.approx(2.0)
    assert by[2]["dice"] == 1.0 and by[2]["hd95"] == 0.0
    assert by[3]["empty_case"] == "false_positive" and by[3]["pred_pixels"] == 9
    assert by[4]["empty_case"] == "both_empty"
    assert {r["case"] for r in rows} == {"c1"} and by[2]["class_name"] == "b"


def test_other_labels_do_not_count_as_foreground():
    gt = square()
    gt[0:5, 0:5] = 7  # a label that is not scored
    (row,) = case_metrics(square(), gt, [1])
    assert row["dice"] == 1.0 and row["gt_pixels"] == 100


def test_dataset_metrics_per_image_spacing_and_ids():
    rows = dataset_metrics(
        [square(2), square(2)], [square(), square()], [1], spacing=[(1, 1), (2, 2)]
    )
    assert [r["case"] for r in rows] == ["case_0000", "case_0001"]
    assert [r["hd95"] for r in rows] == pytest.approx([2.0, 4.0])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pred": np.zeros((4, 4), int), "gt": np.zeros((5, 4), int)}, "logits_to_original"),
        ({"pred": np.zeros((1, 4, 4), int), "gt": np.zeros((1, 4, 4), int)}, "2-D label map"),
        ({"pred": np.zeros((4, 4)), "gt": np.zeros((4, 4), int)}, "astype"),
        ({"class_ids": [0, 1]}, "background 0"),
        ({"class_ids": []}, "foreground class ids"),
        ({"spacing": (1.0,)}, r"spacing=\(1\.0,\)"),
        ({"spacing": (1.0, -2.0)}, "positive numbers"),
        ({"nsd_tolerance": 0}, "nsd_tolerance=0"),
    ],
)
def test_user_errors_are_clear(kwargs, fragment):
    args = {"pred": square(), "gt": square(), "class_ids": [1]} | kwargs
    with pytest.raises(SamMedftError, match=fragment):
        case_metrics(**args)


def test_dataset_metrics_length_mismatch():
    with pytest.raises(SamMedftError, match="one prediction per reference"):
        dataset_metrics([square()], [square(), square()], [1])
    with pytest.raises(SamMedftError, match="one pair per image"):
        dataset_metrics([square()], [square()], [1], spacing=[(1, 1), (1, 1)])
