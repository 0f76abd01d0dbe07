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
#
# HD95: MONAI measures distances between edge pixels (mask XOR its erosion: 36 per square)
# with a Euclidean distance transform. From A's edge to B's edge (pixel units):
#   top+bottom rows, 20 px: 16 lie on B's rows (0), columns 11 -> 1 and 10 -> 2 (x2 rows);
#   left column rows 11..18, 8 px: B's left column is 2 columns away -> 2;
#   right column rows 11..18, 8 px: min(dist to B's top/bottom row, 2) -> 1,2,2,2,2,2,2,1.
# So 16 zeros, 4 ones, 16 twos (B to A is the mirror image). numpy's 95th percentile of the
# 36 sorted values interpolates between ranks 33 and 34, both 2: HD95 = 2 (max 2 too).
#
# NSD the reference way (DeepMind surface-distance, MONAI use_subvoxels=True): the surface
# lies on the pixel-corner grid, A's on the square [10,20]x[10,20]: 40 corner points, each
# weighted by the contour length it carries: 1 on a straight side, sqrt(2)/2 at the 4
# corners (the contour cuts them diagonally). Total W = 36 + 4*sqrt(2)/2 = 36 + 2*sqrt(2).
# Distances to B's corner square [10,20]x[12,22]:
#   top/bottom rows, c = 12..20: 0 (c = 20 is a corner, weight sqrt(2)/2), c = 11: 1,
#   c = 10 (a corner): 2; left column r = 11..19: 2; right column r = 11..19: 1, 2 x 7, 1.
# Weight within t: t in [0, 1): 2*(8 + sqrt(2)/2) = 16 + sqrt(2);
#                  t in [1, 2): that + 2*1 (c = 11) + 2 (right column ends) = 20 + sqrt(2);
#                  t >= 2: everything. B to A is the mirror image, so NSD = weight / W.
# (Counting boundary pixels instead, MONAI's default, gives 32/72 and 40/72.)
W_SQUARE = 36 + 2 * math.sqrt(2)
NSD_HALF = (16 + math.sqrt(2)) / W_SQUARE  # 0.44849
NSD_ONE = (20 + math.sqrt(2)) / W_SQUARE  # 0.55151


def test_shifted_square_closed_form_pixels():
    (row,) = case_metrics(square(2), square(), [1])
    assert row["dice"] == pytest.approx(0.8)
    assert row["iou"] == pytest.approx(80 / 120)
    assert row["hd95"] == pytest.approx(2.0)
    assert row["nsd"] == pytest.approx(NSD_ONE, abs=1e-6)
    assert (row["tp"], row["fp"], row["fn"]) == (80, 20, 20)
    assert (row["gt_pixels"], row["pred_pixels"]) == (100, 100)
    assert row["empty_case"] == "normal"


@pytest.mark.parametrize(
    ("tolerance", "expected"),
    [(0.5, NSD_HALF), (1.0, NSD_ONE), (2.0, 1.0), (1.9, NSD_ONE)],
)
def test_shifted_square_nsd_tolerance(tolerance, expected):
    (row,) = case_metrics(square(2), square(), [1], nsd_tolerance=tolerance)
    assert row["nsd"] == pytest.approx(expected, abs=1e-6)


def test_nsd_weights_the_surface_by_length_not_by_pixel_count():
    """The reference NSD differs from the boundary-pixel count (40/72) on the same masks."""
    (row,) = case_metrics(square(2), square(), [1])
    assert abs(row["nsd"] - 40 / 72) > 3e-3


def test_shifted_square_spacing_scales_distances_not_overlap():
    (row,) = case_metrics(square(2), square(), [1], spacing=(2.0, 2.0), nsd_tolerance=1.0)
    assert row["dice"] == pytest.approx(0.8)
    assert row["hd95"] == pytest.approx(4.0)
    assert row["nsd"] == pytest.approx(NSD_HALF, abs=1e-6)  # only the zero distances count


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
        ({"pred": np.zeros((1, 1, 4, 4), int), "gt": np.zeros((1, 1, 4, 4), int)}, "3-D label"),
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


