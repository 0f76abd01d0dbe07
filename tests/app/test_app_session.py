"""The app without a browser: opening files (PNG, 16-bit, DICOM, NIfTI), window presets,
prompts with undo/clear, the embedding cache, corrections, and saved label maps (PNG as
predict writes it; NIfTI on the source's voxel grid and affine)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam_medft.app.export import save_nifti, volume_labels
from sam_medft.app.render import display_factor, enlarge, overlay
from sam_medft.app.scan import open_scan
from sam_medft.app.session import CLICK_MODES, NO_CORRECTION, Engine, Session
from sam_medft.app.ui import AppPage, painted_classes
from sam_medft.config import IntensityConfig
from sam_medft.data.volumes import plane, read_volume
from sam_medft.errors import SamMedftError
from sam_medft.infer.predict import PALETTE, FineTunedSam

POS, NEG, BOX = CLICK_MODES


@pytest.fixture
def png(tmp_path):
    a = np.full((40, 56), 30, np.uint8)
    a[10:25, 15:40] = 200
    path = tmp_path / "slice.png"
    Image.fromarray(a).save(path)
    return path


@pytest.fixture
def ct_nifti(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.full((24, 20, 3), -1000, np.int16)  # x, y, z
    data[5:15, 4:12, :] = 40
    data[:, :, 1] += 7  # slices differ
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.8, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    path = tmp_path / "ct.nii.gz"
    nib.save(img, path)
    return path, data, affine


@pytest.fixture(scope="module")
def prompted(untrained_run):
    return FineTunedSam.load(untrained_run("box"))


@pytest.fixture(scope="module")
def automatic(untrained_run):
    return FineTunedSam.load(untrained_run("none"))


def test_open_png_model_image_is_predicts_input(png):
    scan = open_scan(png)
    assert (scan.kind, scan.shape, len(scan)) == ("image", (40, 56), 1)
    shown = scan.display_image(0, IntensityConfig(), "as the model sees it")
    assert shown.dtype == np.uint8 and shown.shape == (40, 56, 3) and shown[12, 20, 0] == 200


@pytest.mark.parametrize("content, expected", [
    (b"not an image", "slice.png: cannot read this image"),
    (None, "cannot open this kind of file"),
])
def test_unreadable_files_are_one_clear_error(tmp_path, content, expected):
    path = tmp_path / ("slice.png" if content else "notes.docx")
    path.write_bytes(content or b"x")
    with pytest.raises(SamMedftError, match=expected) as err:
        open_scan(path)
    assert str(tmp_path) not in str(err.value)  # the upload's temporary path is not shown


def test_broken_nifti_and_dicom_name_the_file(tmp_path):
    for name in ("vol.nii.gz", "slice.dcm"):
        (tmp_path / name).write_bytes(b"garbage")
        with pytest.raises(SamMedftError, match=name):
            open_scan(tmp_path / name)


def test_nifti_slices_and_ct_window(ct_nifti):
    path, data, _ = ct_nifti
    scan = open_scan(path)
    assert (scan.kind, len(scan), scan.shape) == ("volume", 3, (20, 24))
    # stored L-A-S: read in RAS (x flipped), shown as `plane` shows it (Anterior at the top)
    assert np.array_equal(scan.raw(1), np.flipud(data[::-1, :, 1].T))
    assert np.array_equal(scan.raw(1), plane(read_volume(path).array, "axial", 1))
    soft = scan.display_image(0, IntensityConfig(), "CT soft tissue (40/400)")
    assert soft[10, 12, 0] == 127 and soft[0, 0, 0] == 0  # 40 HU mid-grey, air black
    with pytest.raises(SamMedftError, match="unknown window"):
        scan.display_image(0, IntensityConfig(), "nope")


def test_nifti_labels_keep_the_source_grid_and_affine(ct_nifti, tmp_path):
    nib = pytest.importorskip("nibabel")
    path, data, affine = ct_nifti
    scan = open_scan(path)
    maps = [np.zeros(scan.shape, np.uint8) for _ in range(len(scan))]
    maps[2][scan.raw(2) == 40] = 1  # drawn on the slice as shown
    out = save_nifti(maps, scan, tmp_path)
    saved = nib.load(out)
    assert saved.shape == data.shape and np.allclose(saved.affine, affine)
    assert int(saved.header["sform_code"]) == 2 and int(saved.header["qform_code"]) == 1
    vol = np.asarray(saved.dataobj)
    assert vol.dtype == np.uint8
    assert np.array_equal(vol[:, :, 2] > 0, data[:, :, 2] == 40)  # on the source's voxels
    assert not vol[:, :, :2].any()
    assert np.array_equal(volume_labels(maps, scan), read_volume(out, label=True).array)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_dicom_slice_with_rescale_and_geometry(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = 16, 12
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelSpacing = [0.5, 0.7]
    ds.ImagePositionPatient = [100, 50, -20]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 3
    pixels = np.full((16, 12), 1024, np.uint16)
    pixels[4:8, 2:6] = 1064
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "slice.dcm"
    ds.save_as(path, enforce_file_format=True)

    scan = open_scan(path)
    assert (scan.kind, scan.shape, len(scan)) == ("dicom", (16, 12), 1)
    assert scan.raw(0)[5, 3] == 40 and scan.raw(0)[0, 0] == 0  # Hounsfield units
    assert np.allclose(scan.affine[:3, 3], [-100, -50, -20])  # LPS -> RAS
    assert np.allclose(np.diag(scan.affine)[:3], [-0.7, -0.5, 3])


def test_prompts_undo_clear_and_degenerate_box(png, prompted):
    s = Session()
    with pytest.raises(SamMedftError, match="open an image first"):
        s.click(1, 1, POS, 1)
    s.open(png)
    s.click(15, 10, BOX, 1)
    assert s.entries() == [] and s.state().corner == (15, 10)
    with pytest.raises(SamMedftError, match="differ in x and in y"):
        s.click(15, 30, BOX, 1)
    s.click(40, 25, BOX, 1)
    s.click(20, 15, POS, 1)
    s.click(50, 35, NEG, 2)
    assert s.entries() == [
        {"label": 1, "box": [15, 10, 40, 25], "points": [[20, 15]], "point_labels": [1]},
        {"label": 2, "points": [[50, 35]], "point_labels": [0]}]
    assert s.undo() and s.entries()[1:] == []
    s.clear()
    assert s.entries() == []
    assert s.undo() and len(s.entries()) == 1
    with pytest.raises(SamMedftError, match="outside the 56x40 image"):
        s.click(56, 3, POS, 1)


def test_clicks_reuse_one_embedding_and_equal_predict(png, prompted):
    engine, s = Engine([prompted], ["run"]), Session()
    s.open(png)
    assert not engine.labels(s).any() and engine.encoder_calls == 0  # no prompt, no work
    s.click(15, 10, BOX, 1)
    s.click(40, 25, BOX, 1)
    first = engine.labels(s)
    s.click(20, 15, POS, 1)
    s.click(50, 35, NEG, 1)
    refined = engine.labels(s)
    assert engine.encoder_calls == 1  # the image was embedded once for all the clicks
    assert np.array_equal(first, prompted.predict(png, [{"label": 1, "box": [15, 10, 40, 25]}]))
    assert np.array_equal(refined, prompted.predict(png, s.entries()))


def test_automatic_labels_equal_predict_and_corrections_paint_over(png, automatic):
    engine, s = Engine([automatic], ["run"]), Session()
    s.open(png)
    model = engine.labels(s)
    assert np.array_equal(model, automatic.predict(png))
    painted = np.full(s.scan.shape, NO_CORRECTION, np.int16)
    painted[0:5, 0:5] = 2
    painted[5:10, 0:5] = 0  # erase to background
    s.correct(painted)
    fixed = engine.labels(s)
    assert (fixed[0:5, 0:5] == 2).all() and (fixed[5:10, 0:5] == 0).all()
    assert np.array_equal(fixed[10:], model[10:])
    assert s.undo() and np.array_equal(engine.labels(s), model)


def test_painted_layer_to_classes():
    layer = np.zeros((4, 4, 4), np.uint8)
    layer[0, 0] = [*PALETTE[1], 255]
    layer[1, 1] = [*PALETTE[2], 200]
    layer[2, 2] = [0, 0, 0, 255]  # black: background
    layer[3, 3] = [*PALETTE[1], 40]  # faint antialiasing: ignored
    ids = painted_classes(layer, 3)
    assert ids[0, 0] == 1 and ids[1, 1] == 2 and ids[2, 2] == 0
    assert ids[3, 3] == NO_CORRECTION and (ids == NO_CORRECTION).sum() == 13


def test_page_handlers_volume_slider_paint_and_nifti(ct_nifti, automatic, tmp_path):
    """The handlers the page calls, on a NIfTI volume: open, go to slice 2, paint a
    correction on the enlarged view, save PNG and NIfTI."""
    path, data, _ = ct_nifti
    page = AppPage(Engine([automatic], ["run"]), tmp_path / "out")
    (tmp_path / "out").mkdir()
    session, slider = page.open_file(str(path), None)
    assert slider.maximum == 2 and slider.visible
    session = page.go_to(session, 2)
    views = page.refresh(session, "CT soft tissue (40/400)", 0.5, 0.5)
    f = display_factor(session.scan.shape)
    assert views[0].shape == (20 * f, 24 * f, 3) and "slice 3 of 3" in views[4]
    layer = np.zeros((20 * f, 24 * f, 4), np.uint8)
    layer[: 3 * f, : 3 * f] = [*PALETTE[2], 255]
    session = page.apply_paint(session, {"background": views[0], "layers": [layer]})
    labels = page.engine.labels(session)
    assert (labels[:3, :3] == 2).all()
    png = page.save(session, "PNG")
    assert png.endswith("ct_slice2_labels.png")
    assert np.array_equal(np.asarray(Image.open(png)), labels)
    nii = page.save(session, "NIfTI")
    assert np.array_equal(plane(read_volume(nii, label=True).array, "axial", 2), labels)
    with pytest.raises(SamMedftError, match="nothing painted"):
        page.apply_paint(session, {"background": views[0], "layers": []})


def test_overlay_opacity_per_class_and_enlarge():
    image = np.full((2, 3, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    out = overlay(image, labels, [1.0, 0.0])
    assert tuple(out[0, 1]) == PALETTE[1] and tuple(out[0, 2]) == (100, 100, 100)
    assert tuple(out[0, 0]) == (100, 100, 100)
    big = enlarge(out, 3)
    assert big.shape == (6, 9, 3) and np.array_equal(big[1::3, 1::3], out)
    assert display_factor((96, 128)) == 4 and display_factor((1024, 900)) == 1


def test_compare_view_shows_the_second_run_on_the_same_prompts(png, prompted, automatic):
    page = AppPage(Engine([prompted, automatic], ["box", "auto"]))
    session, _ = page.open_file(str(png), None)
    session.click(15, 10, BOX, 1)
    session.click(40, 25, BOX, 1)
    main, other, legend, prompts, status = page.refresh(session, "as the model sees it", 0.5, 0.5)
    f = display_factor(session.scan.shape)
    assert main.shape == other.shape == (40 * f, 56 * f, 3)
    auto = overlay(np.round(session.scan.model_image(0, automatic.intensity)).astype(np.uint8),
                   automatic.predict(png), [0.5, 0.5])
    assert np.array_equal(other, enlarge(auto, f))  # the automatic run: no prompts drawn
    assert '"box": [15, 10, 40, 25]' in prompts and "organ_a" in legend
