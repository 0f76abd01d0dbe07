"""Sample sources: lists, folder, synthetic cache and Hugging Face datasets agree."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
from PIL import Image

from sam_medft.config import DataConfig, HFDataConfig, IntensityConfig, SyntheticConfig
from sam_medft.data.lists import read_pair_list
from sam_medft.data.sources import HFSource, PairSource, build_splits, synthetic_folder
from sam_medft.data.synthetic import write_synthetic
from sam_medft.errors import SamMedftError


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep datasets' Arrow cache inside the test folder, and the Hub unreachable."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def syn(tmp_path) -> Path:
    write_synthetic(tmp_path / "syn", n_train=5, n_val=3, n_test=2, size=48)
    return tmp_path / "syn"


def _lists_cfg(syn: Path, **kw) -> DataConfig:
    return DataConfig(
        source="lists",
        img_folder=syn,
        mask_folder=syn,
        train_list=syn / "train.csv",
        val_list=syn / "val.csv",
        **kw,
    )


def test_lists_source_samples(syn):
    splits = build_splits(_lists_cfg(syn))
    assert set(splits) == {"train", "val"}  # test not configured -> absent
    train = splits["train"]
    assert len(train) == 5 and train.names[0] == "images/train_000.png"
    s = train.load(0)
    assert s.image.shape == (48, 48, 3) and s.image.dtype == np.float32
    assert s.raw_mask.dtype == np.int64 and set(np.unique(s.raw_mask)) <= {0, 128, 255}
    assert s.spacing is None and train.image_path(0).endswith("train_000.png")
    assert len(set(train.names)) == len(train)


def test_size_mismatch_on_load_names_both_files(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "m.png")
    (tmp_path / "l.csv").write_text("i.png,m.png\n")
    src = PairSource(read_pair_list(tmp_path / "l.csv"), IntensityConfig())
    with pytest.raises(SamMedftError, match=r"i\.png is 8x8.*m\.png is 8x9"):
        src.load(0)


def test_folder_source(syn, tmp_path):
    folder = tmp_path / "flat"
    shutil.copytree(syn / "images", folder / "images")
    shutil.copytree(syn / "masks", folder / "masks")
    splits = build_splits(DataConfig(source="folder", folder=folder, val_fraction=0.3))
    assert {k: len(v) for k, v in splits.items()} == {"train": 7, "val": 3}
    assert splits["val"].names[0].endswith(".png") and "/" not in splits["val"].names[0]


def test_synthetic_source_is_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_MEDFT_CACHE", str(tmp_path / "cache"))
    cfg = SyntheticConfig(n_train=4, n_val=2, n_test=2, size=32)
    folder = synthetic_folder(cfg)
    assert folder.parent == tmp_path / "cache" / "synthetic" and (folder / "dataset.json").is_file()
    stamp = (folder / "images" / "train_000.png").stat().st_mtime_ns
    splits = build_splits(DataConfig(source="synthetic", synthetic=cfg))
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert (folder / "images" / "train_000.png").stat().st_mtime_ns == stamp  # not rewritten
    assert synthetic_folder(cfg.model_copy(update={"seed": 1})) != folder
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left


def _imagefolder(syn: Path, root: Path) -> Path:
    """An HF imagefolder: <root>/<split>/metadata.csv with file_name, mask_file_name."""
    for split, lst in (("train", "train.csv"), ("validation", "val.csv")):
        d = root / split
        (d / "masks").mkdir(parents=True)
        rows = ["file_name,mask_file_name,spacing"]
        for p in read_pair_list(syn / lst):
            shutil.copy(p.image, d / p.image.name)
            shutil.copy(p.mask, d / "masks" / p.mask.name)
            rows.append(f"{p.image.name},masks/{p.mask.name},0.7")
        (d / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def _assert_same_samples(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        sa, sb = a.load(i), b.load(i)
        np.testing.assert_array_equal(sa.image, sb.image)
        np.testing.assert_array_equal(sa.raw_mask, sb.raw_mask)


def test_hf_imagefolder_and_save_to_disk_match_lists(syn, tmp_path, hf_cache):
    lists = build_splits(_lists_cfg(syn))
    root = _imagefolder(syn, tmp_path / "imf")
    hf = build_splits(DataConfig(source="hf", hf=HFDataConfig(path=str(root), test_split=None)))
    assert set(hf) == {"train", "val"}
    for split in ("train", "val"):
        _assert_same_samples(lists[split], hf[split])
    assert hf["train"].names[0] == "train_000.png" and hf["train"].load(0).spacing == (0.7, 0.7)

    dd = datasets.load_dataset("imagefolder", data_dir=str(root))
    dd.save_to_disk(str(tmp_path / "saved"))
    saved = build_splits(
        DataConfig(source="hf", hf=HFDataConfig(path=str(tmp_path / "saved"), test_split=None))
    )
    for split in ("train", "val"):
        _assert_same_samples(lists[split], saved[split])
    dd["train"].save_to_disk(str(tmp_path / "one"))  # a single Dataset: the train split
    one = build_splits(
        DataConfig(
            source="hf",
            hf=HFDataConfig(path=str(tmp_path / "one"), val_split=None, test_split=None),
        )
    )
    assert set(one) == {"train"} and len(one["train"]) == 5


def test_hf_palette_masks_keep_indices_and_arrays_work(tmp_path):
    idx = np.array([[0, 1, 2, 3]] * 4, dtype=np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette(list(range(256)) * 3)
    p.save(tmp_path / "m.png")
    ds = datasets.Dataset.from_dict(
        {"image": [np.full((4, 4), 7, np.uint16).tolist()], "label": [str(tmp_path / "m.png")]},
        features=datasets.Features(
            {"image": datasets.Array2D((4, 4), "uint16"), "label": datasets.Image(mode="L")}
        ),
    )
    src = HFSource(ds, "image", "label", IntensityConfig(mode="window", window=(7, 2)))
    s = src.load(0)
    np.testing.assert_array_equal(s.raw_mask, idx)  # mode="L" would have turned 1 into 1*.299...
    assert s.image.shape == (4, 4, 3) and np.all(s.image == 127.5)
    assert src.names == ["000000"]  # no file paths in an array column: indices


def test_hf_missing_column_lists_columns(syn, tmp_path, hf_cache):
    root = _imagefolder(syn, tmp_path / "imf")
    with pytest.raises(SamMedftError) as e:
        build_splits(DataConfig(source="hf", hf=HFDataConfig(path=str(root), mask_column="label")))
    assert "'label'" in str(e.value) and "image, mask, spacing" in str(e.value)


def test_hf_missing_split_warns(syn, tmp_path, hf_cache):
    root = _imagefolder(syn, tmp_path / "imf")
    with pytest.warns(UserWarning, match="no split 'test'"):
        build_splits(DataConfig(source="hf", hf=HFDataConfig(path=str(root))))
    with pytest.raises(SamMedftError, match="splits are: train, validation"):
        build_splits(DataConfig(source="hf", hf=HFDataConfig(path=str(root), train_split="all")))


def test_hf_hub_offline_and_missing_folder_are_clear(hf_cache):
    with pytest.raises(SamMedftError, match="HF_HUB_OFFLINE"):
        build_splits(DataConfig(source="hf", hf=HFDataConfig(path="nobody/no-such-dataset")))
    with pytest.raises(SamMedftError, match="not found"):
        build_splits(DataConfig(source="hf", hf=HFDataConfig(path="./no/such/folder")))


# ---- the wrong column: named, with the columns there are (never "re-export the masks") -----


def _imagefolder_cols(syn: Path, root: Path, mask_col: str) -> Path:
    """An imagefolder whose metadata.csv names the mask column `mask_col`, plus a case id."""
    d = root / "train"
    (d / "masks").mkdir(parents=True)
    rows = [f"file_name,{mask_col},case_id,site"]
    for k, p in enumerate(read_pair_list(syn / "train.csv")):
        shutil.copy(p.image, d / p.image.name)
        shutil.copy(p.mask, d / "masks" / p.mask.name)
        rows.append(f"{p.image.name},masks/{p.mask.name},{k},site{k}")
    (d / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def _hf(root: Path, **kw) -> DataConfig:
    return DataConfig(
        source="hf",
        binary=True,
        hf=HFDataConfig(path=str(root), val_split=None, test_split=None, **kw),
    )


def test_hf_mask_column_of_numbers_or_text_or_the_image_is_named(syn, tmp_path, hf_cache):
    root = _imagefolder_cols(syn, tmp_path / "imf", "mask_file_name")
    with pytest.raises(SamMedftError) as e:
        build_splits(_hf(root, mask_column="case_id"))
    msg = str(e.value)
    assert "data.hf.mask_column='case_id' holds int64 values, not masks" in msg
    assert "columns: image (Image), mask (Image), case_id (int64), site (" in msg
    assert "mask_file_name" in msg and "re-export" not in msg
    with pytest.raises(SamMedftError) as e:
        build_splits(_hf(root, mask_column="site"))
    assert (
        "data.hf.mask_column='site' is a text column whose first value 'site0' is not a file"
        in str(e.value)
    )
    assert "`<name>_file_name`" in str(e.value) and "case_id (int64)" in str(e.value)
    with pytest.raises(
        SamMedftError, match="image_column and data.hf.mask_column are both 'image'"
    ):
        build_splits(_hf(root, mask_column="image"))


def test_hf_text_path_column_reads_files_next_to_the_metadata(syn, tmp_path, hf_cache):
    """A mask column not named `*_file_name` is text to datasets; its relative paths are read
    where the metadata.csv is, so the data check passes instead of failing every file."""
    from sam_medft.data.check import check_dataset

    root = _imagefolder_cols(syn, tmp_path / "imf", "label_file")
    rep = check_dataset(_hf(root, mask_column="label_file"))
    assert rep.ok, rep.errors
    src = build_splits(_hf(root, mask_column="label_file"))["train"]
    np.testing.assert_array_equal(
        src.load(1).raw_mask, build_splits(_lists_cfg(syn))["train"].load(1).raw_mask
    )


def test_hf_missing_files_name_the_column(syn, tmp_path, hf_cache):
    from sam_medft.data.check import check_dataset

    masks = [p.mask for p in read_pair_list(syn / "train.csv")][:2]
    ds = datasets.Dataset.from_dict(
        {
            "image": [str(p.image) for p in read_pair_list(syn / "train.csv")][:2],
            "mask_path": [str(masks[0]), str(tmp_path / "gone.png")],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "mask_path": datasets.Value("string")}
        ),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    rep = check_dataset(_hf(tmp_path / "saved", mask_column="mask_path"))
    (err,) = rep.errors
    assert err.startswith("train: missing mask in 1 file(s)") and "gone.png" in err
    assert "column data.hf.mask_column='mask_path'" in err and "image (Image)" in err
    assert "re-export" not in err


def test_synthetic_splits_of_zero_slices_are_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_MEDFT_CACHE", str(tmp_path / "cache"))
    cfg = SyntheticConfig(n_train=3, n_val=0, n_test=0, size=16)
    splits = build_splits(DataConfig(source="synthetic", synthetic=cfg))
    assert {k: len(v) for k, v in splits.items()} == {"train": 3}  # was: "test.csv has no rows"
