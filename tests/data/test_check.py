"""The dataset check: every problem at once, with file names, before any model work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from sam_medft.config import DataConfig
from sam_medft.data.check import check_dataset
from sam_medft.data.lists import Pair
from sam_medft.data.sources import PairSource
from sam_medft.errors import SamMedftError
from sam_medft.resources import recipes_dir

DEMO = recipes_dir() / "demo.yaml"  # absolute: the tests run from any folder


def _pair(root: Path, name: str, mask: np.ndarray, image_shape=None) -> str:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    shape = image_shape or mask.shape
    Image.fromarray(np.full(shape, 90, np.uint8)).save(root / "images" / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{name}.png")
    return f"images/{name}.png,masks/{name}.png"


def _blob(value: int, shape=(16, 16)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[4:9, 4:9] = value
    return m


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(
        source="lists",
        img_folder=root,
        mask_folder=root,
        train_list=root / "train.csv",
        val_list=root / "val.csv",
        **kw,
    )


def _render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_clean_dataset_reports_classes_and_empties(tmp_path):
    rows = [_pair(tmp_path, f"t{i}", _blob(128 if i % 2 else 255)) for i in range(4)]
    rows.append(_pair(tmp_path, "t_empty", np.zeros((16, 16))))
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text(
        _pair(
            tmp_path,
            "v0",
            _blob(128),
        )
        + "\n"
    )
    rep = check_dataset(_cfg(tmp_path, labels={0: "background", 128: "a", 255: "b"}))
    assert rep.ok, rep.errors
    rep.raise_for_errors()  # no-op
    train = rep.splits["train"]
    assert train.n == 5 and train.empty == 1
    assert train.class_images == [5, 2, 2] and train.class_pixels[1] == 2 * 25
    assert sorted(train.value_pixels) == [0, 128, 255]
    assert train.kinds == {"L (1ch 8-bit)": 5}
    assert any("1 of 5 masks have no foreground" in w for w in rep.warnings)
    assert rep.label_map.class_names == ["background", "a", "b"]
    text = _render(rep.table())
    assert "train" in text and "val" in text and "16x16" in text and "0, 128, 255" in text


def test_catches_missing_mismatch_unmapped_and_corrupt(tmp_path):
    rows = [_pair(tmp_path, "ok", _blob(1))]
    rows.append(_pair(tmp_path, "wrong_size", _blob(1), image_shape=(16, 20)))
    rows.append(_pair(tmp_path, "odd_label", _blob(7)))
    rows.append("images/ghost.png,masks/ghost.png")
    rows.append(_pair(tmp_path, "broken", _blob(1)))
    data = (tmp_path / "masks" / "broken.png").read_bytes()
    (tmp_path / "masks" / "broken.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text(_pair(tmp_path, "v", _blob(1)) + "\n")

    rep = check_dataset(_cfg(tmp_path, labels={0: "background", 1: "organ"}))
    assert not rep.ok
    errs = "\n".join(rep.errors)
    assert "missing image" in errs and "ghost.png" in errs and "missing mask" in errs
    assert "size mismatch" in errs and "wrong_size.png is 16x20" in errs
    assert "unmapped labels" in errs and "odd_label.png (values 7)" in errs
    assert "corrupt mask" in errs and "broken.png" in errs
    with pytest.raises(SamMedftError) as e:
        rep.raise_for_errors()
    assert "ghost.png" in str(e.value) and "odd_label.png" in str(e.value)
    assert str(e.value).count("\n- ") == len(rep.errors)  # one message, every problem
    assert "problems" in _render(rep.table())


def test_labels_inferred_or_explained(tmp_path):
    (tmp_path / "train.csv").write_text(
        "\n".join(_pair(tmp_path, f"t{i}", _blob(v)) for i, v in enumerate((1, 2, 0))) + "\n"
    )
    (tmp_path / "val.csv").write_text(_pair(tmp_path, "v", _blob(1)) + "\n")
    rep = check_dataset(_cfg(tmp_path))
    assert rep.ok and rep.label_map.class_names == ["background", "class_1", "class_2"]
    assert any("no data.labels" in w for w in rep.warnings)

    (tmp_path / "train.csv").write_text(_pair(tmp_path, "t9", _blob(255)) + "\n")
    rep = check_dataset(_cfg(tmp_path))
    assert not rep.ok and rep.label_map is None
    assert any("labels:" in e and "255: class_" in e for e in rep.errors)
    assert check_dataset(_cfg(tmp_path, binary=True)).ok


def test_missing_list_and_all_empty_train(tmp_path):
    (tmp_path / "train.csv").write_text(_pair(tmp_path, "e", np.zeros((8, 8))) + "\n")
    rep = check_dataset(_cfg(tmp_path, binary=True))
    assert any("val.csv" in e and "not found" in e for e in rep.errors)
    assert any("all 1 masks are empty" in e for e in rep.errors)


def test_synthetic_uses_its_own_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_MEDFT_CACHE", str(tmp_path))
    rep = check_dataset(
        DataConfig(
            source="synthetic", synthetic={"n_train": 10, "n_val": 3, "n_test": 3, "size": 32}
        )
    )
    assert rep.ok, rep.errors
    assert rep.label_map.class_names == ["background", "organ_a", "organ_b"]
    assert rep.splits["train"].empty == 1 and set(rep.splits) == {"train", "val", "test"}


# ---- wrong data that decodes fine: caught before any model loads ---------------------------

_SYN = {0: "background", 128: "organ_a", 255: "organ_b"}


def _swapped(tmp_path: Path) -> Path:
    """The synthetic set with every list written mask first: images where masks belong."""
    from sam_medft.data.synthetic import write_synthetic

    root = tmp_path / "syn"
    write_synthetic(root, n_train=3, n_val=2, n_test=0, size=32)
    for split in ("train", "val"):
        rows = (root / f"{split}.csv").read_text().split()
        (root / f"{split}.csv").write_text(
            "".join(",".join(r.split(",")[::-1]) + "\n" for r in rows)
        )
    return root


@pytest.mark.parametrize("labels", [{"binary": True}, {"labels": _SYN}, {}])
def test_swapped_list_columns_are_named_as_the_likely_cause(tmp_path, labels):
    root = _swapped(tmp_path)
    rep = check_dataset(_cfg(root, **labels))
    assert not rep.ok  # binary: used to pass as OK (every grey level > 0 is "foreground")
    assert len(rep.errors) == 2, rep.errors  # one per split, nothing about label values
    train = rep.errors[0]
    assert train.startswith("train: mask looks like an image in 3 file(s): ")
    assert "images/train_000.png (" in train and "of neighbouring pixels differ" in train
    assert f"every mask of {root / 'train.csv'} looks like an image" in train
    assert "are the list's columns swapped?" in train and "image_path,mask_path" in train
    assert "unmapped" not in " ".join(rep.errors) and "say what they mean" not in train


def test_some_image_like_masks_get_the_generic_fix(tmp_path):
    root = _swapped(tmp_path)
    rows = (root / "train.csv").read_text().split()
    rows[0] = ",".join(rows[0].split(",")[::-1])  # one pair the right way round
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "val.csv").write_text(rows[0] + "\n")
    rep = check_dataset(_cfg(root, binary=True))
    (err,) = rep.errors
    assert err.startswith("train: mask looks like an image in 2 file(s)")
    assert "check the pairing (lists are image_path,mask_path" in err


def test_colour_image_as_mask_and_colour_coded_mask(tmp_path):
    rng = np.random.default_rng(0)
    rows = [_pair(tmp_path, "ok", _blob(1))]
    rows.append(_pair(tmp_path, "photo", _blob(1)))
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
        tmp_path / "masks" / "photo.png"
    )
    rows.append(_pair(tmp_path, "legend", _blob(1)))
    legend = np.zeros((16, 16, 3), np.uint8)
    legend[4:9, 4:9] = (255, 0, 0)
    Image.fromarray(legend).save(tmp_path / "masks" / "legend.png")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text(rows[0] + "\n")
    errs = check_dataset(_cfg(tmp_path, binary=True)).errors
    assert any(
        "mask looks like an image in 1 file(s)" in e and "photo.png (a colour image)" in e
        for e in errs
    ), errs
    assert any(
        "corrupt mask" in e and "legend.png: this mask is colour-coded (2 colours" in e
        for e in errs
    ), errs


@pytest.mark.parametrize("labels", [{"binary": True}, {"labels": {0: "background", 255: "a"}}])
def test_jpeg_masks_are_an_error_binary_or_not(tmp_path, labels):
    rows = [_pair(tmp_path, "ok", _blob(255))]
    Image.fromarray(_blob(255, (32, 32))).save(tmp_path / "masks" / "j.jpg", quality=90)
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp_path / "images" / "j.png")
    rows.append("images/j.png,masks/j.jpg")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text(rows[0] + "\n")
    rep = check_dataset(_cfg(tmp_path, **labels))
    (err,) = rep.errors  # the lossy file only (its odd edge values are not a second error)
    assert err.startswith("train: lossy (JPEG) mask in 1 file(s): ") and "j.jpg" in err
    assert "re-export the masks as PNG" in err


def test_binary_masks_with_many_flat_values_warn(tmp_path):
    atlas = np.kron(np.arange(100, dtype=np.uint8).reshape(10, 10), np.ones((4, 4), np.uint8))
    (tmp_path / "train.csv").write_text(_pair(tmp_path, "atlas", atlas) + "\n")
    (tmp_path / "val.csv").write_text(_pair(tmp_path, "v", _blob(1)) + "\n")
    rep = check_dataset(_cfg(tmp_path, binary=True))
    assert rep.ok, rep.errors  # an atlas merged on purpose is allowed, with a warning
    assert any(
        "more than 64 distinct values" in w and "atlas.png (100 values)" in w for w in rep.warnings
    ), rep.warnings


def test_all_empty_validation_split_is_an_error_with_the_fix(tmp_path):
    (tmp_path / "train.csv").write_text(_pair(tmp_path, "t", _blob(1)) + "\n")
    (tmp_path / "val.csv").write_text(
        "\n".join(_pair(tmp_path, f"v{i}", np.zeros((16, 16))) for i in range(2)) + "\n"
    )
    rep = check_dataset(_cfg(tmp_path, binary=True))
    (err,) = rep.errors
    assert err.startswith("val: all 2 validation masks are empty (no foreground)")
    assert "add labelled slices to the validation split" in err
    assert "set data.val_list: null" in err and "last step is then saved" in err
    # one labelled slice is enough
    (tmp_path / "val.csv").write_text(_pair(tmp_path, "v9", _blob(1)) + "\n")
    assert check_dataset(_cfg(tmp_path, binary=True)).ok

    from sam_medft.data.lists import folder_pairs

    folder = tmp_path / "folder"
    _pair(folder, "t", _blob(1))
    _pair(folder, "u", np.zeros((16, 16)))
    seed = next(s for s in range(20) if folder_pairs(folder, 0.5, 0, s)["val"][0].image.stem == "u")
    data = DataConfig(
        source="folder", folder=folder, val_fraction=0.5, binary=True, split_seed=seed
    )
    (err,) = check_dataset(data).errors
    assert err.startswith("val: all 1 validation masks are empty") and "data.val_fraction: 0" in err


def test_wrong_data_stops_training_and_data_check_before_any_model(tmp_path, monkeypatch, capsys):
    """The check runs first: a model name that does not exist is never reached."""
    import sys

    from sam_medft.cli import main
    from sam_medft.config import load_recipe
    from sam_medft.training.trainer import train

    root = _swapped(tmp_path)
    args = [
        "data.source=lists", f"data.img_folder={root}", f"data.mask_folder={root}",
        "data.labels=null", "data.binary=true",
        f"data.train_list={root / 'train.csv'}", f"data.val_list={root / 'val.csv'}",
        "model.name=/no/such/model", f"output_dir={tmp_path / 'runs'}", "train.log_with=none",
    ]  # fmt: skip
    with pytest.raises(SamMedftError) as e:
        train(load_recipe(None, args))
    assert "are the list's columns swapped?" in str(e.value)
    assert not (tmp_path / "runs" / "run" / "adapter").exists()
    monkeypatch.setattr(sys, "argv", ["sam-medft", "data", "check", str(DEMO), *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    assert exit_.value.code == 2  # a user error, no traceback
    assert "columns swapped" in " ".join((out.out + out.err).split())


def test_the_no_validation_advice_holds_the_last_step_adapter_is_saved(tmp_path):
    """What the all-empty-validation error advises (data.val_list: null) trains and saves
    the adapter of the last step."""
    import json

    from sam_medft.config import load_recipe
    from sam_medft.data.synthetic import write_synthetic
    from sam_medft.training.trainer import train

    root = tmp_path / "syn"
    write_synthetic(root, n_train=4, n_val=0, n_test=0, size=32)
    recipe = load_recipe(
        DEMO,
        [
            "data.source=lists", f"data.img_folder={root}", f"data.mask_folder={root}",
            f"data.train_list={root / 'train.csv'}", "data.val_list=null",
            f"output_dir={tmp_path / 'runs'}", "train.log_with=none", "train.max_steps=2",
            "train.batch_size=2", "train.warmup_steps=0", "augment.enabled=false",
        ],
    )  # fmt: skip
    result = train(recipe)
    assert (result.run_dir / "adapter" / "sam_medft.json").is_file()
    summary = json.loads((result.run_dir / "train_summary.json").read_text())
    assert summary["best_step"] == summary["steps"] == 2 and summary["history"] == []


def test_swapped_folders_are_named_as_the_likely_cause(tmp_path):
    import shutil

    from sam_medft.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "syn", n_train=4, n_val=0, n_test=0, size=32)
    shutil.copytree(tmp_path / "syn" / "images", tmp_path / "ds" / "masks")  # swapped
    shutil.copytree(tmp_path / "syn" / "masks", tmp_path / "ds" / "images")
    data = DataConfig(source="folder", folder=tmp_path / "ds", val_fraction=0, binary=True)
    (err,) = check_dataset(data).errors
    assert err.startswith("train: mask looks like an image in 4 file(s)")
    assert "are images/ and masks/ swapped?" in err


def test_all_empty_synthetic_validation_names_its_own_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_MEDFT_CACHE", str(tmp_path))
    data = DataConfig(
        source="synthetic", synthetic={"n_train": 5, "n_val": 1, "n_test": 0, "size": 32}
    )
    (err,) = check_dataset(data).errors  # slice 5 of the synthetic set is the empty one
    assert (
        err.startswith("val: all 1 validation masks are empty") and "data.synthetic.n_val: 0" in err
    )


def test_unmapped_label_advice_works_as_given(tmp_path):
    # the study's 0/254/255 masks with a recipe mapping only 254: the fix named in the
    # message (the override data.binary=true on a recipe with labels) passes the check
    from sam_medft.config import load_recipe

    rows = [_pair(tmp_path, n, np.where(_blob(254) > 0, v, 0)) for n, v in (("a", 254), ("b", 255))]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{source: lists, img_folder: {tmp_path}, mask_folder: {tmp_path}, "
                      f"train_list: {tmp_path}/train.csv, labels: {{0: background, 254: zone_a}}}}\n")
    rep = check_dataset(load_recipe(recipe).data)
    errs = "\n".join(rep.errors)
    assert "unmapped labels" in errs and "data.binary=true" in errs
    assert check_dataset(load_recipe(recipe, ["data.binary=true"]).data).ok


def test_sources_handed_over_in_python_are_checked(tmp_path):
    """`check_dataset(data, sources=...)` (the Python API): an empty mapping is the missing
    train split, not an UnboundLocalError; a handed-over train split is checked as given."""
    rep = check_dataset(_cfg(tmp_path), sources={})
    assert rep.errors == ["no train split configured (data.train_list / data.folder / data.hf)"]

    row = _pair(tmp_path, "t0", _blob(7))
    image, mask = (tmp_path / part for part in row.split(","))
    train = PairSource([Pair(image, mask)], root=tmp_path)
    rep = check_dataset(_cfg(tmp_path, labels={0: "background", 7: "a"}), sources={"train": train})
    assert rep.ok, rep.errors
    assert rep.splits["train"].class_images == [1, 1]
