"""Pair lists (the study's CSV format and friends) and the images/ + masks/ folder layout."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_medft.data.lists import LeadingSlashWarning, Pair, folder_pairs, read_pair_list
from sam_medft.errors import SamMedftError


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    for n in ("a", "b", "c"):
        _png(tmp_path / "MRI" / "images" / f"{n}.png")
        _png(tmp_path / "MRI" / "masks" / f"{n}.png")
    return tmp_path


def test_comma_list_relative_to_roots(root):
    (root / "l.csv").write_text(
        "MRI/images/a.png,MRI/masks/a.png\nMRI/images/b.png,MRI/masks/b.png\n"
    )
    pairs = read_pair_list(root / "l.csv", root, root)
    assert pairs == [
        Pair(root / "MRI/images/a.png", root / "MRI/masks/a.png"),
        Pair(root / "MRI/images/b.png", root / "MRI/masks/b.png"),
    ]


def test_tab_header_comments_blank_lines(root):
    (root / "l.tsv").write_text(
        "image_path\tmask_path\n# a comment\n\nimages/a.png\tmasks/a.png\n  \nimages/c.png\tmasks/c.png\n"
    )
    pairs = read_pair_list(root / "l.tsv", root / "MRI", root / "MRI")
    assert [p.image.name for p in pairs] == ["a.png", "c.png"]


def test_default_roots_are_the_list_folder(root):
    (root / "MRI" / "train.csv").write_text("images/a.png, masks/a.png\n")
    (pair,) = read_pair_list(root / "MRI" / "train.csv")
    assert pair.mask == root / "MRI" / "masks" / "a.png"


def test_leading_slash_taken_relative_with_one_warning(root):
    # the study's demo lists: mask paths with a leading '/'
    (root / "l.csv").write_text("".join(f"MRI/images/{n}.png,/MRI/masks/{n}.png\n" for n in "abc"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        pairs = read_pair_list(root / "l.csv", root, root)
    slash = [w for w in rec if issubclass(w.category, LeadingSlashWarning)]
    assert len(slash) == 1 and "3 path(s)" in str(slash[0].message)
    assert all(p.mask == root / "MRI" / "masks" / p.image.name for p in pairs)


def test_missing_files_reported_together_with_line_numbers(root):
    lines = ["MRI/images/a.png,MRI/masks/a.png"]
    lines += [f"MRI/images/x{i}.png,MRI/masks/x{i}.png" for i in range(8)]
    (root / "l.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SamMedftError) as e:
        read_pair_list(root / "l.csv", root, root)
    msg = str(e.value)
    assert "16 listed file(s) do not exist" in msg
    assert "line 2: image" in msg and "x0.png" in msg and "x7.png" not in msg  # first few only
    assert "data.img_folder" in msg
    assert len(read_pair_list(root / "l.csv", root, root, must_exist=False)) == 9


def test_empty_list_and_bad_rows(root):
    (root / "empty.csv").write_text("# nothing\n\n")
    with pytest.raises(SamMedftError, match=r"empty\.csv.*no image/mask rows"):
        read_pair_list(root / "empty.csv", root, root)
    (root / "header_only.csv").write_text("image,mask\n")
    with pytest.raises(SamMedftError, match="header_only.csv"):
        read_pair_list(root / "header_only.csv", root, root)
    (root / "one.csv").write_text("MRI/images/a.png\n")
    with pytest.raises(SamMedftError, match=r"one\.csv line 1"):
        read_pair_list(root / "one.csv", root, root)
    with pytest.raises(SamMedftError, match="not found"):
        read_pair_list(root / "nope.csv", root, root)


def _folder(tmp_path: Path, n: int) -> Path:
    for i in range(n):
        _png(tmp_path / "ds" / "images" / f"case{i:02d}.png")
        if i % 2:  # masks may have another extension than their image
            np.save(tmp_path / "ds" / "masks" / f"case{i:02d}.npy", np.zeros((4, 4), np.uint8))
        else:
            _png(tmp_path / "ds" / "masks" / f"case{i:02d}.png")
    return tmp_path / "ds"


def test_folder_pairs_split_is_deterministic_and_disjoint(tmp_path):
    ds = _folder(tmp_path, 20)
    a = folder_pairs(ds, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = folder_pairs(ds, val_fraction=0.2, test_fraction=0.1, seed=3)
    c = folder_pairs(ds, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert a == b and a != c
    assert {k: len(v) for k, v in a.items()} == {"train": 14, "val": 4, "test": 2}
    names = [p.image.stem for v in a.values() for p in v]
    assert sorted(names) == [f"case{i:02d}" for i in range(20)]
    assert all(p.image.stem == p.mask.stem for v in a.values() for p in v)
    assert "test" not in folder_pairs(ds, 0.2, 0.0, 0)  # unconfigured split is absent


def test_folder_unmatched_files_are_listed(tmp_path):
    ds = _folder(tmp_path, 3)
    _png(ds / "images" / "orphan.png")
    _png(ds / "masks" / "stray.png")
    with pytest.raises(SamMedftError) as e:
        folder_pairs(ds, 0.2, 0.0, 0)
    assert "orphan.png" in str(e.value) and "stray.png" in str(e.value)
