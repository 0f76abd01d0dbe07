"""DICOM-SEG labels: a SEG written by highdicom onto a DICOM series (axial LPS, and a coronal
series whose stored axes are permuted) reads as the label volume on the series' grid, the
same volume a label series of the same geometry reads as, and trains as a list source."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from sam_medft.config import DataConfig
from sam_medft.data.dicom_seg import is_dicom_seg, segment_labels
from sam_medft.data.sources import build_splits, default_label_map
from sam_medft.data.synthetic_volumes import write_dicom_series
from sam_medft.data.volume_check import check_volumes
from sam_medft.data.volumes import read_labels, read_volume, write_label_volume
from sam_medft.errors import SamMedftError
from sam_medft.eval.score_folder import score_prediction_folder

SHAPE = (7, 6, 5)  # stored columns, rows, slices
SPACING = (0.7, 0.9, 2.5)
CORONAL = (1, 0, 0, 0, 0, -1)  # rows run along x, columns down towards Feet: slices along y


def _labels_stored() -> np.ndarray:
    """Segment 1 on slices 1-2, segment 2 on slice 3; slices 0 and 4 empty (left out of the
    SEG's frames, so reading must pad them back)."""
    lab = np.zeros(SHAPE, np.int16)
    lab[1:4, 2:5, 1:3] = 1
    lab[4:6, 0:2, 3] = 2
    return lab


def _write_case(folder, orientation, seg_labels=("liver", "spleen"), labels=None):
    """A CT series, the same labels as a second series (the expected volume, read by MONAI),
    and a SEG of them made by highdicom from the CT series' datasets."""
    labels = _labels_stored() if labels is None else labels
    image = np.random.default_rng(1).integers(-200, 200, SHAPE).astype(np.int16)
    series = write_dicom_series(folder / f"{folder.name}_ct", image, SPACING, (-30.0, -20.0, 10.0),
                                orientation=orientation)
    truth = write_dicom_series(folder / "truth", labels, SPACING, (-30.0, -20.0, 10.0),
                               orientation=orientation)
    sources = sorted((pydicom.dcmread(f) for f in series.iterdir()),
                     key=lambda ds: int(ds.InstanceNumber))
    for ds in sources:  # attributes a SEG copies from its source (the synthetic CT lacks them)
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "SYNTH^", "", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "000000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.SeriesNumber = "", "", 1
    frames = np.stack([labels[:, :, k].T for k in range(SHAPE[2])]).astype(np.uint8)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=name,
            segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name in enumerate(seg_labels, start=1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="sam_medft tests",
        manufacturer_model_name="synthetic", software_versions="0", device_serial_number="0")
    seg.save_as(folder / "seg.dcm")
    return series, truth, folder / "seg.dcm"


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), CORONAL], ids=["axial", "coronal"])
def test_seg_reads_as_the_label_volume_on_the_series_grid(tmp_path, orientation):
    series, truth, seg = _write_case(tmp_path, orientation)
    assert is_dicom_seg(seg) and not is_dicom_seg(series) and not is_dicom_seg(
        next(series.iterdir()))
    assert segment_labels(seg) == {1: "liver", 2: "spleen"}
    image = read_volume(series)
    labels = read_labels(seg, image)
    expected = read_volume(truth, label=True)
    assert labels.shape == image.shape and np.allclose(labels.affine, image.affine)
    assert np.array_equal(labels.array, expected.array)
    assert set(np.unique(labels.array)) == {0, 1, 2}
    # the segments sit on the right slices in space: stored slices 1-2 hold segment 1
    normal = np.cross(orientation[:3], orientation[3:])
    world = np.argwhere(labels.array == 1) @ labels.affine[:3, :3].T + labels.affine[:3, 3]
    lps = world * (-1, -1, 1)
    steps = np.rint((lps - (-30.0, -20.0, 10.0)) @ normal / SPACING[2]).astype(int)
    assert set(steps.tolist()) == {1, 2}
    # the geometry alone (what `data check` and the slice index use) places it the same way
    from sam_medft.data.volumes import read_geometry

    assert np.array_equal(read_labels(seg, read_geometry(series)).array, expected.array)


