"""Volumes as a data source: nnU-Net raw layout, folders (with a DICOM series) and lists,
split by case (never by slice), sliced with spacing, 2.5-D, empty-slice sampling, presets."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from sam_medft.config import DataConfig, HFDataConfig, IntensityConfig, VolumeConfig
from sam_medft.data.io import read_mask
from sam_medft.data.lists import read_pair_list
from sam_medft.data.slice_export import export_slices
from sam_medft.data.sources import build_splits, default_label_map
from sam_medft.data.synthetic_volumes import (
    DATASET_NAME,
    lps_affine,
    write_dicom_series,
    write_synthetic_volumes,
)
from sam_medft.data.volume_check import check_volumes
from sam_medft.data.volume_source import (
    VolumeCase,
    VolumeSliceSource,
    read_nnunet,
    scale_volume,
    split_cases,
)
from sam_medft.data.volumes import plane, read_volume, write_label_volume
from sam_medft.errors import SamMedftError

SIZE, SLICES = 16, 8


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    out = tmp_path_factory.mktemp("vols")
    return write_synthetic_volumes(out, n_train=5, n_test=1, size=SIZE, n_slices=SLICES)


def test_nnunet_layout_gives_class_names_and_case_level_splits(nnunet):
    ds = read_nnunet(nnunet)
    assert ds.labels == {0: "background", 1: "organ_a", 2: "organ_b"}
    assert [c.case_id for c in ds.train] == [f"case_{i:03d}" for i in range(5)]
    data = DataConfig(source="nnunet", folder=nnunet, val_fraction=0.4,
                      volumes=VolumeConfig(empty_fraction=1.0))
    assert default_label_map(data).class_names == ["background", "organ_a", "organ_b"]
    splits = build_splits(data)
    cases = {s: {src.load(i).case for i in range(len(src))} for s, src in splits.items()}
    assert cases["test"] == {"case_005"} and len(cases["val"]) == 2 and len(cases["train"]) == 3
    assert not (cases["train"] & cases["val"])
    val = splits["val"]
    assert len(val) == 2 * SLICES  # validation keeps every slice of its cases
    s = val.load(3)
    assert s.image.shape == (SIZE, SIZE, 3) and s.image.dtype == np.float32
    assert s.raw_mask.shape == (SIZE, SIZE) and s.spacing == pytest.approx((0.8, 0.8))
    assert s.slice_index == 3 and s.name == f"{s.case}_003"
    assert val.slices_of(s.case) == list(range(SLICES))
    # a folder source pointing at an nnU-Net data set is read as one
    assert set(build_splits(DataConfig(source="folder", folder=nnunet, val_fraction=0.4))) == {
        "train", "val", "test"}


def test_splits_by_case_never_leak_for_any_seed():
    cases = [VolumeCase(f"c{i}", f"/x/c{i}.nii.gz", f"/y/c{i}.nii.gz") for i in range(9)]
    for seed in range(25):
        splits = split_cases(cases, 0.2, 0.2, seed, "here")
        ids = [c.case_id for s in splits.values() for c in s]
        assert sorted(ids) == sorted(c.case_id for c in cases)  # each case exactly once
    with pytest.raises(SamMedftError, match="too few"):
        split_cases(cases[:2], 0.5, 0.5, 0, "here")


def test_a_case_in_two_lists_is_refused(nnunet, tmp_path):
    tr = nnunet / "imagesTr"
    lab = nnunet / "labelsTr"
    (tmp_path / "train.csv").write_text(f"{tr}/case_000_0000.nii.gz,{lab}/case_000.nii.gz\n"
                                        f"{tr}/case_001_0000.nii.gz,{lab}/case_001.nii.gz\n")
    (tmp_path / "val.csv").write_text(f"{tr}/case_001_0000.nii.gz,{lab}/case_001.nii.gz\n")
    data = DataConfig(source="lists", train_list=tmp_path / "train.csv",
                      val_list=tmp_path / "val.csv")
    with pytest.raises(SamMedftError, match="case 'case_001'.*both the train and the val"):
        build_splits(data)
    (tmp_path / "val.csv").write_text(f"{tr}/case_002_0000.nii.gz,{lab}/case_002.nii.gz\n")
    splits = build_splits(data)
    assert isinstance(splits["train"], VolumeSliceSource)
    assert {c.case_id for c in splits["val"].cases} == {"case_002"}


def test_training_samples_a_share_of_empty_slices(nnunet):
    case = read_nnunet(nnunet).train[0]
    labels = read_volume(case.label, label=True).array
    labelled = int(np.any(labels != 0, axis=(0, 1)).sum())
    empty = SLICES - labelled
    assert empty >= 2  # the generator leaves slices without organs
    for frac in (0.0, 0.5, 1.0):
        src = VolumeSliceSource([case], VolumeConfig(empty_fraction=frac), sample_empty=True)
        assert len(src) == labelled + round(empty * frac)
    val = VolumeSliceSource([case], VolumeConfig(empty_fraction=0.0), sample_empty=False)
    assert len(val) == SLICES


def test_two_and_a_half_d_puts_the_neighbours_in_the_channels(nnunet):
    case = read_nnunet(nnunet).train[0]
    src = VolumeSliceSource([case], VolumeConfig(channels="2.5d", empty_fraction=1.0),
                            IntensityConfig(preset="ct_abdomen"))
    scaled = scale_volume(read_volume(case.image).array, IntensityConfig(preset="ct_abdomen"), "")
    mid = src.load(4).image
    for c, k in enumerate((3, 4, 5)):
        assert np.allclose(mid[..., c], plane(scaled, "axial", k))
    first = src.load(0).image  # the edge repeats its own slice
    assert np.allclose(first[..., 0], first[..., 1])
    coronal = VolumeSliceSource([case], VolumeConfig(axis="coronal", empty_fraction=1.0))
    assert len(coronal) == SIZE and coronal.load(0).spacing == pytest.approx((2.5, 0.8))


def test_intensity_presets_are_windows_in_hu():
    lung = IntensityConfig(preset="ct_lung")
    assert lung.mode == "window" and lung.window == (-600.0, 1500.0)
    assert IntensityConfig(preset="mr").mode == "percentile"
    assert IntensityConfig(**lung.model_dump(mode="json")) == lung  # as the adapter records it
    with pytest.raises(ValueError, match="preset=ct_lung sets window"):
        IntensityConfig(preset="ct_lung", window=(40, 400))
    hu = np.array([[[-1000.0, 40.0 - 200, 40.0, 40.0 + 200, 3000.0]]])
    assert scale_volume(hu, IntensityConfig(preset="ct_abdomen"), "").ravel().tolist() == [
        0.0, 0.0, 127.5, 255.0, 255.0]


def test_dicom_series_images_with_nifti_labels_in_a_folder(tmp_path):
    rng = np.random.default_rng(1)
    lps = rng.integers(-200, 200, (12, 10, 6)).astype(np.int16)
    (tmp_path / "data" / "images").mkdir(parents=True)
    series = write_dicom_series(tmp_path / "data" / "images" / "patient1", lps, (0.7, 0.9, 3.0),
                                (-50.0, -40.0, 10.0))
    vol = read_volume(series)
    labels = np.zeros(vol.shape, np.int64)
    labels[3:7, 2:6, 1:4] = 1
    write_label_volume(tmp_path / "data" / "labels" / "patient1.nii.gz", labels, like=vol)
    src = build_splits(DataConfig(source="folder", folder=tmp_path / "data", val_fraction=0.0,
                                  volumes=VolumeConfig(empty_fraction=0.0)))["train"]
    assert len(src) == 3 and src.load(0).spacing == pytest.approx((0.9, 0.7))
    assert src.load(0).raw_mask.sum() == 4 * 4


def test_mismatched_label_geometry_is_one_message_naming_both(nnunet, tmp_path):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    img = nib.load(str(nnunet / "imagesTr" / "case_000_0000.nii.gz"))
    nib.save(img, str(folder / "images" / "p1.nii.gz"))
    shifted = lps_affine((0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), shifted),
             str(folder / "labels" / "p1.nii.gz"))
    with pytest.raises(SamMedftError, match=r"labels/p1\.nii\.gz and its image .*images/p1\.nii"
                                            r"\.gz .*different positions"):
        build_splits(DataConfig(source="folder", folder=folder, val_fraction=0.0))
    run = subprocess.run([sys.executable, "-m", "sam_medft", "data", "check", "demo",
                          "data.source=folder", f"data.folder={folder}", "data.labels=null",
                          "data.val_fraction=0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "label/image geometry differ" in run.stdout
    assert "labels/p1.nii.gz and its image" in " ".join((run.stdout + run.stderr).split())


def test_data_slice_exports_lists_the_2d_reader_takes(nnunet, tmp_path):
    data = DataConfig(source="nnunet", folder=nnunet, val_fraction=0.4)
    counts = export_slices(data, tmp_path / "out", show_progress=False)
    splits = build_splits(data)
    assert counts == {s: len(src) for s, src in splits.items()}
    pairs = read_pair_list(tmp_path / "out" / "val.csv")
    assert len(pairs) == counts["val"]
    sample = splits["val"].load(5)
    assert np.array_equal(read_mask(pairs[5].mask), sample.raw_mask)
    header = (tmp_path / "out" / "val.csv").read_text().splitlines()[0]
    assert header == "image,mask,case_id,slice,spacing"
    with pytest.raises(SamMedftError, match="--overwrite"):
        export_slices(data, tmp_path / "out", show_progress=False)
    assert export_slices(data, tmp_path / "out", overwrite=True, show_progress=False) == counts
    manifest = json.loads((tmp_path / "out" / "sam_medft_slices.json").read_text())
    assert len(manifest["files"]) == 2 * sum(counts.values()) + len(counts)
    # a file the export did not write blocks even --overwrite, and is left as it was
    (tmp_path / "out" / "images" / "my_notes.txt").write_text("mine")
    with pytest.raises(SamMedftError, match="did not write"):
        export_slices(data, tmp_path / "out", overwrite=True, show_progress=False)
    assert (tmp_path / "out" / "images" / "my_notes.txt").read_text() == "mine"


def test_synthetic_volumes_are_anisotropic_lps_and_refuse_foreign_folders(nnunet, tmp_path):
    vol = read_volume(nnunet / "imagesTr" / "case_000_0000.nii.gz")
    assert vol.orientation == "LPS" and vol.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert nnunet.name == DATASET_NAME
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(SamMedftError, match="not empty"):
        write_synthetic_volumes(tmp_path, n_train=1, n_test=0, size=8, n_slices=8,
                                overwrite=True)


def test_a_datasets_dataset_of_volume_paths_is_sliced(nnunet, tmp_path):
    import datasets

    def rows(ids):
        return {"image": [str(nnunet / "imagesTr" / f"case_{i:03d}_0000.nii.gz") for i in ids],
                "mask": [f"labelsTr/case_{i:03d}.nii.gz" for i in ids]}  # relative: to root

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows([0, 1])),
                               "validation": datasets.Dataset.from_dict(rows([2]))})
    dd.save_to_disk(str(tmp_path / "ds"))
    data = DataConfig(source="hf", hf=HFDataConfig(path=str(tmp_path / "ds"), test_split=None),
                      volumes=VolumeConfig(empty_fraction=1.0))
    with pytest.raises(SamMedftError, match="missing or not volumes"):
        build_splits(data)  # a save_to_disk folder has no root for relative paths
    dd = datasets.DatasetDict({k: datasets.Dataset.from_dict(
        {"image": v["image"], "mask": [str(nnunet / m) for m in v["mask"]]})
        for k, v in (("train", rows([0, 1])), ("validation", rows([2])))})
    dd.save_to_disk(str(tmp_path / "ds2"))
    data.hf.path = str(tmp_path / "ds2")
    splits = build_splits(data)
    assert isinstance(splits["val"], VolumeSliceSource)
    assert len(splits["train"]) == 2 * SLICES and splits["val"].load(0).case == "case_002"


def test_data_check_lists_each_volume_of_a_datasets_source(nnunet, tmp_path):
    """`data check` on a `datasets` dataset of volume paths: the per-volume table (shape,
    spacing, orientation, label values), and a label on another grid named in its row."""
    import datasets

    def split(ids, label_of=lambda i: nnunet / "labelsTr" / f"case_{i:03d}.nii.gz"):
        return datasets.Dataset.from_dict({
            "image": [str(nnunet / "imagesTr" / f"case_{i:03d}_0000.nii.gz") for i in ids],
            "mask": [str(label_of(i)) for i in ids]})

    datasets.DatasetDict({"train": split([0, 1]), "validation": split([2])}).save_to_disk(
        str(tmp_path / "ds"))
    run = subprocess.run([sys.executable, "-m", "sam_medft", "data", "check", "demo",
                          "data.source=hf", f"data.hf.path={tmp_path / 'ds'}",
                          "data.hf.test_split=null", "data.labels=null"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    table = run.stdout[run.stdout.index("volumes ("):]
    for case in ("case_000", "case_001", "case_002"):
        row = next(line for line in table.splitlines() if case in line)
        assert f"{SIZE}x{SIZE}x{SLICES}" in row and "LPS" in row and "0, 1, 2" in row
    img = nib.load(str(nnunet / "imagesTr" / "case_003_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), lps_affine((0.8, 0.8, 2.5),
                                                                       origin=(0, 0, 0))),
             str(tmp_path / "shifted.nii.gz"))
    datasets.DatasetDict({"train": split([0]), "validation": split(
        [3], label_of=lambda i: tmp_path / "shifted.nii.gz")}).save_to_disk(str(tmp_path / "ds2"))
    report = check_volumes(DataConfig(source="hf", hf=HFDataConfig(path=str(tmp_path / "ds2"),
                                                                   test_split=None)))
    assert [(r.split, r.case_id, r.problem) for r in report.rows] == [
        ("train", "case_000", ""), ("val", "case_003", "label/image geometry differ")]
    assert "shifted.nii.gz and its image" in report.errors[0]


def test_data_synth_volumes_command_says_how_to_train(tmp_path):
    run = subprocess.run([sys.executable, "-m", "sam_medft", "data", "synth", "vols", "--volumes",
                          "--n-train", "2", "--n-test", "1", "--size", "8"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    said = " ".join(run.stdout.split())
    assert "wrote 2 training and 1 test volumes" in said
    assert f"data.folder=vols/{DATASET_NAME}" in said and "data.labels=null" in said
    assert len(read_nnunet(tmp_path / "vols" / DATASET_NAME).train) == 2
    assert read_volume(tmp_path / "vols" / DATASET_NAME / "imagesTs" / "case_002_0000.nii.gz"
                       ).shape == (8, 8, 20)


def test_nnunet_json_problems_are_one_message(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    meta = {"labels": {"background": 0, "liver": 1}, "channel_names": {"0": "CT"},
            "file_ending": ".png"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SamMedftError, match="file_ending '.png'"):
        read_nnunet(tmp_path)
    meta.update(file_ending=".nii.gz", labels={"background": 0, "tumour": [1, 2]})
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SamMedftError, match="region-based labels are not supported"):
        read_nnunet(tmp_path)
    meta.update(labels={"liver": 1})
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SamMedftError, match="background value 0"):
        read_nnunet(tmp_path)
