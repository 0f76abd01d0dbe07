"""The built-in demo data set: deterministic, study layout, learnable content."""

from __future__ import annotations

import json
import time

import numpy as np
from PIL import Image

from sam_medft.data.lists import read_pair_list
from sam_medft.data.synthetic import write_synthetic


def _files(folder) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_runs_are_byte_identical_and_seed_matters(tmp_path):
    t = time.perf_counter()
    write_synthetic(tmp_path / "a")
    elapsed = time.perf_counter() - t
    write_synthetic(tmp_path / "b")
    write_synthetic(tmp_path / "c", seed=1)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 2 * 72 + 4 and a == b
    assert a["images/train_000.png"] != c["images/train_000.png"]
    assert elapsed < 5  # 72 images of 128x128 (about 0.6 s here; generous for a busy CI)


def test_layout_lists_and_dataset_json(tmp_path):
    info = write_synthetic(tmp_path, n_train=8, n_val=4, n_test=4, size=64)
    assert json.loads((tmp_path / "dataset.json").read_text()) == info
    assert info["labels"] == {"0": "background", "128": "organ_a", "255": "organ_b"}
    assert info["counts"] == {"train": 8, "val": 4, "test": 4}
    first = (tmp_path / "train.csv").read_text().splitlines()[0]
    assert first == "images/train_000.png,masks/train_000.png"  # study format, no header
    for split, n in info["counts"].items():
        pairs = read_pair_list(tmp_path / f"{split}.csv")
        assert len(pairs) == n


def test_content_classes_empties_and_geometry(tmp_path):
    write_synthetic(tmp_path)
    pairs = read_pair_list(tmp_path / "train.csv") + read_pair_list(tmp_path / "val.csv")
    both = empty = one = 0
    shapes, centres = set(), []
    for p in pairs:
        img = np.asarray(Image.open(p.image))
        m = np.asarray(Image.open(p.mask))
        assert Image.open(p.mask).mode == "L" and img.shape == m.shape
        assert set(np.unique(m)) <= {0, 128, 255}
        shapes.add(m.shape)
        a, b = m == 128, m == 255
        both += a.any() and b.any()
        empty += not m.any()
        one += a.any() != b.any()
        if a.any():
            # learnable from local appearance: body < organ_b < organ_a in mean intensity
            body = (m == 0) & (img > 40)
            assert img[a].mean() > img[body].mean() + 60
            if b.any():
                assert img[body].mean() + 30 < img[b].mean() < img[a].mean() - 30
            centres.append(np.argwhere(a).mean(0))
    n = len(pairs)
    assert both >= 0.6 * n and 0.05 * n <= empty <= 0.2 * n and one >= 0.1 * n
    assert {(128, 128), (96, 128), (128, 96)} <= shapes  # non-square images too
    assert np.ptp(np.array(centres), axis=0).min() > 30  # organs move around
