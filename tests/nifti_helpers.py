"""NIfTI files for volume tests: written with nibabel, with a non-identity stored axis order."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def permuted_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Stored axes 0 -> Superior, 1 -> Posterior, 2 -> Left (nothing like RAS), with
    `spacing` = (left, posterior, superior) voxel sizes in mm and an off-origin corner."""
    aff = np.zeros((4, 4))
    aff[2, 0], aff[1, 1], aff[0, 2] = spacing[2], -spacing[1], -spacing[0]
    aff[:3, 3], aff[3, 3] = (40.0, 30.0, -20.0), 1
    return aff


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, sform_code: int = 1) -> Path:
    """`data` on `affine` (qform code 1 = scanner, sform `sform_code`), as scanners write them."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=sform_code)
    nib.save(img, str(path))
    return path
