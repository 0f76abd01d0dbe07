"""The built-in demo data set: deterministic, study layout, learnable content."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
from PIL import Image

from sam_medft.data.lists import read_pair_list
from sam_medft.data.synthetic import MANIFEST, write_synthetic
from sam_medft.errors import SamMedftError


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
    assert len(a) == 2 * 72 + 4 + 1 and a == b  # + the manifest of what it wrote
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


def _digest(folder) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in _files(folder).items()}


SMALL = dict(n_train=3, n_val=1, n_test=1, size=16)


def test_a_folder_with_the_users_files_is_refused_untouched(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "train_000.png").write_bytes(b"the user's scan")
    (tmp_path / "notes.txt").write_text("mine")
    before = _digest(tmp_path)
    with pytest.raises(SamMedftError, match="is not empty.*new or empty folder") as e:
        write_synthetic(tmp_path, **SMALL)
    assert "--overwrite" not in str(e.value)  # no manifest: nothing here is ours to replace
    with pytest.raises(SamMedftError, match=r"images/train_000.png was not written by `data synth`"):
        write_synthetic(tmp_path, **SMALL, overwrite=True)
    assert _digest(tmp_path) == before


def test_overwrite_replaces_only_its_own_files(tmp_path):
    write_synthetic(tmp_path, n_train=4, n_val=1, n_test=1, size=16)
    with pytest.raises(SamMedftError, match="not empty.*pass --overwrite"):
        write_synthetic(tmp_path, **SMALL, seed=1)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "images" / "extra.png").write_bytes(b"mine too")
    notes: list[str] = []
    write_synthetic(tmp_path, **SMALL, seed=1, overwrite=True, notes=notes)
    fresh = tmp_path / "fresh"
    write_synthetic(fresh, **SMALL, seed=1)
    got = _files(tmp_path)
    assert got.pop("notes.txt") == b"mine" and got.pop("images/extra.png") == b"mine too"
    assert {k: v for k, v in got.items() if not k.startswith("fresh/")} == _files(fresh)
    assert "images/train_003.png" not in got  # the earlier, larger set's extra slice is gone
    assert notes and "2 file(s) `data synth` did not write" in notes[0]
    assert json.loads((tmp_path / MANIFEST).read_text())["files"] == sorted(
        k for k in _files(fresh) if k != MANIFEST
    )


def test_a_manifest_cannot_make_it_delete_other_files(tmp_path):
    write_synthetic(tmp_path / "set", **SMALL)
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "set" / "keep.txt").write_text("mine")
    manifest = tmp_path / "set" / MANIFEST
    body = json.loads(manifest.read_text())
    body["files"] += ["../keep.txt", "keep.txt", "/etc/hostname"]
    manifest.write_text(json.dumps(body))
    write_synthetic(tmp_path / "set", **SMALL, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert (tmp_path / "set" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(size=0), "size 0 is not allowed; use 16 to 4096"),
        (dict(size=8), "size 8 is not allowed"),
        (dict(size=100_000), "size 100000 is not allowed"),
        (dict(n_train=0), "n_train 0 is not allowed; use a whole number >= 1"),
        (dict(n_val=-1), "n_val -1 is not allowed; use a whole number >= 0"),
        (dict(n_test=-3), r"--n-test`, data.synthetic.n_test"),
        (dict(seed=-1), "seed -1 is not allowed"),
    ],
)
def test_bad_counts_and_sizes_fail_before_writing(tmp_path, kwargs, message):
    with pytest.raises(SamMedftError, match=message):
        write_synthetic(tmp_path / "out", **{**SMALL, **kwargs})
    assert not (tmp_path / "out").exists()


def test_a_file_as_the_folder_is_refused(tmp_path):
    (tmp_path / "data").write_text("a file")
    with pytest.raises(SamMedftError, match="is a file"):
        write_synthetic(tmp_path / "data", **SMALL, overwrite=True)
    assert (tmp_path / "data").read_text() == "a file"
