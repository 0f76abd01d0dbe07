"""The app on volumes, as training and `predict_volume` see them: read in RAS whatever the
stored orientation (LPS, permuted axes, anisotropic voxels), sliced across the run's axis with
its 2.5-D channels and per-volume intensity, the automatic label volume equal to
`sam_medft.load(run).predict_volume(path)`, saved in the source's geometry; DICOM series
opened from a folder, several files or a .zip."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest
from nifti_helpers import permuted_affine, save_nifti

from sam_medft.adapters.artifact import save_adapter
from sam_medft.adapters.methods import apply_method
from sam_medft.app.export import volume_labels
from sam_medft.app.session import Engine
from sam_medft.app.ui import AppPage
from sam_medft.app.uploads import staged_upload
from sam_medft.config import IntensityConfig, PeftSettings, VolumeConfig
from sam_medft.data.synthetic_volumes import ellipsoid_case, lps_affine, write_dicom_series
from sam_medft.data.volume_source import scale_volume, slice_image
from sam_medft.data.volumes import plane, read_volume
from sam_medft.errors import SamMedftError
from sam_medft.infer.predict import FineTunedSam
from sam_medft.infer.volume_inference import VOLUME_BATCH
from sam_medft.models.registry import build_tiny
from sam_medft.runs import AdapterMeta

SHAPE, SPACING = (20, 18, 11), (0.8, 0.9, 2.5)  # stored voxels; more slices than a batch


def _run(root, axis: str, channels: str, preset: str | None = "ct_abdomen"):
    """The tiny base saved untrained as an adapter that says it was trained on `axis`
    slices (`channels`) with the abdomen CT window, or percentiles over each volume (None)
    (a real artifact without training)."""
    meta = AdapterMeta(
        base_model="tiny", num_classes=3, class_names=["background", "organ_a", "organ_b"],
        method="vanilla", scope="decoder", normalization="sam", input_size=256, mask_size=64,
        mask_outputs=3, labels={"0": "background", "1": "organ_a", "2": "organ_b"},
        intensity=IntensityConfig(preset=preset).model_dump(mode="json"),
        volume=VolumeConfig(axis=axis, channels=channels).model_dump(mode="json"))
    model, _ = apply_method(build_tiny(3), PeftSettings(method="vanilla", scope="decoder"))
    save_adapter(model, meta, root / "adapter")
    return root


@pytest.fixture(scope="module")
def coronal_25d(tmp_path_factory):
    return FineTunedSam.load(_run(tmp_path_factory.mktemp("coronal"), "coronal", "2.5d"),
                             device="cpu")




@pytest.fixture(scope="module", params=[("LPS", "coronal", "2.5d", "ct_abdomen"),
                                        ("SPL", "axial", "2d", None)], ids=["LPS", "SPL"])
def case(request, tmp_path_factory):
    """(an anisotropic CT-like volume stored LPS, as DICOM-converted NIfTI files are, or with
    permuted axes S, P, L; a run trained on coronal 2.5-D windowed slices, or axial 2-D
    slices scaled by percentiles of the volume)"""
    orientation, axis, channels, preset = request.param
    image, _ = ellipsoid_case(3, SHAPE, SPACING)
    root = tmp_path_factory.mktemp(orientation)
    if orientation == "LPS":
        path = save_nifti(root / "ct.nii.gz", image, lps_affine(SPACING))
    else:
        path = save_nifti(root / "ct.nii.gz", np.ascontiguousarray(image.transpose(2, 1, 0)),
                     permuted_affine(SPACING))
    run = _run(tmp_path_factory.mktemp("run"), axis, channels, preset)
    return path, FineTunedSam.load(run, device="cpu"), axis, channels


def test_automatic_label_volume_equals_predict_volume(case, tmp_path):
    ct_volume, predictor, axis, channels = case
    page = AppPage(Engine([predictor], ["run"]), tmp_path)
    session, slider = page.open_file([str(ct_volume)], None)
    vol = read_volume(ct_volume)
    scan = session.scan
    # the run's axis across the RAS volume, not the stored file's last axis
    a = {"axial": 2, "coronal": 1}[axis]
    assert vol.orientation in ("LPS", "SPL") and len(scan) == vol.shape[a] > VOLUME_BATCH
    assert slider.maximum == len(scan) - 1
    stored = np.asarray(nib.load(ct_volume).dataobj)
    assert np.array_equal(scan.raw(3), plane(vol.array, axis, 3))
    assert scan.raw(3).shape != stored[..., 3].T.shape or \
        not np.array_equal(scan.raw(3), stored[..., 3].T)  # the old app's slicing
    # the model input: the whole volume scaled once, 2.5-D neighbours as channels
    k = 9
    expected_input = slice_image(scale_volume(vol.array, predictor.intensity, ""), a, k,
                                 channels)
    assert np.array_equal(page.engine.model_image(0, scan, k), expected_input)
    assert np.array_equal(expected_input[..., 0], expected_input[..., 2]) == (channels == "2d")
    # the window preset is display only: the model input did not change
    shown = scan.display_image(k, predictor.intensity, "CT lung (-600/1500)")
    assert shown.shape == (*scan.shape, 3)

    maps = [page.engine.labels(session, j) for j in range(len(scan))]
    app_volume = volume_labels(maps, scan)
    predicted = predictor.predict_volume(ct_volume, out=tmp_path / "predict.nii.gz")
    assert app_volume.shape == predicted.shape == vol.shape
    assert len(np.unique(predicted)) > 1  # not a blank map: the equality says something
    assert np.array_equal(app_volume, predicted)

    saved = nib.load(page.save(session, "NIfTI"))
    by_predict = nib.load(tmp_path / "predict.nii.gz")
    assert saved.shape == stored.shape and np.allclose(saved.affine, nib.load(ct_volume).affine)
    assert np.array_equal(np.asarray(saved.dataobj), np.asarray(by_predict.dataobj))


def _dicom_series(tmp_path):
    image, _ = ellipsoid_case(5, (16, 14, 10), (0.7, 0.8, 3.0))
    folder = write_dicom_series(tmp_path / "series", image, (0.7, 0.8, 3.0), (-10, 20, -30))
    return folder, sorted(folder.iterdir())


def test_dicom_series_opens_from_files_folder_or_zip(tmp_path, coronal_25d):
    folder, files = _dicom_series(tmp_path)
    expected = read_volume(folder).array
    notes = tmp_path / "notes.txt"
    notes.write_text("not DICOM")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f"CT/{f.name}")
        zf.write(notes, "CT/notes.txt")
    page = AppPage(Engine([coronal_25d], ["run"]), tmp_path / "out")
    (tmp_path / "out").mkdir()
    for upload, folder_upload in (([*map(str, files)], False), ([*map(str, files), str(notes)],
                                                                 True), ([str(archive)], False)):
        session, _ = page.open_file(upload, None, folder=folder_upload)
        scan = session.scan
        assert scan.kind == "volume" and scan.volume.kind == "dicom"
        assert np.array_equal(scan.volume.array, expected)
        assert len(scan) == expected.shape[1]  # the run's coronal axis
    assert scan.name == "series"
    maps = [page.engine.labels(session, j) for j in range(len(scan))]
    assert np.array_equal(volume_labels(maps, scan), coronal_25d.predict_volume(folder))
    saved = nib.load(page.save(session, "NIfTI"))
    assert np.allclose(saved.affine, scan.volume.source_affine)
    assert page.save(session, "NIfTI").endswith("series_labels.nii.gz")


def test_bad_uploads_are_one_message(tmp_path):
    folder, files = _dicom_series(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("not DICOM")
    with pytest.raises(SamMedftError, match="notes.txt is not a DICOM file"):
        with staged_upload([*files, notes]):
            pass
    with pytest.raises(SamMedftError, match="holds no DICOM files"):
        with staged_upload([notes], folder=True):
            pass
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("a/readme.txt", "hello")
    with pytest.raises(SamMedftError, match="empty.zip holds no DICOM files"):
        with staged_upload([empty]):
            pass
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really")
    with pytest.raises(SamMedftError, match="broken.zip: not a readable zip file"):
        with staged_upload([broken]):
            pass
    with staged_upload(files) as (path, name):
        staged = path
        assert len(list(path.iterdir())) == len(files)
    assert not staged.exists()  # the scratch copy is gone once the volume is read
