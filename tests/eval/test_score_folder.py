"""`sam-medft eval --pred DIR --ref LIST_OR_DIR`: prediction folders written by hand score the
closed-form numbers, in 2-D (PNG/npy) and 3-D (NIfTI with an anisotropic, permuted affine)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sam_medft.cli import app
from sam_medft.data.synthetic_volumes import write_synthetic_volumes
from sam_medft.errors import SamMedftError
from sam_medft.eval.label_files import LabelFile, read_labels, reference_image
from sam_medft.eval.score_folder import parse_classes, score_prediction_folder

runner = CliRunner()
NSD_ONE = (20 + math.sqrt(2)) / (36 + 2 * math.sqrt(2))  # see test_eval_metrics.py


def square(shift: int = 0, value: int = 255) -> np.ndarray:
    m = np.zeros((32, 32), np.uint8)
    m[10:20, 10 + shift : 20 + shift] = value
    return m


def _png(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def folders_2d(tmp_path) -> tuple[Path, Path]:
    """References in the user's raw values (0/255); predictions written by hand: case a is the
    square shifted 2 columns (Dice 0.8), case b exact (PNG), case c exact (npy)."""
    ref, pred = tmp_path / "masks", tmp_path / "preds"
    for name in ("a", "b", "c"):
        _png(square(), ref / f"{name}.png")
    _png(square(2), pred / "a.png")
    _png(square(), pred / "b.png")
    np.save(pred / "c.npy", square().astype(np.int64))
    return pred, ref


def test_a_hand_written_2d_folder_scores_the_closed_form(folders_2d, tmp_path):
    pred, ref = folders_2d
    res = runner.invoke(app, ["eval", "--pred", str(pred), "--ref", str(ref),
                              "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    rows = {r["case"]: r for r in _csv(tmp_path / "ev" / "per_case.csv")}
    assert set(rows) == {"a", "b", "c"} and {r["class_id"] for r in rows.values()} == {"255"}
    assert float(rows["a"]["dice"]) == pytest.approx(0.8)
    assert float(rows["a"]["hd95"]) == pytest.approx(2.0)
    assert float(rows["a"]["nsd"]) == pytest.approx(NSD_ONE, abs=1e-6)
    assert float(rows["b"]["dice"]) == 1.0 and float(rows["c"]["dice"]) == 1.0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["per_class"]["255"]["dice"]["mean"] == pytest.approx(2.8 / 3)
    assert summary["run"]["spacing"].startswith("pixels")
    assert "larger of the two directed 95th percentiles" in summary["run"]["hd95"]
    assert [e["metrics"]["255"]["Dice"] for e in summary["metric_per_case"]] == pytest.approx(
        [0.8, 1.0, 1.0])
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "length (2-D) or area (3-D)" in page and "worst · class 255 255 · case a" in page
    assert len(list((tmp_path / "ev" / "overlays").glob("*.png"))) == 3  # a, b worst; c best
    assert "per_slice.csv" not in res.output
    said = " ".join(res.output.split())
    assert "Segmentation metrics per image at its original size (3 cases" in said
    assert "Metrics per image at its original size" in page and "volume" not in said


def test_2d_spacing_and_class_names(folders_2d, tmp_path):
    pred, ref = folders_2d
    result = score_prediction_folder(pred, ref, out_dir=tmp_path / "ev", classes="255=zone",
                                     spacing="2,2", overlays=0, show_progress=False)
    a = next(r for r in result.rows if r["case"] == "a")
    assert a["class_name"] == "zone" and a["hd95"] == pytest.approx(4.0)
    assert result.summary["class_names"] == {"255": "zone"} and result.overlays == []


def test_a_reference_list_matches_predictions_by_image_name(folders_2d, tmp_path):
    """`sam-medft predict test.csv` names its outputs after the images: a list matches them,
    and the overlays show the listed image under the contours."""
    pred, ref = folders_2d
    images = tmp_path / "images"
    for name in ("a", "b", "c"):
        _png(np.full((32, 32), 100, np.uint8), images / f"scan_{name}.png")
    for p in list(pred.iterdir()):
        p.rename(pred / f"scan_{p.name}")
    lst = tmp_path / "test.csv"
    lst.write_text("".join(f"images/scan_{n}.png,masks/{n}.png\n" for n in ("a", "b", "c")))
    result = score_prediction_folder(pred, lst, out_dir=tmp_path / "ev", overlays=1,
                                     show_progress=False)
    assert {r["case"]: r["dice"] for r in result.rows} == pytest.approx(
        {"scan_a": 0.8, "scan_b": 1.0, "scan_c": 1.0})
    assert len(result.overlays) == 2


# ---- volumes -----------------------------------------------------------------------------------
# File axes (i, j, k) with i along the body axis (S), j along A, k along R, spacing 2.5 x 0.7 x
# 0.7 mm, and an origin: a permuted, anisotropic, non-identity affine. Slices are along i.
AFFINE = np.array([[0, 0, 0.7, -20.0], [0, 0.7, 0, 5.0], [2.5, 0, 0, 40.0], [0, 0, 0, 1]])


def box(shift: int = 0, value: int = 1) -> np.ndarray:
    v = np.zeros((12, 16, 16), np.uint8)
    v[2 + shift : 8 + shift, 3:13, 3:13] = value
    return v


def _nii(arr: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


@pytest.fixture
def nnunet_volumes(tmp_path) -> tuple[Path, Path]:
    """An nnU-Net-style labelsTs/ with dataset.json; predictions: case_001 one slice lower
    (Dice 1000/1200, HD95 one slice = 2.5 mm), case_002 exact."""
    root = tmp_path / "Dataset001_Box"
    labels = root / "labelsTs"
    _nii(box(), labels / "case_001.nii.gz")
    _nii(box(), labels / "case_002.nii.gz")
    (root / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "organ": 1}, "channel_names": {"0": "CT"}}))
    pred = tmp_path / "nnunet_preds"
    _nii(box(1), pred / "case_001.nii.gz")
    _nii(box(), pred / "case_002.nii.gz")
    return pred, labels


def test_hand_written_volumes_score_3d_metrics_in_mm(nnunet_volumes, tmp_path):
    pred, ref = nnunet_volumes
    res = runner.invoke(app, ["eval", "--pred", str(pred), "--ref", str(ref)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "Segmentation metrics per volume in 3-D (HD95 and NSD in mm" in said
    assert "each image" not in said
    out = pred.parent / "nnunet_preds_eval"  # the default: beside the predictions
    rows = {r["case"]: r for r in _csv(out / "per_case.csv")}
    one = rows["case_001"]
    assert one["class_name"] == "organ"  # from dataset.json
    assert float(one["dice"]) == pytest.approx(1000 / 1200)
    assert float(one["iou"]) == pytest.approx(500 / 700)
    assert float(one["hd95"]) == pytest.approx(2.5, abs=1e-5)  # mm: the slice spacing
    assert (int(one["tp"]), int(one["fp"]), int(one["fn"])) == (500, 100, 100)
    assert float(rows["case_002"]["dice"]) == 1.0 and float(rows["case_002"]["hd95"]) == 0.0
    # per slice: case_001 has 7 slices with the organ: 5 overlap exactly, 1 miss, 1 false
    # positive; case_002 6 exact slices
    slices = _csv(out / "per_slice.csv")
    assert len(slices) == 13
    kinds = [r["empty_case"] for r in slices if r["case"].startswith("case_001#")]
    assert sorted(kinds) == ["false_positive", "miss"] + ["normal"] * 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_slice"]["per_class"]["1"]["dice"]["mean"] == pytest.approx(11 / 13)
    assert summary["per_class"]["1"]["hd95"]["mean"] == pytest.approx(1.25, abs=1e-5)
    assert summary["run"]["spacing"] == "mm (from the NIfTI headers)"
    assert summary["metric_per_case"][0]["reference_file"].endswith("case_001.nii.gz")
    page = (out / "report.html").read_text()
    assert 'id="slice-summary"' in page and "Per-slice numbers" in page
    assert "Metrics per volume in 3-D (HD95 and NSD in mm" in page
    strips = sorted((out / "overlays").glob("*.png"))
    # two cases, two overlays per class: each case once, worst first
    assert [p.name for p in strips] == ["worst_class1_case_001.png", "worst_class1_case_002.png"]
    width, height = Image.open(strips[0]).size
    assert width > 2.5 * height  # a strip of 5 slices


def test_volume_geometry_mismatch_names_both_files(nnunet_volumes, tmp_path):
    pred, ref = nnunet_volumes
    moved = AFFINE.copy()
    moved[2, 0] = 3.0  # another slice spacing: resampled
    _nii(box(), pred / "case_002.nii.gz", moved)
    with pytest.raises(SamMedftError, match="different affines") as err:
        score_prediction_folder(pred, ref, out_dir=tmp_path / "ev", show_progress=False)
    assert "case_002.nii.gz" in str(err.value) and str(ref) in str(err.value)
    _nii(box()[:, :, :15], pred / "case_002.nii.gz")
    with pytest.raises(SamMedftError, match=r"has shape \(12, 16, 15\) but its reference"):
        score_prediction_folder(pred, ref, out_dir=tmp_path / "ev", show_progress=False)
    assert not (tmp_path / "ev" / "summary.json").exists()


def test_unmatched_and_mixed_files_stop_before_anything_is_written(nnunet_volumes, tmp_path):
    pred, ref = nnunet_volumes
    (pred / "case_002.nii.gz").rename(pred / "case_009.nii.gz")
    with pytest.raises(SamMedftError, match="1 reference case.*case_002.*1 prediction"):
        score_prediction_folder(pred, ref, out_dir=tmp_path / "ev", show_progress=False)
    (pred / "case_009.nii.gz").rename(pred / "case_002.nii.gz")
    _png(square(), ref / "case_003.png")
    _png(square(), pred / "case_003.png")
    with pytest.raises(SamMedftError, match="mix 3-D volumes"):
        score_prediction_folder(pred, ref, out_dir=tmp_path / "ev", show_progress=False)
    assert not (tmp_path / "ev").exists()


def test_out_folder_mistakes(folders_2d, tmp_path):
    pred, ref = folders_2d
    with pytest.raises(SamMedftError, match="inside the --pred folder"):
        score_prediction_folder(pred, ref, out_dir=pred / "eval", show_progress=False)
    mine = tmp_path / "mine"
    _png(square(), mine / "keep.png")
    with pytest.raises(SamMedftError, match="did not write"):
        score_prediction_folder(pred, ref, out_dir=mine, show_progress=False)
    assert (mine / "keep.png").exists()
    # a second scoring into the same folder replaces the first one's outputs
    for _ in range(2):
        score_prediction_folder(pred, ref, out_dir=tmp_path / "ev", overlays=0,
                                show_progress=False)
    res = runner.invoke(app, ["eval", "--pred", str(pred)])
    assert "--pred and --ref go together" in str(res.exception)
    res = runner.invoke(app, ["eval", "runs/x", "--pred", str(pred), "--ref", str(ref)])
    assert "either a RUN" in str(res.exception)
    res = runner.invoke(app, ["eval"])
    assert "needs a RUN" in str(res.exception) and "--pred DIR --ref" in str(res.exception)


def test_class_values_in_predictions_that_are_no_class_are_named(folders_2d, tmp_path):
    """Class-index predictions (1) against raw-value references (255): the warning says how."""
    pred, ref = folders_2d
    _png(square(value=1), pred / "b.png")
    res = runner.invoke(app, ["eval", "--pred", str(pred), "--ref", str(ref), "--out",
                              str(tmp_path / "ev"), "--overlays", "0"])
    assert res.exit_code == 0, res.output
    assert "--values raw" in " ".join(res.output.split())


@pytest.mark.parametrize("text", ["0=bg", "a=x", "1,1", ""])
def test_bad_classes_option(text):
    with pytest.raises(SamMedftError, match="--classes"):
        parse_classes(text)


STRIP_LAYOUT = """(() => ({
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  body: document.body.getBoundingClientRect().width,
  strips: [...document.querySelectorAll('.overlays figure.strip img')].map(
      i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width]),
  slices: [...document.querySelectorAll('#slice-summary tbody tr')].map(
      r => r.cells[0].textContent.trim()),
  definitions: document.querySelector('#definitions').textContent,
}))()"""


def test_volume_report_renders_strips_full_width_in_chromium(chromium_page, nnunet_volumes,
                                                              tmp_path):
    pred, ref = nnunet_volumes
    result = score_prediction_folder(pred, ref, out_dir=tmp_path / "ev", show_progress=False)
    page = chromium_page(result.report, STRIP_LAYOUT, width=1280)
    assert page.errors() == []
    s = page.value
    assert s["scrollWidth"] <= s["innerWidth"]
    assert len(s["strips"]) == 2
    for complete, natural, shown in s["strips"]:
        assert complete and natural > 0 and shown > 0.9 * s["body"] - 40  # a whole row
    assert s["slices"] == ["1 organ", "mean over foreground classes"]
    assert "larger of the two directed 95th percentiles" in s["definitions"]
    assert "DeepMind" in s["definitions"]


def test_a_prediction_stored_in_another_axis_order_is_the_same_grid(nnunet_volumes, tmp_path):
    """A tool that writes RAS+-ordered files (nibabel's as_closest_canonical) for LPS-like
    references: the same voxels in space, so the same scores; volumes are compared in RAS+."""
    pred, ref = nnunet_volumes
    for case in ("case_001", "case_002"):
        img = nib.load(str(pred / f"{case}.nii.gz"))
        nib.save(nib.as_closest_canonical(img), str(pred / f"{case}.nii.gz"))
    assert "".join(nib.aff2axcodes(nib.load(str(pred / "case_001.nii.gz")).affine)) == "RAS"
    assert "".join(nib.aff2axcodes(AFFINE)) != "RAS"
    result = score_prediction_folder(pred, ref, out_dir=tmp_path / "ev", overlays=0,
                                     show_progress=False)
    assert {r["case"]: r["dice"] for r in result.rows} == pytest.approx(
        {"case_001": 1000 / 1200, "case_002": 1.0})


def test_strips_show_the_nnunet_image_beside_the_labels(tmp_path):
    """labelsTs/case.nii.gz finds imagesTs/case_0000.nii.gz for the report: on the labels'
    grid and slice order (the bright synthetic organ lies under its label)."""
    root = write_synthetic_volumes(tmp_path / "d", n_train=1, n_test=1, size=24, n_slices=8)
    label = root / "labelsTs" / "case_001.nii.gz"
    labels = read_labels(label)
    image = reference_image(LabelFile("case_001", label), labels)
    assert image is not None and image.shape == labels.data.shape
    assert 0 <= image.min() and image.max() <= 255
    assert image[labels.data == 1].mean() > image[labels.data == 0].mean() + 20
    (root / "imagesTs" / "case_001_0000.nii.gz").unlink()
    assert reference_image(LabelFile("case_001", label), labels) is None


@pytest.mark.parametrize("extra, named", [
    (["--clicks", "2"], "--clicks"), (["--device", "cpu"], "--device"),
    (["--revision", "main"], "--revision"), (["--baseline"], "--baseline"),
    (["--split", "test"], "--split"), (["--data", "eval.overlays=0"], "--data"),
    (["--device", "cpu", "--clicks", "0"], "--clicks, --device"),
])
def test_run_only_options_with_pred_are_refused_by_name(folders_2d, tmp_path, extra, named):
    """--pred loads no model: a run option would be silently ignored, so it is refused."""
    pred, ref = folders_2d
    res = runner.invoke(app, ["eval", "--pred", str(pred), "--ref", str(ref),
                              "--out", str(tmp_path / "ev"), *extra])
    assert isinstance(res.exception, SamMedftError), res.output
    assert str(res.exception).startswith(f"{named} ") and f"drop {named}" in str(res.exception)
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("extra, named", [
    (["--classes", "255=organ"], "--classes"), (["--nsd-tolerance", "2"], "--nsd-tolerance"),
    (["--empty-policy", "count"], "--empty-policy"), (["--overlays", "0"], "--overlays"),
    (["--spacing", "1,1"], "--spacing"),
])
def test_pred_only_options_with_a_run_are_refused_by_name(tmp_path, extra, named):
    """Checked before the run is opened (runs/missing does not exist)."""
    res = runner.invoke(app, ["eval", str(tmp_path / "missing"), *extra])
    assert isinstance(res.exception, SamMedftError), res.output
    assert str(res.exception).startswith(f"{named} is for --pred")
