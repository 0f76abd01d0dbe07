"""Reading and writing 3-D volumes: NIfTI files and DICOM series, in one canonical orientation.

Why one module: every caller (data sources, `data check`, `predict`, the evaluator's 3-D
metrics and report strips) must agree on voxel order, spacing and how a prediction goes back
into the source file's geometry; doing it twice would put a flipped or shifted label volume
into a viewer. Formats are read by the field's libraries (nibabel for NIfTI, MONAI's
`PydicomReader` on pydicom for DICOM series); nothing here parses a file format itself.

The API:

- `is_volume(path)`: a `.nii`/`.nii.gz` file, or a folder holding a DICOM series;
  `is_label_volume(path)` also accepts a DICOM-SEG file.
- `volume_case_id(path)`: the case name (file name without `.nii.gz`, or the folder name).
- `read_volume(path, label=False) -> Volume`: `Volume.array` is the voxel array reoriented
  (never resampled) to the closest canonical RAS+ orientation (nibabel's
  `as_closest_canonical`): index along axis 0 grows towards the patient's Right, axis 1
  towards Anterior, axis 2 towards Superior, so planes across axis 2 are axial.
  `Volume.affine` maps those voxel indices to RAS+ millimetres, `Volume.spacing` is the
  voxel size in mm per array axis, `Volume.orientation` the source file's axis codes
  (e.g. "LPS"), and the source affine/header are kept so that
- `write_label_volume(path, labels, like=volume)` writes a label array given in the
  canonical orientation back in the source's own voxel order, affine and header (as NIfTI,
  also for a DICOM source), atomically (a temporary file renamed into place).
- `read_labels(path, image) -> Volume`: a label volume for `image`, also from a DICOM-SEG
  file (`dicom_seg`: highdicom places its segments onto the image's grid).
- `read_geometry(path) -> Geometry`: shape, affine, spacing and orientation as `read_volume`
  gives them, from a NIfTI header alone (fast: for listing and checking many files).
- `check_same_geometry(image, label)`: one error naming both files when a label volume does
  not lie on its image's voxel grid (Volumes or Geometries).
- `plane(array, axis, k)` / `set_plane(array, axis, k, values)` and `plane_spacing`: the 2-D
  slice a viewer shows (rows from Anterior/Superior at the top), and its (row, col) spacing
  in mm; `AXES` names the axes ("axial" = 2, "coronal" = 1, "sagittal" = 0).

Labels are read as int64 (a float label file must hold whole numbers); images as float32
with the file's scaling (NIfTI scl_slope/inter, DICOM rescale slope/intercept) applied, so CT
values are Hounsfield units. 4-D files with one volume are squeezed; true multi-channel 4-D
files are refused with a message (nnU-Net stores one file per channel instead).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from sam_medft.data.dicom_seg import is_dicom_seg, read_seg_on_grid
from sam_medft.data.io import MissingFileError
from sam_medft.errors import SamMedftError
from sam_medft.files import disk_errors

NIFTI_SUFFIXES = (".nii.gz", ".nii")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
_RAS = ornt.axcodes2ornt(("R", "A", "S"))
_GEOMETRY_TOLERANCE_MM = 1e-3


@dataclass(frozen=True, eq=False)
class Volume:
    """A volume in canonical RAS+ voxel order, plus what is needed to write into its source."""

    array: np.ndarray  # canonical (RAS+) voxel order; float32 image or int64 labels
    affine: np.ndarray  # 4x4, canonical voxel index -> RAS+ mm
    path: Path
    source_affine: np.ndarray  # 4x4 of the file as stored (RAS+ mm)
    source_ornt: np.ndarray = field(repr=False)  # nibabel orientation of the stored axes
    header: nib.Nifti1Header | nib.Nifti2Header | None = field(default=None, repr=False)
    kind: str = "nifti"  # "nifti" | "dicom"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each canonical array axis."""
        return tuple(float(s) for s in nib.affines.voxel_sizes(self.affine))  # type: ignore

    @property
    def orientation(self) -> str:
        """The stored file's axis codes, e.g. "LPS" for a DICOM-ordered NIfTI."""
        return "".join(ornt.ornt2axcodes(self.source_ornt))

    @property
    def case_id(self) -> str:
        return volume_case_id(self.path)

    def to_source(self, canonical: np.ndarray) -> np.ndarray:
        """A canonical-order array put back into the stored file's voxel order."""
        back = ornt.ornt_transform(_RAS, self.source_ornt)
        return np.ascontiguousarray(ornt.apply_orientation(canonical, back))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry "DICM" at byte 128 (whatever their name)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_series(path: str | Path) -> bool:
    """A folder whose first files (in name order) include a DICOM file."""
    p = Path(path)
    if not p.is_dir():
        return False
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    return any(is_dicom_file(f) for f in files[:8])


def is_volume(path: str | Path) -> bool:
    """Whether `path` names a volume this module reads (a NIfTI file or a DICOM series)."""
    p = Path(path)
    return (is_nifti(p) and p.is_file()) or is_dicom_series(p)


