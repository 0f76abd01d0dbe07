"""The dataset check: every problem at once, with file names, before any model work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from sam_medft.config import DataConfig
from sam_medft.data.check import check_dataset
from sam_medft.errors import SamMedftError


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
