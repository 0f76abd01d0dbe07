"""Prediction on volumes: slices through the one pipeline, reassembled in place, post-processed,
written as NIfTI in the source geometry; `sam-medft predict` on NIfTI volumes; and the round
trip volume -> slices -> training -> prediction -> NIfTI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sam_medft.adapters.artifact import save_adapter
from sam_medft.adapters.methods import apply_method
from sam_medft.config import IntensityConfig, PeftSettings, VolumeConfig, load_recipe
from sam_medft.data.synthetic_volumes import write_dicom_series, write_synthetic_volumes
from sam_medft.data.volume_source import scale_volume, slice_image
from sam_medft.data.volumes import plane, read_volume
from sam_medft.errors import SamMedftError
from sam_medft.infer.pipeline import Images, predict_images
from sam_medft.infer.predict import FineTunedSam
from sam_medft.infer.volume_files import has_volume_inputs, predict_volume_paths
from sam_medft.infer.volume_inference import postprocess
from sam_medft.models.registry import build_tiny
from sam_medft.runs import AdapterMeta
from sam_medft.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
SIZE, SLICES = 16, 8


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    return write_synthetic_volumes(tmp_path_factory.mktemp("vols"), n_train=3, n_test=2,
                                   size=SIZE, n_slices=SLICES)


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """The tiny base saved untrained as a vanilla adapter that says it was trained on 2.5-D
    axial slices with the abdomen window (a real artifact without training)."""
    run = tmp_path_factory.mktemp("volume_run")
    meta = AdapterMeta(
        base_model="tiny", num_classes=3, class_names=["background", "organ_a", "organ_b"],
        method="vanilla", scope="decoder", normalization="sam", input_size=256, mask_size=64,
        mask_outputs=3, labels={"0": "background", "1": "organ_a", "2": "organ_b"},
        intensity=IntensityConfig(preset="ct_abdomen").model_dump(mode="json"),
        volume=VolumeConfig(channels="2.5d").model_dump(mode="json"))
    model, _ = apply_method(build_tiny(3), PeftSettings(method="vanilla", scope="decoder"))
    save_adapter(model, meta, run / "adapter")
    return run


def test_postprocess_keeps_the_largest_component_and_fills_holes():
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:6, 1:6, 1:6] = 1
    labels[3, 3, 3] = 0  # an enclosed hole
    labels[8, 8, 8] = 1  # a stray voxel, not touching the cube
    labels[8, 8, 0] = 2
    labels[2:5, 2:5, 0] = 2  # class 2: 9 + 1 voxels, apart
    out = postprocess(labels, 3, largest_component=True, fill_holes=True)
    assert out[3, 3, 3] == 1 and out[8, 8, 8] == 0
    assert (out == 1).sum() == 125 and (out == 2).sum() == 9
    assert np.array_equal(postprocess(labels, 3), labels)  # no flags: unchanged
    # a hole holding another class is not filled over
    labels2 = labels.copy()
    labels2[3, 3, 3] = 2
    assert postprocess(labels2, 3, fill_holes=True)[3, 3, 3] == 2


def test_volume_prediction_is_each_slice_put_back_in_place(volume_run, volumes, tmp_path):
    predictor = FineTunedSam.load(volume_run, device="cpu")
    src = volumes / "imagesTs" / "case_003_0000.nii.gz"
    vol = read_volume(src)
    labels = predictor.predict_volume(src, out=tmp_path / "case_003.nii.gz", batch_size=4)
    assert labels.shape == vol.shape and labels.dtype == np.uint8
    scaled = scale_volume(vol.array, predictor.intensity, "")
    k = 2
    one = next(predict_images(predictor, Images([slice_image(scaled, 2, k, "2.5d")],
                                                scaled=True)))
    assert np.array_equal(plane(labels, "axial", k), one.labels)
    assert np.array_equal(predictor.predict_volume(vol.array), labels)  # an array in RAS order
    written = nib.load(str(tmp_path / "case_003.nii.gz"))
    source = nib.load(str(src))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine) == ("L", "P", "S")
    assert np.array_equal(read_volume(tmp_path / "case_003.nii.gz", label=True).array, labels)
    with pytest.raises(SamMedftError, match="needs a volume path"):
        predictor.predict_volume(vol.array, out=tmp_path / "x.nii.gz")


def test_predict_command_writes_nifti_volumes_beside_nothing_of_the_users(volume_run, volumes,
                                                                         tmp_path):
    out = tmp_path / "preds"
    cmd = [sys.executable, "-m", "sam_medft", "predict", str(volume_run),
           str(volumes / "imagesTs"), "--out", str(out), "--largest-component", "--fill-holes",
           "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "case_003.nii.gz", "case_004.nii.gz", "legend.json", "sam_medft_predictions.json"]
    for case in ("case_003", "case_004"):
        pred = nib.load(str(out / f"{case}.nii.gz"))
        ref = nib.load(str(volumes / "labelsTs" / f"{case}.nii.gz"))
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    assert json.loads((out / "legend.json").read_text())["2"]["name"] == "organ_b"
    # the folder rules hold before the model loads (run folder given, not a loaded model)
    with pytest.raises(SamMedftError, match="--overwrite"):
        predict_volume_paths(volume_run, [volumes / "imagesTs"], out, show_progress=False)
    with pytest.raises(SamMedftError, match="is inside the input folder .*imagesTs"):
        predict_volume_paths(volume_run, [volumes / "imagesTs"], volumes / "imagesTs" / "p")
    assert not (volumes / "imagesTs" / "p").exists()


def test_predict_command_takes_a_list_of_volumes_and_dicom_series(volume_run, volumes,
                                                                  tmp_path):
    """`predict RUN list.csv`: the list's image column names NIfTI files and a DICOM series
    folder (relative to the list's folder); the label column is ignored."""
    src = volumes / "imagesTs" / "case_003_0000.nii.gz"
    data = tmp_path / "data"
    (data / "scans").mkdir(parents=True)
    (data / "scans" / "case_003_0000.nii.gz").write_bytes(src.read_bytes())
    lps = np.asanyarray(nib.load(str(volumes / "imagesTs" / "case_004_0000.nii.gz")).dataobj)
    write_dicom_series(data / "scans" / "case_004", lps, (1.0, 1.0, 2.5), (-10.0, -10.0, 0.0))
    lst = data / "test.csv"
    lst.write_text("image,mask\nscans/case_003_0000.nii.gz,unused.nii.gz\nscans/case_004,x\n")
    assert has_volume_inputs([lst])
    out = tmp_path / "preds"
    cmd = [sys.executable, "-m", "sam_medft", "predict", str(volume_run), str(lst), "--out",
           str(out), "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "case_003.nii.gz", "case_004.nii.gz", "legend.json", "sam_medft_predictions.json"]
    for case, source in (("case_003", src), ("case_004", data / "scans" / "case_004")):
        pred, vol = read_volume(out / f"{case}.nii.gz", label=True), read_volume(source)
        assert pred.shape == vol.shape and np.allclose(pred.affine, vol.affine)
    # one --out rule for images and volumes: never among the listed volumes, nor holding one
    with pytest.raises(SamMedftError, match="is inside the input folder .*case_004"):
        predict_volume_paths(volume_run, [lst], data / "scans" / "case_004" / "p")
    with pytest.raises(SamMedftError, match="holds the input .*scans/case_00"):
        predict_volume_paths(volume_run, [lst], data / "scans")
    (data / "a.png").write_bytes(b"")
    lst.write_text("scans/case_003_0000.nii.gz\na.png\n")
    with pytest.raises(SamMedftError, match="lists .*a.png, which is not a volume"):
        predict_volume_paths(volume_run, [lst], tmp_path / "p2")
    assert not (tmp_path / "p2").exists() and not (data / "scans" / "case_004" / "p").exists()


def test_volumes_and_images_are_not_mixed(volumes, tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(b"")
    with pytest.raises(SamMedftError, match="a.png is not a volume"):
        has_volume_inputs([volumes / "imagesTs", png])
    assert has_volume_inputs([volumes / "imagesTs"]) and not has_volume_inputs([png])


def test_round_trip_volumes_train_predict_nifti(volumes, tmp_path):
    """nnU-Net raw volumes -> slices -> training (tiny, a few steps) -> predict -> NIfTI that
    keeps the source's shape, affine, orientation and header codes."""
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml", [
        f"output_dir={tmp_path}", "name=vol", "data.source=nnunet", f"data.folder={volumes}",
        "data.labels=null", "data.intensity.preset=ct_abdomen", "data.volumes.channels=2.5d",
        "data.val_fraction=0.34", "train.log_with=none", "train.batch_size=2",
        "train.max_steps=2", "train.eval_every=2", "train.save_every=1000"])
    result = train(recipe)
    meta = AdapterMeta.read(result.run_dir / "adapter")
    assert meta.class_names == ["background", "organ_a", "organ_b"]
    assert meta.volume == {"axis": "axial", "channels": "2.5d", "empty_fraction": 0.2}
    assert meta.intensity["preset"] == "ct_abdomen"
    predictor = FineTunedSam.load(result.run_dir, device="cpu")
    for case in ("case_003", "case_004"):
        src = volumes / "imagesTs" / f"{case}_0000.nii.gz"
        predictor.predict_volume(src, out=tmp_path / "preds" / f"{case}.nii.gz")
        pred, source = nib.load(str(tmp_path / "preds" / f"{case}.nii.gz")), nib.load(str(src))
        assert pred.shape == source.shape
        assert np.allclose(pred.affine, source.affine)
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(source.affine)
        assert int(pred.header["sform_code"]) == int(source.header["sform_code"]) == 1
        assert set(np.unique(np.asanyarray(pred.dataobj))) <= {0, 1, 2}