def test_a_list_of_series_with_seg_labels_trains_with_segment_names(tmp_path):
    rows = []
    for case in ("case_a", "case_b"):
        series, truth, seg = _write_case(tmp_path / case, CORONAL)
        rows.append((series, seg, truth))
    (tmp_path / "train.csv").write_text("".join(f"{s},{g}\n" for s, g, _ in rows))
    data = DataConfig(source="lists", train_list=tmp_path / "train.csv", val_list=None,
                      test_list=None)
    assert default_label_map(data).class_names == ["background", "liver", "spleen"]
    train = build_splits(data)["train"]
    for i in range(len(train)):
        sample = train.load(i)
        n, k = train.index[i]
        truth = read_volume(rows[n][2], label=True).array
        assert np.array_equal(sample.raw_mask, train.load_mask(i))
        assert np.array_equal(sample.raw_mask, np.flipud(np.take(truth, k, axis=2).T))
    report = check_volumes(data)
    assert not report.errors and [r.label_values for r in report.rows] == [[0, 1, 2]] * 2


def test_seg_problems_are_one_message_naming_the_files(tmp_path):
    series, _, seg = _write_case(tmp_path / "a", (1, 0, 0, 0, 1, 0))
    other = write_dicom_series(tmp_path / "other", np.zeros((7, 6, 5), np.int16), (1.0, 1.0, 3.0),
                               (-30.0, -20.0, 10.0))
    with pytest.raises(SamMedftError, match=r"seg\.dcm does not lie on the voxel grid of its "
                                            r"image .*other"):
        read_labels(seg, read_volume(other))
    _, _, seg_b = _write_case(tmp_path / "b", (1, 0, 0, 0, 1, 0), seg_labels=("spleen", "liver"))
    (tmp_path / "train.csv").write_text(f"{series},{seg}\n{tmp_path / 'b' / 'b_ct'},{seg_b}\n")
    data = DataConfig(source="lists", train_list=tmp_path / "train.csv", val_list=None,
                      test_list=None)
    with pytest.raises(SamMedftError, match=r"segment 1 is 'liver' in .*a/seg\.dcm but "
                                            r"'spleen' in .*b/seg\.dcm"):
        default_label_map(data)


def test_eval_pred_scores_against_seg_references_as_against_nifti(tmp_path):
    """`eval --pred DIR --ref list.csv` with `series,seg.dcm` rows scores the same numbers as
    the same labels given as NIfTI."""
    series, truth, seg = _write_case(tmp_path / "a", CORONAL)
    image = read_volume(series)
    labels = read_volume(truth, label=True).array
    write_label_volume(tmp_path / "truth.nii.gz", labels, like=image)
    pred = np.where(labels == 2, 0, labels)  # spleen missed, liver exact
    pred[0, 0, 0] = 1 if labels[0, 0, 0] == 0 else 0  # and one false liver voxel
    write_label_volume(tmp_path / "preds" / f"{series.name}.nii.gz", pred, like=image)
    (tmp_path / "seg.csv").write_text(f"{series},{seg}\n")
    (tmp_path / "nifti.csv").write_text(f"{series},{tmp_path / 'truth.nii.gz'}\n")
    by_seg, by_nifti = (
        score_prediction_folder(tmp_path / "preds", tmp_path / f"{kind}.csv",
                                out_dir=tmp_path / f"eval_{kind}", classes="1=liver,2=spleen",
                                overlays=0, show_progress=False)
        for kind in ("seg", "nifti"))
    assert by_seg.volumes and by_seg.rows == by_nifti.rows
    dice = {r["class_name"]: float(r["dice"]) for r in by_seg.rows}
    assert dice["spleen"] == 0.0 and 0.9 < dice["liver"] < 1.0
