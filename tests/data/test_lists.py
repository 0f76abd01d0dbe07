"""Pair lists (the study's CSV format and friends) and the images/ + masks/ folder layout."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_medft.data.lists import Pair, folder_pairs, list_images, read_pair_list
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


def test_leading_slash_taken_relative_with_one_log_line_per_list(root, caplog):
    # the study's demo lists: mask paths with a leading '/'; read twice, reported once
    (root / "l.csv").write_text("".join(f"MRI/images/{n}.png,/MRI/masks/{n}.png\n" for n in "abc"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Python warning (it printed a source line)
        pairs = read_pair_list(root / "l.csv", root, root)
        read_pair_list(root / "l.csv", root, root)
        list_images(root / "l.csv", root)
    slash = [r for r in caplog.records if "start with '/'" in r.getMessage()]
    assert len(slash) == 1 and "3 path(s)" in slash[0].getMessage()
    assert slash[0].levelname == "WARNING"
    assert all(p.mask == root / "MRI" / "masks" / p.image.name for p in pairs)


def test_list_images_uses_the_same_rule_as_pair_lists(root):
    (root / "MRI" / "v.csv").write_text(
        "MRI/images/a.png,/MRI/masks/a.png\n/MRI/images/c.png,MRI/masks/c.png\n")
    pairs = read_pair_list(root / "MRI" / "v.csv", root, root)
    found = list_images(root / "MRI" / "v.csv", root)  # the run's data.img_folder
    assert [f for f, _ in found] == [p.image for p in pairs]
    assert [str(n) for _, n in found] == ["MRI/images/a.png", "MRI/images/c.png"]
    with pytest.raises(SamMedftError, match="relative to .*MRI.*data.img_folder"):
        list_images(root / "MRI" / "v.csv")  # relative to the list's folder: not there


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


# ---- columns: extra ones are an error unless a header names them --------------------------


def test_third_column_without_header_is_an_error_naming_line_and_fix(root):
    (root / "l.csv").write_text(
        "MRI/images/a.png,MRI/masks/a.png\nMRI/images/b.png,MRI/masks/b.png,0.7\n"
        "MRI/images/c.png,MRI/masks/c.png,0.7\n"
    )
    with pytest.raises(SamMedftError) as e:
        read_pair_list(root / "l.csv", root, root)
    msg = str(e.value)
    assert "l.csv line 2 (and 1 more line(s)): 3 columns" in msg
    assert "add a header row naming every column" in msg and "image,mask,case_id" in msg


def test_a_trailing_delimiter_is_not_a_column(root):
    (root / "l.csv").write_text("MRI/images/a.png,MRI/masks/a.png,\n")
    (pair,) = read_pair_list(root / "l.csv", root, root)
    assert pair.mask == root / "MRI/masks/a.png"


def test_header_declares_extra_columns_in_any_order(root):
    (root / "l.tsv").write_text(
        "case_id\tMask_Path\tspacing\timage_path\n"
        "p1\tMRI/masks/a.png\t0.7\tMRI/images/a.png\n"
        "p2\tMRI/masks/b.png\t\tMRI/images/b.png\n"
    )
    pairs = read_pair_list(root / "l.tsv", root, root)
    assert pairs == [
        Pair(root / "MRI/images/a.png", root / "MRI/masks/a.png"),
        Pair(root / "MRI/images/b.png", root / "MRI/masks/b.png"),
    ]
    (root / "swapped.csv").write_text("mask,image\nMRI/masks/a.png,MRI/images/a.png\n")
    (pair,) = read_pair_list(root / "swapped.csv", root, root)
    assert pair.image.name == "a.png" and pair.image.parent.name == "images"


def test_header_errors_name_the_header_and_the_fix(root):
    (root / "l.csv").write_text("first,second,case_id\nMRI/images/a.png,MRI/masks/a.png,p1\n")
    with pytest.raises(SamMedftError) as e:
        read_pair_list(root / "l.csv", root, root)
    assert "line 1 (the header 'first,second,case_id')" in str(e.value)
    assert "which one is the image" in str(e.value) and "image_path" in str(e.value)
    (root / "l.csv").write_text("image,mask\nMRI/images/a.png,MRI/masks/a.png,p1\n")
    with pytest.raises(SamMedftError, match=r"line 2: 3 columns .* the header names 2"):
        read_pair_list(root / "l.csv", root, root)
    (root / "l.csv").write_text("image,img_path,mask\nMRI/images/a.png,x.png,MRI/masks/a.png\n")
    with pytest.raises(SamMedftError, match="image, img_path all name the image column"):
        read_pair_list(root / "l.csv", root, root)


def test_quotes_nul_and_empty_paths_are_clear_errors(root):
    (root / "q.csv").write_text('"MRI/images/a.png,MRI/masks/a.png\nMRI/images/b.png,x.png\n')
    with pytest.raises(SamMedftError, match=r"q\.csv line 1: unbalanced or misplaced quote"):
        read_pair_list(root / "q.csv", root, root)
    (root / "quoted.csv").write_text('"MRI/images/a.png","MRI/masks/a.png"\n')
    assert read_pair_list(root / "quoted.csv", root, root)[0].image.name == "a.png"
    (root / "nul.csv").write_bytes(b"MRI/images/a.png,MRI/masks/a\x00.png\n")
    with pytest.raises(SamMedftError, match="NUL byte"):
        read_pair_list(root / "nul.csv", root, root)
    (root / "e.csv").write_text(",MRI/masks/a.png\n")
    with pytest.raises(SamMedftError, match=r"e\.csv line 1: the image path is empty"):
        read_pair_list(root / "e.csv", root, root)
    (root / "long.csv").write_text("x" * 300 + ".png,m.png\n")  # name too long for the OS
    with pytest.raises(SamMedftError, match="do not exist"):
        read_pair_list(root / "long.csv", root, root)
