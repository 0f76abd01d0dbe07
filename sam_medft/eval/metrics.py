"""Per-image, per-class segmentation metrics at the original resolution.

The study averaged Dice with background included and silently scored an empty/empty pair
as perfect. Here every row says which empty case it is, and undefined values stay NaN so
that the policy applied later (``summary.summarize``) is explicit and written down.
Distances come from MONAI (``compute_hausdorff_distance``, ``compute_surface_dice``), not
from hand-written distance transforms, and follow the field's reference definitions:

- HD95 is the larger of the two directed 95th percentiles (prediction -> reference and
  reference -> prediction) of the distances between the edge pixels/voxels of both masks.
- NSD (normalised surface Dice) weights every surface element by its length (2-D) or area
  (3-D), as DeepMind's ``surface-distance`` does (the Medical Segmentation Decathlon,
  Metrics Reloaded): MONAI's ``use_subvoxels=True``. Counting boundary pixels instead
  (MONAI's default) over-weights staircase edges and shifts the score by up to a few
  hundredths.

Label maps are 2-D (H, W) images or 3-D (D, H, W) volumes; spacing has one entry per axis.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import (
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)

from sam_medft.errors import SamMedftError

EMPTY_CASES = ("normal", "both_empty", "false_positive", "miss")
"""Values of a row's ``empty_case``: which side (gt, pred) is empty for that class."""

ROW_KEYS = (
    "case",
    "class_id",
    "class_name",
    "dice",
    "iou",
    "hd95",
    "nsd",
    "tp",
    "fp",
    "fn",
    "gt_pixels",
    "pred_pixels",
    "empty_case",
)
"""Keys of a per-case row, in the order of the per-case CSV columns."""

METRIC_NAME = "sam_medft_seg"


def hf_metric_path() -> str:
    """Folder of the ``evaluate`` metric module, for ``evaluate.load(hf_metric_path())``.

    The folder name equals the script name because that is how ``evaluate.load`` finds a
    local module; it loads offline since nothing is fetched from the Hub.
    """
    return str(Path(__file__).resolve().parent / "hf_metric" / METRIC_NAME)


HD95_DEFINITION = (
    "HD95: the larger of the two directed 95th percentiles of the distances between the "
    "edge pixels/voxels of prediction and reference (MONAI compute_hausdorff_distance)"
)
NSD_DEFINITION = (
    "NSD: normalised surface Dice with each surface element weighted by its length (2-D) or "
    "area (3-D), as in DeepMind's surface-distance (MONAI compute_surface_dice, "
    "use_subvoxels=True)"
)


def _check_spacing(spacing: Sequence[float], ndim: int = 2) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        what = (
            "a pair of positive numbers (row, column) for a 2-D image: give the pixel size in "
            "mm, e.g. spacing=(0.8, 0.8), or (1.0, 1.0) for pixels."
            if ndim == 2
            else "three positive numbers (slice, row, column) for a 3-D volume: give the voxel "
            "size in mm, e.g. spacing=(2.5, 0.8, 0.8)."
        )
        raise SamMedftError(f"spacing={spacing!r} is not {what}")
    return values


def _check_label_map(name: str, arr: np.ndarray, case: str) -> np.ndarray:
    arr = np.asarray(arr)
    where = f" (case {case!r})" if case else ""
    if arr.ndim not in (2, 3):
        raise SamMedftError(
            f"{name}{where} has shape {arr.shape}; metrics need a 2-D label map (H, W) or a 3-D "
            "label volume (D, H, W) of class ids: argmax the class axis of logits first."
        )
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise SamMedftError(
            f"{name}{where} has dtype {arr.dtype}; metrics need integer class ids: threshold or "
            "argmax the probabilities and cast with .astype(np.int64)."
        )
    return arr


