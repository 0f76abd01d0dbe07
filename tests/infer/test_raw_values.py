"""`--values raw`: prediction PNGs in the user's own mask values, and a legend that says them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import sam_medft
from sam_medft.cli import app
from sam_medft.errors import SamMedftError
from sam_medft.infer.predict import predict_paths

runner = CliRunner()


def _run(folder: Path, class_names: list[str], labels: dict[str, str] | None) -> Path:
    """The tiny base saved untrained as an adapter with these classes (labels None: binary)."""
    from sam_medft.adapters.artifact import save_adapter
    from sam_medft.adapters.methods import apply_method
    from sam_medft.config import PeftSettings
    from sam_medft.models.registry import build_tiny
    from sam_medft.runs import AdapterMeta

    n = len(class_names)
    meta = AdapterMeta(
        base_model="tiny", num_classes=n, class_names=class_names, method="vanilla",
        scope="decoder", normalization="sam", input_size=256, mask_size=64, mask_outputs=n,
        labels=labels, binary=labels is None,
    )  # fmt: skip
    model, _ = apply_method(build_tiny(n), PeftSettings(method="vanilla", scope="decoder"))
    save_adapter(model, meta, folder / "adapter")
    return folder


@pytest.fixture(scope="module")
def zones(tmp_path_factory) -> Path:
    """A run trained (here: saved untrained) on 0/254/255 masks."""
    return _run(tmp_path_factory.mktemp("zones"), ["background", "zone_a", "zone_b"],
                {"0": "background", "254": "zone_a", "255": "zone_b"})


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 48)), ("b.png", (52, 36))):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(root / name)
    return root


def test_raw_pngs_hold_the_training_mask_values(zones, scans, tmp_path):
    predictor = sam_medft.load(zones, device="cpu")
    predict_paths(predictor, [scans], tmp_path / "cls", show_progress=False)
    res = runner.invoke(app, ["predict", str(zones), str(scans), "--out", str(tmp_path / "raw"),
                              "--values", "raw", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    seen = set()
    for name in ("a.png", "b.png"):
        classes = np.asarray(Image.open(tmp_path / "cls" / name))
        img = Image.open(tmp_path / "raw" / name)
        raw = np.asarray(img)
        assert img.mode == "L" and raw.dtype == np.uint8 and raw.shape == classes.shape
        assert set(np.unique(raw)) <= {0, 254, 255}
        assert np.array_equal(raw, np.array([0, 254, 255])[classes])
        seen |= set(np.unique(classes).tolist())
        # the Python API writes the same
        assert np.array_equal(predictor.predict(scans / name, values="raw"), raw)
        assert np.array_equal(predictor.to_raw_values(classes), raw)
    assert len(seen) > 1  # the comparison above saw more than one class
    for out, png in (("cls", [0, 1, 2]), ("raw", [0, 254, 255])):
        legend = json.loads((tmp_path / out / "legend.json").read_text())
        assert [legend[k]["raw_value"] for k in ("0", "1", "2")] == [0, 254, 255]
        assert [legend[k]["png_value"] for k in ("0", "1", "2")] == png
        assert [legend[k]["index"] for k in ("0", "1", "2")] == [0, 1, 2]
        assert legend["1"]["name"] == "zone_a" and legend["1"]["color"] == [230, 25, 75]


def test_raw_values_past_255_are_16_bit(scans, tmp_path):
    run = _run(tmp_path / "atlas", ["background", "cortex", "nucleus"],
               {"0": "background", "1002": "cortex", "49": "nucleus"})
    predictor = sam_medft.load(run, device="cpu")
    predict_paths(predictor, [scans / "a.png"], tmp_path / "out", values="raw",
                  show_progress=False)
    raw = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert raw.dtype == np.uint16
    classes = predictor.predict(scans / "a.png")
    assert np.array_equal(raw, np.array([0, 1002, 49])[classes])


def test_binary_runs_say_what_they_write(scans, tmp_path):
    run = _run(tmp_path / "bin", ["background", "foreground"], None)
    res = runner.invoke(app, ["predict", str(run), str(scans / "a.png"), "--out",
                              str(tmp_path / "out"), "--values", "raw", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    legend = json.loads((tmp_path / "out" / "legend.json").read_text())
    assert legend["0"]["raw_value"] == 0 and legend["1"]["raw_value"] == 255
    assert legend["1"]["png_value"] == 255
    assert "not recorded" in legend["1"]["note"] and "--foreground-value" in legend["1"]["note"]
    assert set(np.unique(np.asarray(Image.open(tmp_path / "out" / "a.png")))) <= {0, 255}
    # 0/1 training masks: --foreground-value 1
    predictor = sam_medft.load(run, device="cpu")
    predict_paths(predictor, [scans / "a.png"], tmp_path / "one", values="raw", foreground=1,
                  show_progress=False)
    ones = np.asarray(Image.open(tmp_path / "one" / "a.png"))
    assert np.array_equal(ones, predictor.predict(scans / "a.png"))
    legend = json.loads((tmp_path / "one" / "legend.json").read_text())
    assert legend["1"]["raw_value"] == 1 and "not recorded" not in legend["1"]["note"]
    # class mode: the legend still names the value, never null
    predict_paths(predictor, [scans / "a.png"], tmp_path / "cls", show_progress=False)
    legend = json.loads((tmp_path / "cls" / "legend.json").read_text())
    assert legend["1"]["raw_value"] == 255 and legend["1"]["png_value"] == 1


def test_value_mistakes_fail_before_anything_is_written(zones, scans, tmp_path):
    predictor = sam_medft.load(zones, device="cpu")
    cases = [({"values": "rawest"}, "--values 'rawest'"),
             ({"values": "raw", "foreground": 1}, "--foreground-value is for binary runs"),
             ({"foreground": 1}, "add --values raw")]
    for kwargs, message in cases:
        with pytest.raises(SamMedftError, match=message):
            predict_paths(predictor, [scans], tmp_path / "out", show_progress=False, **kwargs)
        with pytest.raises(SamMedftError, match=message):
            predictor.predict(scans / "a.png", **kwargs)
    assert not (tmp_path / "out").exists()


def test_index_pngs_are_plain_grey_class_indices(zones, scans, tmp_path):
    """--values index: the palette's class indices, but in a one-channel PNG, so tools that
    read PNGs as grey values (nnU-Net's reader, OpenCV) get the indices, not RGB colours."""
    predictor = sam_medft.load(zones, device="cpu")
    predict_paths(predictor, [scans], tmp_path / "cls", show_progress=False)
    res = runner.invoke(app, ["predict", str(zones), str(scans), "--out", str(tmp_path / "idx"),
                              "--values", "index", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for name in ("a.png", "b.png"):
        palette = Image.open(tmp_path / "cls" / name)
        plain = Image.open(tmp_path / "idx" / name)
        assert palette.mode == "P" and plain.mode == "L"
        assert np.array_equal(np.asarray(plain), np.asarray(palette))
        assert np.array_equal(np.asarray(plain.convert("RGB"))[..., 0], np.asarray(plain))
    legend = json.loads((tmp_path / "idx" / "legend.json").read_text())
    assert [legend[k]["png_value"] for k in ("0", "1", "2")] == [0, 1, 2]
    assert np.array_equal(predictor.predict(scans / "a.png", values="index"),
                          np.asarray(Image.open(tmp_path / "idx" / "a.png")))
    with pytest.raises(SamMedftError, match="add --values raw"):
        predict_paths(predictor, [scans], tmp_path / "x", values="index", foreground=1,
                      show_progress=False)


def test_raw_predictions_score_against_raw_masks_with_the_legend_names(zones, scans, tmp_path):
    """Interop end to end: `predict --values raw` writes the masks' own values, and
    `eval --pred` scores them against 0/254/255 references, naming classes from legend.json."""
    predictor = sam_medft.load(zones, device="cpu")
    predict_paths(predictor, [scans], tmp_path / "raw", values="raw", show_progress=False)
    refs = tmp_path / "refs"
    refs.mkdir()
    for name in ("a.png", "b.png"):
        raw = np.asarray(Image.open(tmp_path / "raw" / name)).copy()
        if name == "b.png":
            raw[: raw.shape[0] // 2] = 0  # half of b's labels erased in the reference
        Image.fromarray(raw).save(refs / name)
    res = runner.invoke(app, ["eval", "--pred", str(tmp_path / "raw"), "--ref", str(refs),
                              "--out", str(tmp_path / "ev"), "--overlays", "0"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["class_names"] == {"254": "zone_a", "255": "zone_b"}
    assert "legend.json" in summary["run"]["classes_from"]
    dice = {(e["reference_file"][-5:], c): m["Dice"] for e in summary["metric_per_case"]
            for c, m in e["metrics"].items()}
    assert all(v == 1.0 for (f, _), v in dice.items() if f == "a.png" and v is not None)
    assert any(v is not None and v < 1.0 for (f, _), v in dice.items() if f == "b.png")
