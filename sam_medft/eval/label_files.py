"""Label files from anywhere, matched by case id: 2-D PNG/TIFF/npy maps and 3-D NIfTI volumes.

`sam-medft eval --pred DIR --ref LIST_OR_DIR` scores predictions made by any tool (another
model, nnU-Net, an earlier run), so this module only reads and pairs files: a case id is a
file's name without its suffix (`.nii.gz` counts as one), as nnU-Net names its cases; a
reference list (image,mask CSV) also answers to its image's name, which is what `sam-medft
predict LIST` writes. NIfTI is read as training reads it (`data.volumes.read_volume`:
nibabel, reoriented to RAS+); a prediction must lie on its reference's voxel grid (shape and
affine, whatever order its file stores the axes in), since a resampled prediction scored
voxel by voxel would be silently wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_medft.config import IntensityConfig
from sam_medft.data.dicom_seg import is_dicom_seg
from sam_medft.data.io import IMAGE_EXTENSIONS, LOSSY_MASK_EXTENSIONS, read_mask
from sam_medft.data.lists import read_pair_list
from sam_medft.data.volume_source import scale_volume
from sam_medft.data.volumes import (
    AXES,
    Volume,
    plane,
    plane_spacing,
    read_geometry,
    read_volume,
)
from sam_medft.data.volumes import read_labels as read_volume_labels
from sam_medft.errors import SamMedftError

VOLUME_SUFFIXES = (".nii.gz", ".nii")
LABEL_SUFFIXES = (
    *VOLUME_SUFFIXES,
    *(s for s in IMAGE_EXTENSIONS if s not in LOSSY_MASK_EXTENSIONS),
)
LIST_SUFFIXES = (".csv", ".tsv", ".txt")
_CHANNEL_RE = re.compile(r"_\d{4}$")  # nnU-Net image channel suffix: case_0000 -> case
_SHOW = 3
_AFFINE_TOL = 1e-3  # mm: header round-off, not a different grid
AXIAL = AXES["axial"]  # volumes are scored slice by slice along this canonical axis


@dataclass(frozen=True)
class LabelFile:
    """One reference or prediction label file, and (references from a list) its image."""

    case: str
    path: Path
    image: Path | None = None

    @property
    def is_volume(self) -> bool:
        return is_volume_path(self.path) or is_dicom_seg(self.path)


@dataclass
class LabelArray:
    """A label map as int64 in (slice, row, column) order for volumes, with its geometry."""

    data: np.ndarray
    spacing: tuple[float, ...] | None  # mm per axis of `data`; None: 2-D, pixels
    affine: np.ndarray | None = None  # volumes: canonical (RAS+) voxel -> world matrix
    axis_codes: str = ""  # volumes: the stored file's orientation codes, e.g. "LPS"


def is_volume_path(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def case_id(path: Path) -> str:
    """`liver_003.nii.gz` -> `liver_003`, `a.png` -> `a`."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _label_files(folder: Path, role: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or not p.name.lower().endswith(LABEL_SUFFIXES):
            continue
        if p.name.endswith((".probs.npy", ".overlay.png")):  # `predict --probs/--overlays`
            continue
        cid = case_id(p)
        if cid in found:
            raise SamMedftError(
                f"{role} folder {folder}: {found[cid]} and {p} share the case id {cid!r}; keep "
                "one label file per case name (case ids are file names without the suffix)"
            )
        found[cid] = p
    if not found:
        raise SamMedftError(
            f"{role} folder {folder} holds no label files ({', '.join(LABEL_SUFFIXES)}): give "
            "the folder the label maps are in (e.g. nnU-Net's labelsTs/)"
        )
    return found


def reference_files(ref: str | Path) -> list[LabelFile]:
    """A folder of label files, or an image,mask list (CSV/TSV, as the study writes them)."""
    ref = Path(ref)
    if ref.is_dir():
        return [LabelFile(c, p) for c, p in _label_files(ref, "reference").items()]
    if ref.is_file() and ref.suffix.lower() in LIST_SUFFIXES:
        pairs = read_pair_list(ref, folders_ok=True)  # an image may be a DICOM series
        return [LabelFile(case_id(p.image), p.mask, p.image) for p in pairs]
    if ref.is_file():
        raise SamMedftError(
            f"--ref {ref} is a file but not a list (.csv/.tsv/.txt of image,mask pairs): give "
            "a folder of reference label files or such a list"
        )
    raise SamMedftError(f"--ref {ref} not found: give a folder of reference label files or a list")


