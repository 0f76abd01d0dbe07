"""`sam-medft eval --pred DIR --ref LIST_OR_DIR`: score predictions made by anything.

Another model, nnU-Net or an earlier run: whatever wrote the label files, they are scored
with the very metrics, empty-case policy, summary and report of `sam-medft eval RUN`, so
models are compared with one definition. 2-D maps are scored per image (in pixels, or in mm
with `spacing`); NIfTI volumes per case and class in 3-D with the spacing of their headers,
and beside that per 2-D slice (`per_slice.csv`, the summary's `per_slice`). Everything a user
can get wrong (unmatched files, another grid, an unknown class) stops before a file is
written.

Outputs in `out_dir` (default: `<pred>_eval` beside the prediction folder): per_case.csv,
per_slice.csv (volumes), summary.json (with nnU-Net's `metric_per_case`), overlays/ (worst
and best cases; a strip of slices for volumes) and report.html.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sam_medft.console import print_warning
from sam_medft.data.io import read_image
from sam_medft.errors import SamMedftError
from sam_medft.eval.label_files import (
    LabelArray,
    LabelFile,
    check_geometry,
    match_cases,
    read_labels,
    read_reference,
    reference_image,
)
from sam_medft.eval.metrics import HD95_DEFINITION, NSD_DEFINITION, case_metrics
from sam_medft.eval.report import (
    overlay_path,
    pick_cases,
    render_overlay,
    render_volume_strip,
    write_report,
)
from sam_medft.eval.summary import (
    EMPTY_POLICIES,
    summarize,
    write_per_case_csv,
    write_summary_json,
)
from sam_medft.version import __version__

OUTPUTS = ("per_case.csv", "per_slice.csv", "summary.json", "report.html", "overlays")
"""What a scoring writes into its folder (and replaces on the next one, nothing else)."""
SCORED_BY = "sam-medft eval --pred"  # summary.json "run.scored_by": marks a folder as ours


@dataclass
class FolderEvalResult:
    eval_dir: Path
    summary: dict
    rows: list[dict]
    volumes: bool
    slice_summary: dict | None = None
    slice_rows: list[dict] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    report: Path | None = None


# ---- options ---------------------------------------------------------------------------------
def parse_classes(text: str) -> dict[int, str]:
    """`--classes "1=liver,2=tumour"` (or `"1,2"`) -> {1: "liver", 2: "tumour"}."""
    out: dict[int, str] = {}
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        value, _, name = item.partition("=")
        try:
            cid = int(value.strip())
        except ValueError:
            cid = -1
        if cid <= 0 or cid in out:
            raise SamMedftError(
                f"--classes {text!r}: {item!r} is not a distinct label value > 0 (background 0 "
                "is never scored); write e.g. --classes 1=liver,2=tumour or --classes 1,2"
            )
        out[cid] = name.strip() or str(cid)
    if not out:
        raise SamMedftError(f"--classes {text!r} names no class: e.g. --classes 1=liver,2=tumour")
    return out


def parse_spacing(text: str | None) -> tuple[float, float] | None:
    """`--spacing 0.8,0.8` (row, column mm for 2-D maps) -> (0.8, 0.8)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise SamMedftError(
            f"--spacing {text!r} is not a pixel size 'row,column' in mm for 2-D maps, e.g. "
            "--spacing 0.8,0.8 (volumes take theirs from the NIfTI header)"
        )
    return values  # type: ignore[return-value]


def _nnunet_classes(ref: Path) -> tuple[dict[int, str], str] | None:
    """nnU-Net's dataset.json (in the reference folder or the one above it): its labels."""
    for folder in (ref, ref.parent) if ref.is_dir() else (ref.parent,):
        path = folder / "dataset.json"
        if path.is_file():
            try:
                labels = json.loads(path.read_text(encoding="utf-8")).get("labels") or {}
            except (json.JSONDecodeError, AttributeError) as exc:
                raise SamMedftError(f"{path} is not valid JSON ({exc}); fix or move it") from exc
            named = {int(v): str(k) for k, v in labels.items() if isinstance(v, int) and v > 0}
            if named:
                return named, f"labels of {path}"
    return None


def _legend_classes(pred_dir: Path) -> tuple[dict[int, str], str] | None:
    """A `sam-medft predict` folder's legend.json: each PNG value's class name."""
    path = pred_dir / "legend.json"
    if not path.is_file():
        return None
    try:
        legend = json.loads(path.read_text(encoding="utf-8"))
        named = {int(e["png_value"]): str(e["name"]) for e in legend.values()}
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None
    named = {v: n for v, n in named.items() if v > 0}
    return (named, f"{path} (the PNG values sam-medft predict wrote)") if named else None


