"""Volume reading/writing: canonical orientation, spacing, and labels written back in the
source geometry (NIfTI with a non-identity affine, and a DICOM series written with pydicom)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nifti_helpers import permuted_affine, save_nifti

from sam_medft.data.synthetic_volumes import write_dicom_series
from sam_medft.data.volumes import (
    check_same_geometry,
    is_volume,
    plane,
    plane_spacing,
    read_geometry,
    read_volume,
    set_plane,
    volume_case_id,
    write_label_volume,
)
from sam_medft.errors import SamMedftError


def _permuted_affine() -> np.ndarray:
    return permuted_affine((0.9, 0.7, 2.5))


def _save(path, data, affine):
    return save_nifti(path, data, affine, sform_code=2)


def test_nifti_is_read_in_ras_and_labels_go_back_to_the_source_geometry(tmp_path):
    stored = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    src = _save(tmp_path / "ct.nii.gz", stored, _permuted_affine())
    vol = read_volume(src)
    assert vol.orientation == "SPL"
    assert vol.shape == (7, 6, 5)  # R, A, S
    assert vol.spacing == pytest.approx((0.9, 0.7, 2.5))
    assert np.allclose(np.diag(vol.affine)[:3], (0.9, 0.7, 2.5))  # canonical: positive diagonal
    # the same world point from both grids: voxel (i,j,k) stored == canonical voxel mapped
    ijk = np.array([1, 2, 3, 1.0])
    world = _permuted_affine() @ ijk
    can = np.rint(np.linalg.solve(vol.affine, world)).astype(int)
    assert vol.array[tuple(can[:3])] == stored[1, 2, 3]

    labels = (vol.array % 3).astype(np.int64)
    out = write_label_volume(tmp_path / "pred" / "ct.nii.gz", labels, like=vol)
    back = nib.load(str(out))
    assert back.shape == stored.shape
    assert np.allclose(back.affine, _permuted_affine())
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 1
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(back.dataobj), stored % 3)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]
    again = read_volume(out, label=True)
    assert np.array_equal(again.array, labels)
    check_same_geometry(vol, again)


def test_a_ct_rescale_in_the_header_does_not_touch_written_labels(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "ct.nii"))
    vol = read_volume(tmp_path / "ct.nii")
    assert vol.array.min() == -1024.0  # HU
    lab = np.zeros((4, 4, 4), np.int64)
    lab[1, 1, 1] = 2
    out = write_label_volume(tmp_path / "lab.nii", lab, like=vol)
    assert np.array_equal(nib.load(str(out)).get_fdata(), lab)


def test_dicom_series_reads_sorted_in_ras_with_spacing(tmp_path):
    lps = np.random.default_rng(0).integers(-500, 500, (6, 5, 4)).astype(np.int16)
    folder = write_dicom_series(tmp_path / "series", lps, spacing=(0.6, 0.8, 2.5),
                                origin_lps=(-100.0, -80.0, 30.0))
    assert is_volume(folder) and volume_case_id(folder) == "series"
    vol = read_volume(folder)
    assert vol.kind == "dicom" and vol.shape == (6, 5, 4)
    assert vol.spacing == pytest.approx((0.6, 0.8, 2.5))
    # LPS columns/rows become RAS: both in-plane axes flipped, slices kept (sorted by position)
    assert np.array_equal(vol.array, lps[::-1, ::-1, :].astype(np.float32))
    # LPS (-100, -80, 30) is RAS (100, 80, 30): the stored first voxel
    assert np.allclose(vol.source_affine[:3, 3], (100.0, 80.0, 30.0))
    out = write_label_volume(tmp_path / "series_pred.nii.gz", (vol.array > 0).astype(int), vol)
    back = read_volume(out, label=True)
    check_same_geometry(vol, back)
    assert np.array_equal(back.array, (vol.array > 0).astype(int))


def test_mismatched_geometry_names_both_files(tmp_path):
    a = _save(tmp_path / "img.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 5
    b = _save(tmp_path / "lab.nii.gz", np.zeros((4, 4, 4), np.uint8), shifted)
    c = _save(tmp_path / "small.nii.gz", np.zeros((4, 4, 3), np.uint8), np.eye(4))
    with pytest.raises(SamMedftError, match=r"lab\.nii\.gz.*img\.nii\.gz.*different positions"):
        check_same_geometry(read_volume(a), read_volume(b, label=True))
    with pytest.raises(SamMedftError, match=r"small\.nii\.gz has shape.*img\.nii\.gz"):
        check_same_geometry(read_volume(a), read_volume(c, label=True))


def test_bad_inputs_are_one_message(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(SamMedftError, match="broken.nii.gz cannot be read as NIfTI"):
        read_volume(tmp_path / "broken.nii.gz")
    with pytest.raises(SamMedftError, match="does not exist"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SamMedftError, match="holds no DICOM files"):
        read_volume(tmp_path / "empty")
    f = _save(tmp_path / "float.nii.gz", np.full((3, 3, 3), 0.5, np.float32), np.eye(4))
    with pytest.raises(SamMedftError, match="non-integer values"):
        read_volume(f, label=True)
    four = _save(tmp_path / "4d.nii.gz", np.zeros((3, 3, 3, 2), np.float32), np.eye(4))
    with pytest.raises(SamMedftError, match="one 3-D volume per file"):
        read_volume(four)
    assert not is_volume(tmp_path / "empty") and not is_volume(tmp_path / "x.png")


def test_plane_and_set_plane_are_inverse_with_viewer_orientation():
    arr = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    for axis in ("axial", "coronal", "sagittal"):
        for k in (0, 2):
            p = plane(arr, axis, k)
            out = np.zeros_like(arr)
            set_plane(out, axis, k, p)
            assert np.array_equal(np.take(out, k, axis={"sagittal": 0, "coronal": 1,
                                                         "axial": 2}[axis]),
                                  np.take(arr, k, axis={"sagittal": 0, "coronal": 1,
                                                        "axial": 2}[axis]))
    axial = plane(arr, "axial", 0)
    assert axial.shape == (5, 4)  # rows = A..P, cols = R-axis
    assert axial[0, 0] == arr[0, 4, 0]  # top row is the most anterior
    assert plane_spacing((0.9, 0.7, 2.5), "axial") == (0.7, 0.9)
    assert plane_spacing((0.9, 0.7, 2.5), "coronal") == (2.5, 0.9)


def test_geometry_from_the_header_equals_the_read_volume(tmp_path):
    src = _save(tmp_path / "ct.nii.gz", np.zeros((5, 6, 7), np.int16), _permuted_affine())
    geo, vol = read_geometry(src), read_volume(src)
    assert geo.shape == vol.shape and np.allclose(geo.affine, vol.affine)
    assert geo.orientation == vol.orientation == "SPL"
    assert geo.spacing == pytest.approx(vol.spacing)