def is_label_volume(path: str | Path) -> bool:
    """Whether `path` names a label volume: a volume, or a DICOM-SEG file (read on its image's
    grid by `read_labels`)."""
    return is_volume(path) or is_dicom_seg(path)


def volume_case_id(path: str | Path) -> str:
    """The case name of a volume path: `case_001.nii.gz` -> `case_001`, a folder -> its name."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: str | Path, label: bool = False) -> Volume:
    """Read a NIfTI file or a DICOM series folder, reoriented to canonical RAS+."""
    p = Path(path)
    if not (p.exists() or p.is_symlink()):
        raise MissingFileError(f"{p} does not exist: check the path (or the list that names it)")
    if is_nifti(p):
        img = _load_nifti(p)
        header = img.header.copy()
        kind = "nifti"
    elif p.is_dir():
        if not is_dicom_series(p):
            raise SamMedftError(
                f"{p} is a folder but holds no DICOM files (files with 'DICM' at byte 128): "
                "give a NIfTI file (.nii/.nii.gz) or a folder with one DICOM series")
        img = _load_dicom_series(p)
        header = None
        kind = "dicom"
    else:
        raise SamMedftError(
            f"{p} is not a volume this package reads: give a NIfTI file (.nii or .nii.gz) or a "
            "folder holding one DICOM series (convert other formats, e.g. .mha/.nrrd, to NIfTI "
            "with SimpleITK or 3D Slicer)")
    src_ornt = ornt.io_orientation(img.affine)
    canonical = nib.as_closest_canonical(img)
    array = _volume_array(canonical, p, label)
    return Volume(array=array, affine=np.asarray(canonical.affine, dtype=np.float64), path=p,
                  source_affine=np.asarray(img.affine, dtype=np.float64), source_ornt=src_ornt,
                  header=header, kind=kind)


def read_labels(path: str | Path, image: Volume | Geometry) -> Volume:
    """The label volume of `image`: a NIfTI file or DICOM series as `read_volume` reads it
    (the caller checks its grid), or a DICOM-SEG file placed onto the image's voxel grid
    (segment numbers as values; an error naming both files when it was drawn elsewhere)."""
    p = Path(path)
    if not is_dicom_seg(p):
        return read_volume(p, label=True)
    array = read_seg_on_grid(p, image.affine, image.shape, image.path)
    source_ornt = ornt.axcodes2ornt(tuple(image.orientation))
    if isinstance(image, Volume):
        source_affine = image.source_affine
    else:  # undo as_closest_canonical: canonical affine = stored affine @ inv_ornt_aff
        stored_shape = tuple(image.shape[int(axis)] for axis, _ in source_ornt)
        source_affine = image.affine @ np.linalg.inv(ornt.inv_ornt_aff(source_ornt, stored_shape))
    return Volume(array=array, affine=np.asarray(image.affine, dtype=np.float64), path=p,
                  source_affine=source_affine, source_ornt=source_ornt, kind="dicom-seg")


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels lie, in canonical RAS+ order, read from the header only."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    orientation: str  # the stored file's axis codes

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in nib.affines.voxel_sizes(self.affine))  # type: ignore


def read_geometry(path: str | Path, label: bool = False) -> Geometry:
    """Shape, affine and orientation in canonical order without decoding a NIfTI file's voxels
    (a DICOM series is read whole: its geometry comes from every slice's position)."""
    p = Path(path)
    if is_nifti(p) and p.is_file():
        img = _load_nifti(p)
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            _volume_array(img, p, label)  # the one message for non-3-D files
        src = ornt.io_orientation(img.affine)
        affine = img.affine @ ornt.inv_ornt_aff(src, shape)
        canonical = [0, 0, 0]
        for stored_axis, (axis, _) in enumerate(src):
            canonical[int(axis)] = shape[stored_axis]
        return Geometry(p, tuple(canonical), np.asarray(affine, dtype=np.float64),
                        "".join(ornt.ornt2axcodes(src)))
    vol = read_volume(p, label=label)
    return Geometry(p, vol.shape, vol.affine, vol.orientation)


def _load_nifti(p: Path) -> nib.spatialimages.SpatialImage:
    try:
        img = nib.load(str(p))
        img.dataobj.shape  # noqa: B018  (header parsed)
        return img
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, zlib errors...
        raise SamMedftError(
            f"{p} cannot be read as NIfTI ({e.__class__.__name__}: {str(e).splitlines()[0][:120]}): "
            "the file is corrupt or not NIfTI; re-export it") from None


def _load_dicom_series(p: Path) -> nib.Nifti1Image:
    from monai.data import PydicomReader  # noqa: PLC0415  (monai import is slow; only here)

    reader = PydicomReader()  # affine in RAS+ (affine_lps_to_ras=True), slices sorted
    try:
        data, meta = reader.get_data(reader.read(str(p)))
    except Exception as e:
        raise SamMedftError(
            f"{p} cannot be read as one DICOM series ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''}): the folder must hold the "
            "slices of exactly one series (one folder per series)") from None
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(meta["affine"]))