def _values_found(pairs: Sequence[tuple[LabelFile, Path]]) -> dict[int, str]:
    found: set[int] = set()
    for ref, _ in pairs:
        found |= {int(v) for v in np.unique(read_reference(ref).data)}
    found.discard(0)
    if not found:
        raise SamMedftError(
            "every reference is empty (only 0): there is no class to score; pass --classes "
            "1=name,... to score false positives of those classes"
        )
    return {v: str(v) for v in sorted(found)}


def resolve_classes(
    classes: str | dict[int, str] | None, pred_dir: Path, ref: Path, pairs
) -> tuple[dict[int, str], str]:
    """The classes to score and where they came from: --classes, nnU-Net's dataset.json,
    the prediction folder's legend.json, else every non-zero value in the references."""
    if classes:
        named = parse_classes(classes) if isinstance(classes, str) else dict(classes)
        return named, "--classes"
    for found in (_nnunet_classes(ref), _legend_classes(pred_dir)):
        if found is not None:
            return found
    return _values_found(pairs), "the non-zero values in the references"


def default_out_dir(pred_dir: Path) -> Path:
    return pred_dir.parent / f"{pred_dir.name}_eval"


def check_out_dir(out: Path, pred_dir: Path, ref: Path) -> None:
    """The eval folder may hold only an earlier scoring's outputs, and never sit among the
    user's predictions or references (it would be read as a case next time)."""
    if out.exists() and not out.is_dir():
        raise SamMedftError(f"--out {out} is a file: give a folder for the evaluation")
    out_r = out.resolve()
    for folder, what in ((pred_dir, "--pred"), (ref, "--ref")):
        if folder.is_dir() and out_r.is_relative_to(folder.resolve()):
            raise SamMedftError(
                f"--out {out} is inside the {what} folder {folder}: its files would be read as "
                "cases next time; choose an --out outside it, e.g. --out "
                f"{default_out_dir(pred_dir)}"
            )
    if out.is_dir() and any(out.iterdir()):
        summary = out / "summary.json"
        try:
            ours = json.loads(summary.read_text(encoding="utf-8"))["run"]["scored_by"] == SCORED_BY
        except (OSError, ValueError, KeyError, TypeError):
            ours = False
        if not ours:
            raise SamMedftError(
                f"--out {out} already holds files that an earlier `sam-medft eval --pred` did not "
                "write: nothing was written; choose an empty or new --out folder"
            )


# ---- scoring ---------------------------------------------------------------------------------
def _slice_rows(
    pred: np.ndarray, ref: np.ndarray, ids: list[int], names: dict[int, str], spacing,
    tolerance: float, case: str,
) -> list[dict]:
    """Per-slice 2-D rows of a volume, for slices with a scored class on either side."""
    scored = np.isin(ref, ids) | np.isin(pred, ids)
    rows = []
    for k in np.flatnonzero(scored.any(axis=(1, 2))):
        rows += case_metrics(
            pred[k], ref[k], ids, spacing[1:], tolerance, case=f"{case}#slice{int(k):04d}",
            class_names=names,
        )
    return rows


def _nnunet_entry(ref: LabelFile, pred: Path, rows: list[dict]) -> dict:
    """One case of nnU-Net's `metric_per_case` (its key names), our metrics added."""
    return {
        "reference_file": str(ref.path),
        "prediction_file": str(pred),
        "metrics": {
            str(r["class_id"]): {
                "Dice": r["dice"], "IoU": r["iou"], "HD95": r["hd95"], "NSD": r["nsd"],
                "TP": r["tp"], "FP": r["fp"], "FN": r["fn"],
                "n_ref": r["gt_pixels"], "n_pred": r["pred_pixels"],
            }
            for r in rows
        },
    }