def match_cases(pred_dir: str | Path, ref: str | Path) -> list[tuple[LabelFile, Path]]:
    """(reference, prediction) per case; any unmatched file on either side stops here."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise SamMedftError(f"--pred {pred_dir} is not a folder: give the folder of predictions")
    preds = _label_files(pred_dir, "prediction")
    refs = reference_files(ref)
    pairs, used, missing = [], set(), []
    for r in refs:
        keys = [r.case, case_id(r.path)]
        keys += [_CHANNEL_RE.sub("", k) for k in keys]
        key = next((k for k in keys if k in preds), None)
        if key is None:
            missing.append(r)
            continue
        used.add(key)
        pairs.append((r, preds[key]))
    extra = sorted(set(preds) - used)
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} reference case(s) have no prediction in {pred_dir}, e.g. "
                + ", ".join(f"{m.case} ({m.path})" for m in missing[:_SHOW])
            )
        if extra:
            parts.append(
                f"{len(extra)} prediction(s) have no reference in {ref}, e.g. "
                + ", ".join(str(preds[e]) for e in extra[:_SHOW])
            )
        raise SamMedftError(
            "; ".join(parts) + ". Predictions are matched to references by file name without "
            "the suffix (case_001.nii.gz <-> case_001.nii.gz, a.png <-> a.npy); rename them, "
            "or score a --ref list of exactly the predicted cases"
        )
    kinds = {r.is_volume for r, _ in pairs} | {is_volume_path(p) for _, p in pairs}
    if len(kinds) > 1:
        vol = next(p for r, p in pairs if is_volume_path(p) or r.is_volume)
        raise SamMedftError(
            f"the predictions and references mix 3-D volumes (e.g. {vol}) and 2-D label maps: "
            "score volumes against volumes (NIfTI) and 2-D maps against 2-D maps"
        )
    return pairs


def read_labels(path: Path) -> LabelArray:
    """A label file -> int64 array; volumes (read as training reads them: reoriented to RAS+,
    `data.volumes`) as axial slices (slice, row, column) with their spacing in mm."""
    if not is_volume_path(path):
        return LabelArray(read_mask(path), None)
    return _axial(read_volume(path, label=True))


def read_reference(ref: LabelFile) -> LabelArray:
    """A reference's labels: `read_labels`, or a DICOM-SEG placed on its list image's grid
    (a SEG holds frames of some slices only: without its image series it has no grid)."""
    if not is_dicom_seg(ref.path):
        return read_labels(ref.path)
    if ref.image is None:
        raise SamMedftError(
            f"reference {ref.path} is a DICOM-SEG file: it is read on the grid of the image "
            "series it was drawn on, so give --ref as a list of `image_series,seg.dcm` rows")
    return _axial(read_volume_labels(ref.path, read_geometry(ref.image)))


def _axial(vol: Volume) -> LabelArray:
    data = np.stack([plane(vol.array, AXIAL, k) for k in range(vol.shape[AXIAL])])
    spacing = (vol.spacing[AXIAL], *plane_spacing(vol.spacing, AXIAL))
    return LabelArray(data, spacing, vol.affine, vol.orientation)


def reference_image(ref: LabelFile, like: LabelArray) -> np.ndarray | None:
    """The image under a reference volume, as (slice, row, column) grey values 0..255 for the
    report, when one is known: the list's image, or nnU-Net's `imagesTs/<case>_0000.nii.gz`
    beside `labelsTs/`. None when there is none, or it is not on the reference's grid."""
    candidates = [ref.image] if ref.image is not None else []
    folder = ref.path.parent
    if folder.name.startswith("labels"):  # nnU-Net: labelsTr/labelsTs <-> imagesTr/imagesTs
        images = folder.parent / ("images" + folder.name[len("labels"):])
        candidates += [images / f"{ref.case}_0000{s}" for s in VOLUME_SUFFIXES]
    for path in candidates:
        if path is None or not path.is_file() or not is_volume_path(path):
            continue
        vol = read_volume(path)
        if like.affine is None or vol.shape != tuple(like.data.shape[i] for i in (2, 1, 0)) \
                or not np.allclose(vol.affine, like.affine, atol=_AFFINE_TOL):
            return None
        grey = scale_volume(vol.array, IntensityConfig(), str(path))  # robust min-max
        return np.stack([plane(grey, AXIAL, k) for k in range(vol.shape[AXIAL])])
    return None


def check_geometry(pred: LabelArray, ref: LabelArray, pred_path: Path, ref_path: Path) -> None:
    """A prediction on another grid than its reference stops with both files named."""
    if pred.data.shape != ref.data.shape:
        raise SamMedftError(
            f"prediction {pred_path} has shape {_shape(pred)} but its reference {ref_path} has "
            f"{_shape(ref)}: predictions are scored voxel by voxel, so write them on the "
            "reference's grid (same size; for volumes also the same affine)"
        )
    if ref.affine is None or pred.affine is None:
        return
    if not np.allclose(pred.affine, ref.affine, atol=_AFFINE_TOL):
        raise SamMedftError(
            f"prediction {pred_path} and its reference {ref_path} have the same shape but "
            f"different affines (orientation {pred.axis_codes} vs {ref.axis_codes}, spacing "
            f"{_mm(pred.spacing)} vs {_mm(ref.spacing)} mm): the prediction was resampled or "
            "reoriented; write it with the reference's affine (nibabel: "
            "Nifti1Image(labels, ref.affine, ref.header))"
        )


def _shape(a: LabelArray) -> tuple[int, ...]:
    return tuple(int(s) for s in a.data.shape)


def _mm(spacing: tuple[float, ...] | None) -> str:
    return "x".join(f"{s:g}" for s in spacing) if spacing else "-"


__all__ = [
    "LabelArray",
    "LabelFile",
    "case_id",
    "check_geometry",
    "is_volume_path",
    "match_cases",
    "read_labels",
    "read_reference",
    "reference_files",
    "reference_image",
]