def _validate(
    pred: np.ndarray,
    gt: np.ndarray,
    class_ids: Sequence[int],
    nsd_tolerance: float,
    case: str,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    pred = _check_label_map("prediction", pred, case)
    gt = _check_label_map("reference mask", gt, case)
    if pred.shape != gt.shape:
        where = f" for case {case!r}" if case else ""
        raise SamMedftError(
            f"prediction shape {pred.shape} differs from the reference mask shape {gt.shape}"
            f"{where}: metrics are computed at the original resolution, so resize the "
            "prediction back to the mask size (SamGeometry.logits_to_original) first."
        )
    ids = [int(c) for c in class_ids]
    if not ids or any(c <= 0 for c in ids) or len(set(ids)) != len(ids):
        raise SamMedftError(
            f"class_ids={list(class_ids)!r} must be distinct foreground class ids (> 0, "
            "background 0 is never scored): pass e.g. [1, 2] for a 3-label mask."
        )
    if not (math.isfinite(float(nsd_tolerance)) and float(nsd_tolerance) > 0):
        raise SamMedftError(
            f"nsd_tolerance={nsd_tolerance!r} must be a positive distance in the units of "
            "spacing (mm when spacing is in mm, pixels when spacing is 1): e.g. 1.0."
        )
    return pred, gt, ids


def _empty_case(gt_pixels: int, pred_pixels: int) -> str:
    if gt_pixels == 0 and pred_pixels == 0:
        return "both_empty"
    if gt_pixels == 0:
        return "false_positive"
    if pred_pixels == 0:
        return "miss"
    return "normal"


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    class_ids: Sequence[int],
    spacing: Sequence[float] | None = None,
    nsd_tolerance: float = 1.0,
    *,
    case: str = "",
    class_names: dict[int, str] | None = None,
) -> list[dict]:
    """Dice, IoU, HD95 and NSD of one image or volume, one row per foreground class.

    ``spacing`` is the (row, column) pixel size of an image or the (slice, row, column)
    voxel size of a volume (None: 1 per axis, i.e. pixels); HD95 is in its units and
    ``nsd_tolerance`` is too. Raw values of the empty cases are explicit: Dice/IoU are NaN
    for ``both_empty`` and 0 for ``false_positive``/``miss``; HD95 and NSD are NaN whenever a
    side is empty.
    """
    pred, gt, ids = _validate(pred, gt, class_ids, nsd_tolerance, case)
    spacing = _check_spacing((1.0,) * pred.ndim if spacing is None else spacing, pred.ndim)
    names = class_names or {}

    pred_oh = np.stack([pred == c for c in ids])  # (K, [D,] H, W) bool
    gt_oh = np.stack([gt == c for c in ids])
    axes = tuple(range(1, pred_oh.ndim))
    tp = np.logical_and(pred_oh, gt_oh).sum(axis=axes)
    pred_px = pred_oh.sum(axis=axes)
    gt_px = gt_oh.sum(axis=axes)
    cases = [_empty_case(int(g), int(p)) for g, p in zip(gt_px, pred_px, strict=True)]

    y_pred = torch.from_numpy(pred_oh).unsqueeze(0).float()  # (1, K, H, W)
    y = torch.from_numpy(gt_oh).unsqueeze(0).float()
    # ignore_empty=False: a false positive scores 0 instead of MONAI's NaN; both_empty
    # (MONAI's 1) is set to NaN below so that only the summary policy decides it.
    dice = compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0].tolist()
    iou = compute_iou(y_pred, y, include_background=True, ignore_empty=False)[0].tolist()

    hd95 = [math.nan] * len(ids)
    nsd = [math.nan] * len(ids)
    normal = [i for i, e in enumerate(cases) if e == "normal"]
    if normal:
        sel_pred, sel_gt = y_pred[:, normal], y[:, normal]
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about its own internal use of a deprecated argument.
            warnings.simplefilter("ignore", FutureWarning)
            # directed=False: the larger of the two directed 95th percentiles
            hd = compute_hausdorff_distance(
                sel_pred, sel_gt, include_background=True, percentile=95, spacing=spacing
            )[0].tolist()
            sd = compute_surface_dice(
                sel_pred,
                sel_gt,
                class_thresholds=[float(nsd_tolerance)] * len(normal),
                include_background=True,
                spacing=spacing,
                use_subvoxels=True,  # surface elements weighted by length/area
            )[0].tolist()
        for j, i in enumerate(normal):
            hd95[i], nsd[i] = float(hd[j]), float(sd[j])

    rows = []
    for i, c in enumerate(ids):
        both_empty = cases[i] == "both_empty"
        rows.append(
            {
                "case": case,
                "class_id": c,
                "class_name": names.get(c, str(c)),
                "dice": math.nan if both_empty else float(dice[i]),
                "iou": math.nan if both_empty else float(iou[i]),
                "hd95": hd95[i],
                "nsd": nsd[i],
                "tp": int(tp[i]),
                "fp": int(pred_px[i] - tp[i]),
                "fn": int(gt_px[i] - tp[i]),
                "gt_pixels": int(gt_px[i]),
                "pred_pixels": int(pred_px[i]),
                "empty_case": cases[i],
            }
        )
    return rows


def dataset_metrics(
    predictions: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    class_ids: Sequence[int],
    spacing: Sequence[float] | Sequence[Sequence[float]] = (1.0, 1.0),
    nsd_tolerance: float = 1.0,
    *,
    case_ids: Sequence[str] | None = None,
    class_names: dict[int, str] | None = None,
) -> list[dict]:
    """Rows of ``case_metrics`` for a list of images (one spacing for all, or one per image).

    Shared by the CLI and the ``evaluate`` module so both give the same numbers.
    """
    if len(predictions) != len(references):
        raise SamMedftError(
            f"got {len(predictions)} predictions and {len(references)} reference masks: pass "
            "one prediction per reference, in the same order."
        )
    if case_ids is None:
        case_ids = [f"case_{i:04d}" for i in range(len(references))]
    elif len(case_ids) != len(references):
        raise SamMedftError(
            f"got {len(case_ids)} case ids for {len(references)} images: pass one id per image."
        )
    spacings = _per_image_spacing(spacing, len(references))
    rows: list[dict] = []
    for p, g, cid, sp in zip(predictions, references, case_ids, spacings, strict=True):
        rows.extend(
            case_metrics(
                np.asarray(p),
                np.asarray(g),
                class_ids,
                sp,
                nsd_tolerance,
                case=str(cid),
                class_names=class_names,
            )
        )
    return rows


def _per_image_spacing(
    spacing: Sequence[float] | Sequence[Sequence[float]], n: int
) -> list[Sequence[float]]:
    """One (row, col) spacing per image: a single pair is shared, a list gives one each."""
    seq = list(spacing) if not isinstance(spacing, str) else [spacing]
    if seq and all(isinstance(s, Sequence | np.ndarray) and not isinstance(s, str) for s in seq):
        if len(seq) != n:
            raise SamMedftError(
                f"got {len(seq)} spacings for {n} images: pass one (row, column) pair for all "
                "images, or one pair per image."
            )
        return seq  # type: ignore[return-value]
    return [spacing] * n  # type: ignore[list-item]
