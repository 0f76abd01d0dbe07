"""Saving the app's label maps: a PNG of class indices (the palette PNG `predict` writes, so
a downloaded map reads back like predict's), or NIfTI with the source's geometry (a volume,
NIfTI or DICOM series: `write_label_volume`, as `predict` writes it, in the source's voxel
order, affine and header, so it overlays the scan in 3D Slicer; a DICOM slice's position,
orientation and spacing; a unit affine for plain images). Files are written whole or not at
all (temporary name, then rename) into the app's own output folder, never next to the
user's files."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sam_medft.app.scan import NIFTI_SUFFIXES, Scan
from sam_medft.data.volumes import set_plane, write_label_volume
from sam_medft.infer.predict import save_label_png

FORMATS = ("PNG", "NIfTI")


def stem(name: str) -> str:
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_png(labels: np.ndarray, scan: Scan, k: int, out_dir: Path) -> Path:
    """One slice's class map as `<name>_labels.png` (`<name>_slice<k>_labels.png` in a
    stack)."""
    part = f"_slice{k}" if len(scan) > 1 else ""
    path = Path(out_dir) / f"{stem(scan.name)}{part}_labels.png"
    return _atomic(path, lambda tmp: save_label_png(labels, tmp))


def volume_labels(slices: Sequence[np.ndarray], scan: Scan) -> np.ndarray:
    """Per-slice HxW maps -> the label volume in RAS order (`read_volume(...).array`'s, the
    order `predict_volume` returns), each slice put back across the scan's axis; a stack of
    DICOM frames or one image: (columns, rows, slices)."""
    if scan.volume is None:
        return np.stack([np.asarray(s, dtype=np.uint8).T for s in slices], axis=2)
    labels = np.zeros(scan.volume.shape, np.uint8)
    for k, values in enumerate(slices):
        set_plane(labels, scan.axis, k, np.asarray(values, dtype=np.uint8))
    return labels


def save_nifti(slices: Sequence[np.ndarray], scan: Scan, out_dir: Path) -> Path:
    """Every slice's class map as `<name>_labels.nii.gz` on the source's voxel grid."""
    path = Path(out_dir) / f"{stem(scan.name)}_labels.nii.gz"
    data = volume_labels(slices, scan)
    if scan.volume is not None:
        return write_label_volume(path, data, like=scan.volume)
    import nibabel as nib  # loaded only when a NIfTI is saved

    affine = scan.affine if scan.affine is not None else np.eye(4)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)  # scanner-anatomical (DICOM) or unknown (unit)
    image.set_data_dtype(np.uint8)
    return _atomic(path, lambda tmp: nib.save(image, str(tmp)))


__all__ = ["FORMATS", "save_nifti", "save_png", "stem", "volume_labels"]