def score_prediction_folder(
    pred_dir: str | Path,
    ref: str | Path,
    *,
    out_dir: str | Path | None = None,
    classes: str | dict[int, str] | None = None,
    spacing: str | Sequence[float] | None = None,
    nsd_tolerance: float = 1.0,
    empty_policy: str = "exclude",
    overlays: int = 2,
    show_progress: bool = True,
) -> FolderEvalResult:
    """Score every prediction in `pred_dir` against its reference (see the module)."""
    pred_dir, ref = Path(pred_dir), Path(ref)
    if empty_policy not in EMPTY_POLICIES:
        raise SamMedftError(
            f"--empty-policy {empty_policy!r} is not known: use {' or '.join(EMPTY_POLICIES)}"
        )
    if not (math.isfinite(float(nsd_tolerance)) and float(nsd_tolerance) > 0):
        raise SamMedftError(f"--nsd-tolerance {nsd_tolerance} must be a positive distance (mm)")
    if overlays < 0:
        raise SamMedftError(f"--overlays {overlays} must be 0 or more")
    pixel = parse_spacing(spacing) if isinstance(spacing, str | None) else tuple(spacing)
    pairs = match_cases(pred_dir, ref)
    volumes = pairs[0][0].is_volume
    if volumes and pixel is not None:
        raise SamMedftError(
            "--spacing is for 2-D label maps; volumes are scored with the voxel size of their "
            "NIfTI headers: leave --spacing out"
        )
    out = Path(out_dir) if out_dir is not None else default_out_dir(pred_dir)
    check_out_dir(out, pred_dir, ref)
    names, classes_from = resolve_classes(classes, pred_dir, ref, pairs)
    ids = sorted(names)

    rows: list[dict] = []
    slice_rows: list[dict] = []
    per_case_nnunet = []
    unknown: set[int] = set()
    spacings = []
    for r, p in tqdm(pairs, desc="eval", unit="case", disable=not show_progress):
        ref_arr, pred_arr = read_reference(r), read_labels(p)
        check_geometry(pred_arr, ref_arr, p, r.path)
        sp = ref_arr.spacing if volumes else (pixel or (1.0, 1.0))
        spacings.append(sp)
        unknown |= {int(v) for v in np.unique(pred_arr.data)} - set(ids) - {0}
        case_rows = case_metrics(
            pred_arr.data, ref_arr.data, ids, sp, nsd_tolerance, case=r.case, class_names=names
        )
        rows += case_rows
        per_case_nnunet.append(_nnunet_entry(r, p, case_rows))
        if volumes:
            slice_rows += _slice_rows(
                pred_arr.data, ref_arr.data, ids, names, sp, nsd_tolerance, r.case
            )
    if unknown:
        print_warning(
            f"the predictions hold the values {sorted(unknown)[:8]}, which are no scored class "
            f"(classes from {classes_from}: {names}); those pixels count as background. If the "
            "predictions hold class indices and the references raw values (e.g. 255), predict "
            "with --values raw, or pass --classes"
        )

    summary = summarize(rows, names, empty_policy)
    slice_summary = summarize(slice_rows, names, empty_policy) if slice_rows else None
    units = (
        "mm (from the NIfTI headers)" if volumes
        else "mm (--spacing)" if pixel is not None else "pixels (no --spacing given)"
    )
    extra = {
        "scored_by": SCORED_BY,
        "predictions": str(pred_dir),
        "reference": str(ref),
        "cases": "3-D volumes" if volumes else "2-D label maps",
        "classes_from": classes_from,
        "nsd_tolerance": float(nsd_tolerance),
        "spacing": units,
        "hd95": HD95_DEFINITION,
        "nsd": NSD_DEFINITION,
        "sam_medft_version": __version__,
    }
    for name in OUTPUTS:  # an earlier scoring's outputs only (check_out_dir made sure)
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    write_per_case_csv(rows, out / "per_case.csv")
    doc = dict(summary)
    if slice_summary is not None:
        write_per_case_csv(slice_rows, out / "per_slice.csv")
        doc["per_slice"] = slice_summary
    doc["metric_per_case"] = per_case_nnunet
    write_summary_json(doc, out / "summary.json", extra)
    result = FolderEvalResult(out, summary, rows, volumes, slice_summary, slice_rows)
    result.overlays = _render_picks(pairs, rows, ids, volumes, out, overlays)
    title = f"Evaluation of the predictions in {pred_dir.name or pred_dir}"
    result.report = write_report(
        out, summary, rows, result.overlays, title, extra=extra, slice_summary=slice_summary
    )
    return result


def _render_picks(pairs, rows, ids, volumes: bool, out: Path, k: int) -> list[Path]:
    """Worst and best cases per class with contours over the image when it is known (the
    reference list's, or nnU-Net's imagesTs/ beside labelsTs/): a strip of slices for
    volumes."""
    if k <= 0:
        return []
    by_case = {r.case: (r, p) for r, p in pairs}
    paths = []
    for pick in pick_cases(rows, k=k):
        ref_file, pred_path = by_case[pick["case"]]
        ref_arr: LabelArray = read_reference(ref_file)
        pred_arr = read_labels(pred_path)
        cid = int(pick["class_id"])
        title = (
            f"{pick['pick']} · class {cid} {pick['class_name']} · {pick['case']} · "
            f"Dice {float(pick['dice']):.3f}"
        )
        target = overlay_path(out, pick)
        if volumes:
            paths.append(render_volume_strip(ref_arr.data, pred_arr.data, cid, target,
                                             spacing=ref_arr.spacing, title=title,
                                             image=reference_image(ref_file, ref_arr)))
            continue
        if ref_file.image is not None:
            image = np.clip(read_image(ref_file.image), 0, 255).astype(np.uint8)
        else:  # no image known: the reference shaded grey, so the contours have a ground
            image = np.where(ref_arr.data == cid, 90, 30).astype(np.uint8)
        paths.append(render_overlay(image, ref_arr.data, pred_arr.data, [cid], target,
                                    title=title))
    return paths


__all__ = [
    "OUTPUTS",
    "FolderEvalResult",
    "check_out_dir",
    "parse_classes",
    "parse_spacing",
    "resolve_classes",
    "score_prediction_folder",
]
