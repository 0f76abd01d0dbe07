"""Automatic-mode prediction round trip on a real tiny run: sizes, names, labels, folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sam_medft
from sam_medft.errors import SamMedftError
from sam_medft.infer.predict import FineTunedSam, predict_paths


@pytest.fixture(scope="module")
def predictor(demo_run: Path) -> FineTunedSam:
    return sam_medft.load(demo_run, device="cpu")


@pytest.fixture
def image_tree(demo_run: Path, tmp_path: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """in/a.png, in/sub/b.png, in/sub/deeper/c.png: synthetic test images, one not square."""
    from sam_medft.config import load_recipe
    from sam_medft.data.sources import build_splits

    src = build_splits(load_recipe(demo_run / "recipe.yaml").data)["test"]
    root = tmp_path / "in"
    sizes = {}
    for i, rel in zip((0, 3, 1), ("a.png", "sub/b.png", "sub/deeper/c.png"), strict=True):
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.image_path(i), dst)
        sizes[rel] = Image.open(dst).size[::-1]  # (H, W)
    assert len({h == w for h, w in sizes.values()}) == 2  # square and non-square inputs
    return root, sizes


def test_predict_round_trip_keeps_names_sizes_and_structure(predictor, image_tree, tmp_path):
    root, sizes = image_tree
    out = tmp_path / "out"
    written = predict_paths(predictor, [root], out, batch_size=2, show_progress=False)
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(sizes)
    for rel, size in sizes.items():
        labels = np.asarray(Image.open(out / rel))
        assert labels.shape == size
        assert set(np.unique(labels)) <= {0, 1, 2}
    assert any(np.asarray(Image.open(p)).any() for p in written)  # it finds the organs
    legend = json.loads((out / "legend.json").read_text())
    assert [legend[k]["name"] for k in ("0", "1", "2")] == ["background", "organ_a", "organ_b"]
    assert legend["2"]["raw_value"] == 255


def test_pipelined_predict_writes_what_the_python_api_predicts(predictor, image_tree, tmp_path):
    """Loader workers, argmax on the device and threaded writes change nothing: every PNG is
    `predictor.predict(path)` and every .probs.npy is `predict_proba` in float16."""
    root, sizes = image_tree
    out = tmp_path / "out"
    predict_paths(predictor, [root], out, batch_size=2, num_workers=2, save_probs=True,
                  overlays=True, show_progress=False)
    for rel in sizes:
        want = predictor.predict(root / rel)
        assert np.array_equal(np.asarray(Image.open(out / rel)), want), rel
        probs = np.load((out / rel).with_suffix(".probs.npy"))
        assert probs.dtype == np.float16
        np.testing.assert_allclose(probs, predictor.predict_proba([root / rel])[0], atol=1e-3)
        assert (out / rel).with_suffix(".overlay.png").is_file()


def test_existing_outputs_are_not_overwritten_silently(predictor, image_tree, tmp_path):
    root, _ = image_tree
    out = tmp_path / "out"
    predict_paths(predictor, [root / "a.png"], out, show_progress=False)
    before = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(b"user data")
    with pytest.raises(SamMedftError, match="already exist.*--overwrite"):
        predict_paths(predictor, [root / "a.png"], out, show_progress=False)
    assert (out / "a.png").read_bytes() == b"user data"
    predict_paths(predictor, [root / "a.png"], out, overwrite=True, show_progress=False)
    assert (out / "a.png").read_bytes() == before


def test_python_api_predict_array(predictor, image_tree):
    root, sizes = image_tree
    rgb = np.asarray(Image.open(root / "sub/b.png").convert("RGB"))
    labels = predictor.predict(rgb)
    assert labels.shape == sizes["sub/b.png"] and labels.dtype == np.uint8
    grey = np.asarray(Image.open(root / "sub/b.png").convert("L"))
    assert np.array_equal(predictor.predict(grey), labels)  # grey is replicated to RGB
    assert np.array_equal(predictor.predict(root / "sub/b.png"), labels)  # path == array
    odd = np.random.default_rng(0).integers(0, 255, (37, 91), dtype=np.uint8)
    assert predictor.predict(odd).shape == (37, 91)


def test_prompt_run_without_prompts_says_what_to_do(untrained_run, image_tree, tmp_path):
    predictor = sam_medft.load(untrained_run("box"), device="cpu")
    with pytest.raises(SamMedftError, match="prompt.mode=box.*pass prompts"):
        predictor.predict(np.zeros((32, 40), np.uint8))
    with pytest.raises(SamMedftError, match="prompt.mode=box"):
        predict_paths(predictor, [image_tree[0]], tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_prediction_runs_the_fast_attention_and_matches_the_plain_path(demo_run, image_tree):
    """`sam_medft.load` turns the fast vision attention on; the plain path (transformers' own
    attention with the materialised rel-pos bias) gives the same probabilities."""
    from sam_medft.models.fast_attention import is_fast_attention

    fast = sam_medft.load(demo_run, device="cpu")
    plain = sam_medft.load(demo_run, device="cpu", fast_attention=False)
    assert is_fast_attention(fast.model) and not is_fast_attention(plain.model)
    root, sizes = image_tree
    images = [root / rel for rel in sizes]
    for got, want in zip(fast.predict_proba(images), plain.predict_proba(images), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert (got.argmax(0) == want.argmax(0)).mean() > 0.999


# ---- the --out folder: never the user's files ------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """scans/a.png, scans/sub/b.png and scans/list.csv: small grey images of the user's."""
    root = tmp_path / "scans"
    rng = np.random.default_rng(0)
    for rel in ("a.png", "sub/b.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(root / rel)
    (root / "list.csv").write_text("a.png,a.png\nsub/b.png,sub/b.png\n")
    return root


@pytest.mark.parametrize(
    ("inputs", "out", "message"),
    [
        (["scans"], "scans", "is the input folder"),
        (["scans"], "scans/sub", "is inside the input folder"),
        (["scans/a.png"], "scans", "holds the input scans/a.png"),
        (["scans/list.csv"], ".", "holds the input scans/list.csv"),
        (["scans/sub/b.png"], "scans/sub", "holds the input"),
    ],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_out_among_the_inputs_is_refused_before_the_model_loads(
    scans, tmp_path, monkeypatch, inputs, out, message, overwrite
):
    """The fault that once replaced the scans with label maps: refused whatever --overwrite
    says, without suggesting it, before the (here missing) model is even looked at."""
    from typer.testing import CliRunner

    from sam_medft.cli import app

    monkeypatch.chdir(tmp_path)
    before = _digest(tmp_path)
    args = ["predict", str(tmp_path / "no_such_run"), *inputs, "--out", out]
    result = CliRunner().invoke(app, args + (["--overwrite"] if overwrite else []))
    assert isinstance(result.exception, SamMedftError), result.output
    text = str(result.exception)
    assert message in text and "--overwrite" not in text and "_predictions" in text
    assert _digest(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scans"]  # nothing created


def test_overwrite_replaces_only_what_predict_wrote(untrained_run, scans, tmp_path):
    predictor = sam_medft.load(untrained_run("none"), device="cpu")
    out = tmp_path / "out"
    predict_paths(predictor, [scans / "a.png"], out, show_progress=False)
    manifest = json.loads((out / "sam_medft_predictions.json").read_text())
    assert manifest["files"] == ["a.png", "legend.json"]
    ours = (out / "a.png").read_bytes()

    # a file of the user's where an output would go: refused (with or without --overwrite)
    (out / "b.png").write_bytes(b"the user's own b.png")
    before = _digest(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(SamMedftError, match=r"b.png exists and was not written by") as e:
            predict_paths(predictor, [scans / "a.png", scans / "sub" / "b.png"], out,
                          overwrite=overwrite, show_progress=False)
        assert "--overwrite" not in str(e.value)
        assert _digest(tmp_path) == before

    # our own file: --overwrite replaces it, the user's files stay as they are
    (out / "a.png").write_bytes(b"stale")
    with pytest.raises(SamMedftError, match="already exist.*pass --overwrite"):
        predict_paths(predictor, [scans / "a.png"], out, show_progress=False)
    predict_paths(predictor, [scans / "a.png"], out, overwrite=True, show_progress=False)
    assert (out / "a.png").read_bytes() == ours
    assert (out / "b.png").read_bytes() == b"the user's own b.png"


def test_a_foreign_legend_or_probs_file_is_never_replaced(untrained_run, scans, tmp_path):
    predictor = sam_medft.load(untrained_run("none"), device="cpu")
    for name in ("legend.json", "a.probs.npy", "a.overlay.png"):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).write_bytes(b"mine")
        with pytest.raises(SamMedftError, match=f"{name} exists and was not written"):
            predict_paths(predictor, [scans / "a.png"], out, save_probs=True, overlays=True,
                          overwrite=True, show_progress=False)
        assert _digest(out) == {name: _digest(out)[name]} and (out / name).read_bytes() == b"mine"


def test_list_entries_with_dot_dot_stay_inside_out(untrained_run, scans, tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "up.csv").write_text("../scans/a.png,x\n")
    predictor = sam_medft.load(untrained_run("none"), device="cpu")
    written = predict_paths(predictor, [tmp_path / "lists" / "up.csv"], tmp_path / "out",
                            show_progress=False)
    assert written == [tmp_path / "out" / "scans" / "a.png"] and written[0].is_file()


@pytest.mark.parametrize(("args", "flag"), [(("--batch-size", "0"), "--batch-size"),
                                            (("--workers", "-1"), "--workers")])
def test_bad_numbers_stop_the_command_first(untrained_run, scans, tmp_path, args, flag):
    from typer.testing import CliRunner

    from sam_medft.cli import app

    result = CliRunner().invoke(app, ["predict", str(tmp_path / "no_such_run"), str(scans),
                                      "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and "Invalid value" in result.output and flag in result.output
    assert not (tmp_path / "out").exists()
    predictor = sam_medft.load(untrained_run("none"), device="cpu")
    key = "batch_size" if flag == "--batch-size" else "num_workers"
    with pytest.raises(SamMedftError, match=f"predict {flag} {args[1]} is too small"):
        predict_paths(predictor, [scans], tmp_path / "out", **{key: int(args[1])})
    assert not (tmp_path / "out").exists()  # the Python API says the same, before any file