def _volume_array(img: nib.spatialimages.SpatialImage, p: Path, label: bool) -> np.ndarray:
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise SamMedftError(
            f"{p} has shape {tuple(shape)}; one 3-D volume per file is expected (store each "
            "channel or time point in its own file, as nnU-Net's _0000, _0001 files do)")
    if not label:
        return np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    raw = np.asanyarray(img.dataobj).reshape(shape)
    if not np.issubdtype(raw.dtype, np.integer):
        rounded = np.rint(raw)
        if not np.allclose(raw, rounded, atol=1e-3):
            raise SamMedftError(
                f"{p} holds non-integer values, so it is an image, not a label volume: check "
                "that the image and label paths are not swapped")
        raw = rounded
    return raw.astype(np.int64)


def check_same_geometry(image: Volume | Geometry, labels: Volume | Geometry) -> None:
    """One error naming both files when `labels` does not lie on the image's voxel grid."""
    if image.shape != labels.shape:
        raise SamMedftError(
            f"{labels.path} has shape {labels.shape} but its image {image.path} has "
            f"{image.shape} (in RAS order): a label volume must lie on its image's voxel grid "
            "(resample it with nearest-neighbour, or fix the image/label pairing)")
    if not np.allclose(image.affine, labels.affine, atol=_GEOMETRY_TOLERANCE_MM):
        raise SamMedftError(
            f"{labels.path} and its image {image.path} have the same shape {image.shape} but "
            f"different positions in space (affines differ; spacing {_mm(labels.spacing)} vs "
            f"{_mm(image.spacing)} mm, origin {_mm(labels.affine[:3, 3])} vs "
            f"{_mm(image.affine[:3, 3])} mm): resample the labels onto the image (nearest-"
            "neighbour), or fix the pairing")


def _mm(values) -> str:
    return "x".join(f"{float(v):.3g}" for v in values)


def write_label_volume(path: str | Path, labels: np.ndarray, like: Volume) -> Path:
    """Write canonical-order `labels` as NIfTI in `like`'s stored voxel order, affine and header,
    so it overlays its source in 3D Slicer / ITK-SNAP. Whole or not at all."""
    p = Path(path)
    labels = np.asarray(labels)
    if labels.shape != like.shape:
        raise SamMedftError(
            f"cannot write {p}: the label array has shape {labels.shape} but its source volume "
            f"{like.path} has {like.shape}")
    if not is_nifti(p):
        raise SamMedftError(f"cannot write {p}: label volumes are written as .nii or .nii.gz")
    data = like.to_source(labels).astype(_label_dtype(labels))
    if like.header is not None:
        img = type_of(like.header)(data, like.source_affine, header=like.header.copy())
    else:
        img = nib.Nifti1Image(data, like.source_affine)
        img.set_qform(like.source_affine, code=1)
        img.set_sform(like.source_affine, code=1)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)  # a CT header's rescale must not touch labels
    img.header["cal_min"], img.header["cal_max"] = 0, float(data.max(initial=0))
    img.header["descrip"] = b"sam-medft labels"
    with disk_errors(p, f"the label volume {p.name}"):
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".tmp-{secrets.token_hex(4)}-{p.name}")  # keeps .nii.gz: compressed
        try:
            nib.save(img, str(tmp))
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    return p


def type_of(header) -> type:
    """The image class of a NIfTI header (NIfTI-1 or NIfTI-2)."""
    return nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image


def _label_dtype(labels: np.ndarray) -> np.dtype:
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if lo >= 0 and hi < 256:
        return np.dtype(np.uint8)
    if lo >= -32768 and hi < 32768:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


# ---- 2-D planes --------------------------------------------------------------------------


def axis_index(axis: str | int) -> int:
    """`axial`/`coronal`/`sagittal` (or 0/1/2) -> the canonical array axis."""
    if isinstance(axis, int) and axis in (0, 1, 2):
        return axis
    if isinstance(axis, str) and axis.lower() in AXES:
        return AXES[axis.lower()]
    raise SamMedftError(f"slice axis {axis!r} is not one of axial, coronal, sagittal")


def plane(array: np.ndarray, axis: str | int, k: int) -> np.ndarray:
    """Slice k across `axis` as a viewer shows it: the remaining two axes as (row, col) with
    rows running from Anterior (axial) or Superior (coronal, sagittal) at the top."""
    a = axis_index(axis)
    return np.ascontiguousarray(np.flipud(np.take(array, k, axis=a).T))


def set_plane(array: np.ndarray, axis: str | int, k: int, values: np.ndarray) -> None:
    """The inverse of `plane`: write a (row, col) slice back into `array` in place."""
    a = axis_index(axis)
    index: list = [slice(None)] * array.ndim
    index[a] = k
    array[tuple(index)] = np.flipud(values).T


def plane_spacing(spacing: tuple[float, float, float], axis: str | int) -> tuple[float, float]:
    """(row, col) pixel spacing in mm of the planes across `axis`."""
    a = axis_index(axis)
    first, second = (s for i, s in enumerate(spacing) if i != a)
    return (float(second), float(first))
