"""`sam-medft eval RUN` on a run trained on volumes: slices are put back together into 3-D
volumes scored in mm, beside the per-slice numbers, and the numbers equal those `eval --pred`
gives for the NIfTI files `predict` writes (one definition, whichever way a user scores)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sam_medft.adapters.artifact import save_adapter
from sam_medft.adapters.methods import apply_method
from sam_medft.cli import app
from sam_medft.config import IntensityConfig, PeftSettings, VolumeConfig, load_recipe
from sam_medft.data.synthetic_volumes import write_synthetic_volumes
from sam_medft.eval.evaluate import evaluate_run
from sam_medft.eval.score_folder import score_prediction_folder
from sam_medft.infer.predict import FineTunedSam
from sam_medft.models.registry import build_tiny
from sam_medft.runs import AdapterMeta

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory) -> tuple[Path, Path]:
    """An nnU-Net raw data set of ellipsoid volumes (LPS affine, anisotropic spacing) and a
    run on it: the tiny base saved as a vanilla adapter (untrained, so its predictions are
    arbitrary but deterministic) with the recipe that names the data set."""
    tmp = tmp_path_factory.mktemp("evol")
    data = write_synthetic_volumes(tmp / "data", n_train=2, n_test=2, size=16, n_slices=8)
    run = tmp / "run"
    meta = AdapterMeta(
        base_model="tiny", num_classes=3, class_names=["background", "organ_a", "organ_b"],
        method="vanilla", scope="decoder", normalization="sam", input_size=256, mask_size=64,
        mask_outputs=3, labels={"0": "background", "1": "organ_a", "2": "organ_b"},
        intensity=IntensityConfig(preset="ct_abdomen").model_dump(mode="json"),
        volume=VolumeConfig().model_dump(mode="json"))
    model, _ = apply_method(build_tiny(3), PeftSettings(method="vanilla", scope="decoder"))
    save_adapter(model, meta, run / "adapter")
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml", [
        "data.source=nnunet", f"data.folder={data}", "data.labels=null",
        "data.intensity.preset=ct_abdomen", "eval.overlays=1", "eval.split=test"])
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    return run, data


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_volume_runs_score_3d_in_mm_beside_the_slices(volume_run, tmp_path):
    run, data = volume_run
    result = evaluate_run(run, out_dir=tmp_path / "ev", device="cpu", show_progress=False)
    rows = _rows(tmp_path / "ev" / "per_case.csv")
    assert sorted({r["case"] for r in rows}) == ["case_002", "case_003"]  # volumes, not slices
    assert len(rows) == 4  # 2 volumes x 2 classes
    slices = _rows(tmp_path / "ev" / "per_slice.csv")
    # slices with a class in the reference or the prediction, 2 rows each (this random
    # model predicts something on every slice)
    assert {r["case"] for r in slices} == {f"case_00{c}_{k:03d}" for c in (2, 3) for k in range(8)}
    assert len(slices) == 2 * 8 * 2
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["per_slice"]["n_cases"] == 16
    assert summary["run"]["spacing"] == "mm (from the data)"
    assert summary["run"]["cases"].startswith("3-D volumes")
    # a 3-D case's voxel counts are the sums of its slices'
    for cls in ("1", "2"):
        per_volume = next(r for r in rows if r["case"] == "case_002" and r["class_id"] == cls)
        of_slices = [r for r in slices if r["case"].startswith("case_002_")
                     and r["class_id"] == cls]
        for key in ("tp", "fp", "fn", "gt_pixels", "pred_pixels"):
            assert int(per_volume[key]) == sum(int(r[key]) for r in of_slices)
    assert result.slice_summary is not None
    page = (tmp_path / "ev" / "report.html").read_text()
    assert 'id="slice-summary"' in page
    assert result.overlays and all(p.is_file() for p in result.overlays)


def test_eval_of_a_volume_run_titles_its_table_3d_per_volume(volume_run, tmp_path):
    run, _ = volume_run
    res = CliRunner().invoke(app, ["eval", str(run), "--out", str(tmp_path / "ev"), "--device",
                                   "cpu", "--data", "eval.overlays=0"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "Segmentation metrics per volume in 3-D (HD95 and NSD in mm" in said
    assert "(2 volumes, empty policy" in said and "each image" not in said
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "Metrics per volume in 3-D (HD95 and NSD in mm" in page


def test_eval_run_and_eval_pred_on_predicted_nifti_agree(volume_run, tmp_path):
    """The same model's NIfTI predictions scored by `eval --pred` give the numbers of
    `eval RUN`: reassembly, orientation and spacing are one and the same."""
    run, data = volume_run
    result = evaluate_run(run, out_dir=tmp_path / "ev", device="cpu", show_progress=False)
    predictor = FineTunedSam.load(run, device="cpu")
    for case in ("case_002", "case_003"):
        predictor.predict_volume(data / "imagesTs" / f"{case}_0000.nii.gz",
                                 out=tmp_path / "preds" / f"{case}.nii.gz")
    scored = score_prediction_folder(tmp_path / "preds", data / "labelsTs",
                                     out_dir=tmp_path / "ev_pred", overlays=0,
                                     show_progress=False)
    assert scored.summary["class_names"] == {"1": "organ_a", "2": "organ_b"}  # dataset.json
    by_run = {(r["case"], r["class_id"]): r for r in result.rows}
    assert len(scored.rows) == len(by_run) == 4
    # the random model predicts both classes in both volumes: every distance is compared
    assert all(r["empty_case"] == "normal" and r["hd95"] > 0 for r in scored.rows)
    for r in scored.rows:
        mine = by_run[(r["case"], r["class_id"])]
        assert (r["tp"], r["fp"], r["fn"]) == (mine["tp"], mine["fp"], mine["fn"])
        for key in ("dice", "iou", "hd95", "nsd"):
            np.testing.assert_allclose(r[key], mine[key], rtol=1e-6, equal_nan=True)


def test_a_list_of_volume_pairs_is_evaluated_as_volumes(volume_run, tmp_path):
    """`eval RUN --list vols.csv`: a list of image,label volumes is sliced like the recipe's
    volumes and scored per volume, the same as the test split it lists."""
    run, data = volume_run
    lst = tmp_path / "vols.csv"
    lst.write_text("".join(f"{data}/imagesTs/case_00{i}_0000.nii.gz,{data}/labelsTs/case_00{i}"
                           ".nii.gz\n" for i in (2, 3)))
    by_list = evaluate_run(run, list_file=lst, out_dir=tmp_path / "a", device="cpu",
                           show_progress=False)
    by_split = evaluate_run(run, out_dir=tmp_path / "b", device="cpu", show_progress=False)
    assert [r["case"] for r in by_list.rows] == ["case_002"] * 2 + ["case_003"] * 2
    assert by_list.rows == by_split.rows
    assert by_list.slice_summary == by_split.slice_summary