# ---- HD95's definition and volumes in mm -------------------------------------------------------
def test_hd95_is_the_larger_directed_95th_percentile():
    """A 10-pixel segment inside a 30-pixel one (same row): prediction -> reference distances
    are all 0; reference -> prediction: 0 (x10), then 1,1,2,2,...,10,10. numpy's 95th
    percentile of those 30 values sits at rank 0.95*29 = 27.55, between 9 (rank 27) and 10
    (rank 28): 9.55. HD95 = max(0, 9.55) = 9.55 (the mean of the two would be 4.775)."""
    short, long = np.zeros((11, 40), np.int64), np.zeros((11, 40), np.int64)
    short[5, 15:25] = 1
    long[5, 5:35] = 1
    (row,) = case_metrics(short, long, [1])
    assert row["hd95"] == pytest.approx(9.55, abs=1e-5)
    (swapped,) = case_metrics(long, short, [1])
    assert swapped["hd95"] == pytest.approx(9.55, abs=1e-5)


def plate(z: int, label: int = 1) -> np.ndarray:
    """A one-voxel-thick 16x16 plate on slice z of a (20, 24, 24) volume."""
    v = np.zeros((20, 24, 24), np.int64)
    v[z, 4:20, 4:20] = label
    return v


# Two parallel plates 3 slices apart, voxel size (3, 0.5, 0.8) mm: every voxel of a plate is
# an edge voxel and its nearest edge voxel of the other plate is straight above or below it,
# 3 slices * 3 mm = 9 mm away: HD95 = 9 mm exactly. NSD: a plate's surface lies on two levels
# of the corner grid (its lower and upper face, rims included), mirror images of each other,
# so each level carries exactly half the plate's surface area. The near level is 2 slices =
# 6 mm from the other plate's surface, the far one 9 mm: NSD = 0 below 6 mm, exactly 1/2 for
# tolerances in [6, 9) mm and 1 from 9 mm. Only the slice spacing enters.
@pytest.mark.parametrize(
    ("tolerance", "expected"), [(5.9, 0.0), (6.0, 0.5), (8.9, 0.5), (9.0, 1.0)]
)
def test_parallel_plates_closed_form_in_mm(tolerance, expected):
    (row,) = case_metrics(
        plate(5), plate(8), [1], spacing=(3.0, 0.5, 0.8), nsd_tolerance=tolerance
    )
    assert row["dice"] == 0.0 and row["empty_case"] == "normal"
    assert row["hd95"] == pytest.approx(9.0, abs=1e-5)
    assert row["nsd"] == pytest.approx(expected, abs=1e-6)


def test_box_volume_dice_iou_and_anisotropic_hd95():
    """A 6x10x10 box and the same box one slice lower (2.5 mm slices): overlap 5x10x10, so
    Dice = 2*500/1200 and IoU = 500/700. The largest edge distance is a top face to the
    other box's top face straight below it, 1 slice = 2.5 mm (nothing is farther), and it
    is held by 100 of each box's 344 edge voxels, more than 5%: HD95 = 2.5 mm."""
    a = np.zeros((12, 16, 16), np.int64)
    a[2:8, 3:13, 3:13] = 1
    b = np.roll(a, 1, axis=0)
    (row,) = case_metrics(b, a, [1], spacing=(2.5, 0.7, 0.7))
    assert row["dice"] == pytest.approx(1000 / 1200)
    assert row["iou"] == pytest.approx(500 / 700)
    assert (row["tp"], row["fp"], row["fn"]) == (500, 100, 100)
    assert row["hd95"] == pytest.approx(2.5, abs=1e-5)


def test_volume_spacing_must_have_three_entries():
    with pytest.raises(SamMedftError, match="three positive numbers"):
        case_metrics(plate(5), plate(5), [1], spacing=(1.0, 1.0))
