"""Where samples come from: the one data abstraction the trainer, evaluator and checker use.

A `SampleSource` is an indexable list of (image, raw mask, name, spacing) samples. Files
(the study's lists, an images/ + masks/ folder, the synthetic demo) and Hugging Face
datasets (an imagefolder, a `save_to_disk` folder, a Hub id) all end up as one of two
implementations, so everything downstream reads data one way. Images and masks are decoded
by `sam_medft.data.io` in both cases (HF image columns are read as raw bytes), so a PNG
gives the same arrays whether it comes from a list or from a dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam_medft.config import DataConfig, HFDataConfig, IntensityConfig, SyntheticConfig
from sam_medft.data import io
from sam_medft.data.labels import LabelMap
from sam_medft.data.lists import Pair, folder_pairs, read_pair_list
from sam_medft.data.sample import Sample, SampleSource
from sam_medft.data.synthetic import SYNTHETIC_LABELS, SYNTHETIC_VERSION, write_synthetic
from sam_medft.data.volume_source import (
    VolumeCase,
    VolumeSliceSource,
    cases_from_rows,
    volume_label_map,
    volume_splits,
)
from sam_medft.errors import SamMedftError

log = logging.getLogger("sam_medft.data")
_NO_TEST_SAID: set[str] = set()  # missing test lists already reported in this process

SPLITS = ("train", "val", "test")


def _check_same_size(image_hw: tuple[int, int], mask_hw: tuple[int, int], img: str, mask: str):
    if tuple(image_hw) != tuple(mask_hw):
        raise SamMedftError(
            f"{img} is {image_hw[0]}x{image_hw[1]} (HxW) but its mask {mask} is "
            f"{mask_hw[0]}x{mask_hw[1]}; masks must have their image's size (resample with "
            "nearest-neighbour, or fix the pairing in the list)"
        )


def _unique_names(names: Sequence[str]) -> list[str]:
    """Repeated names (an image listed twice) get `~1`, `~2`... so outputs never collide."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}~{k}")
    return out


# ---- files -----------------------------------------------------------------------------------


class PairSource(SampleSource):
    """Image/mask file pairs. Names are image paths relative to `root` (else file names)."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        intensity: IntensityConfig | None = None,
        root: str | Path | None = None,
        spacing: tuple[float, float] | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.intensity = intensity or IntensityConfig()
        self.spacing = spacing
        self.names = _unique_names([_relative_name(p.image, root) for p in self.pairs])

    def load(self, i: int) -> Sample:
        p = self.pairs[i]
        image = io.read_image(p.image, self.intensity)
        mask = io.read_mask(p.mask)
        _check_same_size(image.shape[:2], mask.shape, str(p.image), str(p.mask))
        return Sample(image, mask, self.names[i], self.spacing)

    def image_path(self, i: int) -> str:
        return str(self.pairs[i].image)

    def mask_path(self, i: int) -> str:
        return str(self.pairs[i].mask)

    def image_header(self, i: int) -> io.ImageHeader:
        return io.image_header(self.pairs[i].image, verify=True)

    def load_mask(self, i: int) -> np.ndarray:
        return io.read_mask(self.pairs[i].mask)


def _column_kind(feature: Any) -> str:
    """`image` (an Image feature), `path` (text), `array` (2-D or deeper nested values), or
    `other` (numbers, flat lists, labels...: never a mask or an image)."""
    from datasets import Array2D, Array3D, Value
    from datasets import Image as HFImage

    if isinstance(feature, HFImage):
        return "image"
    if isinstance(feature, Value):
        return "path" if feature.dtype in ("string", "large_string") else "other"
    if isinstance(feature, Array2D | Array3D):
        return "array"
    depth, f = 0, feature
    while hasattr(f, "feature"):  # List / Sequence / LargeList
        depth, f = depth + 1, f.feature
    return "array" if depth >= 2 and isinstance(f, Value) else "other"


def _feature_name(feature: Any) -> str:
    from datasets import Value

    if isinstance(feature, Value):
        return str(feature.dtype)
    kind = _column_kind(feature)
    return {"image": "Image", "array": "array"}.get(kind, type(feature).__name__)


def _describe_columns(features: Any) -> str:
    """`image (Image), label_file (large_string), case_id (int64)` for messages."""
    return ", ".join(f"{name} ({_feature_name(f)})" for name, f in features.items())


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _relative_name(path: Path, root: str | Path | None) -> str:
    if root is not None:
        try:
            return Path(os.path.relpath(path, root)).as_posix() if _under(path, root) else path.name
        except ValueError:  # different drives on Windows
            return path.name
    return path.name


def _under(path: Path, root: str | Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


# ---- Hugging Face datasets ---------------------------------------------------------------------


class HFSource(SampleSource):
    """A `datasets.Dataset` with an image and a mask column (PIL images, file paths or
    arrays) and an optional `spacing` column. Image columns are read as raw bytes and
    decoded by `sam_medft.data.io`, i.e. `Image(mode=None)` semantics: palette masks keep
    their indices."""

    def __init__(
        self,
        dataset: Any,
        image_column: str = "image",
        mask_column: str = "mask",
        intensity: IntensityConfig | None = None,
        root: str | Path | None = None,
        spacing_column: str | None = "spacing",
        label: str = "dataset",
    ) -> None:
        from datasets import Image as HFImage

        cols = list(dataset.column_names)
        for key, col in (("image_column", image_column), ("mask_column", mask_column)):
            if col not in cols:
                raise SamMedftError(
                    f"{label}: no column {col!r} (data.hf.{key}); the columns are: "
                    f"{', '.join(cols)}. Set data.hf.{key} to one of them"
                )
        self.columns = _describe_columns(dataset.features)
        if image_column == mask_column:
            raise SamMedftError(
                f"{label}: data.hf.image_column and data.hf.mask_column are both {image_column!r}; "
                f"set data.hf.mask_column to the column with the masks (columns: {self.columns})"
            )
        for key, col in (("image_column", image_column), ("mask_column", mask_column)):
            kind = _column_kind(dataset.features[col])
            if kind == "other":
                role = "image" if key == "image_column" else "mask"
                raise SamMedftError(
                    f"{label}: data.hf.{key}={col!r} holds "
                    f"{_feature_name(dataset.features[col])} values, not {role}s (columns: "
                    f"{self.columns}). Set data.hf.{key} to the column with the {role}s; in an "
                    f"imagefolder's metadata.csv the file columns are file_name (the image) and "
                    f"`<name>_file_name` (e.g. mask_file_name, loaded as column `mask`)"
                )
        self.image_column, self.mask_column = image_column, mask_column
        self.root = Path(root) if root is not None else None
        self.spacing_column = spacing_column if spacing_column in cols else None
        self.intensity = intensity or IntensityConfig()
        self.label = label
        self._is_image = {}
        for col in (image_column, mask_column):
            self._is_image[col] = isinstance(dataset.features[col], HFImage)
            if self._is_image[col]:
                dataset = dataset.cast_column(col, HFImage(decode=False))
        keep = [c for c in (image_column, mask_column, self.spacing_column) if c]
        self.dataset = dataset.select_columns(keep)
        self._paths = self._column_paths(image_column)
        self._mask_paths = self._column_paths(mask_column)
        for key, col, paths in (
            ("image_column", image_column, self._paths),
            ("mask_column", mask_column, self._mask_paths),
        ):
            if not self._is_image[col] and paths and isinstance(paths[0], str):
                self._check_path_column(key, col, paths[0])
        if all(self._paths):
            names = [_relative_name(Path(p), root) for p in self._paths]
        else:
            names = [f"{i:06d}" for i in range(len(self.dataset))]
        self.names = _unique_names(names)

    def _column_paths(self, col: str) -> list[str | None]:
        """File paths of an Image column, read from Arrow without touching the bytes."""
        import pyarrow.compute as pc
        from datasets import Value

        feature = self.dataset.features[col]
        if not self._is_image[col]:
            if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
                return list(self.dataset.select_columns([col])[col])
            return [None] * len(self.dataset)
        out: list[str | None] = []
        table = self.dataset.select_columns([col]).with_format("arrow")
        for batch in table.iter(batch_size=4096):
            out.extend(pc.struct_field(batch.column(col), "path").to_pylist())
        return out

    def _resolve(self, path: str) -> str:
        """A path from a text column: as written, else under the dataset's folder (where an
        imagefolder's metadata.csv sits)."""
        if self.root is not None and not Path(path).is_absolute():
            under = self.root / path
            if _is_file(under) or not _is_file(Path(path)):
                return str(under)
        return path

    def _check_path_column(self, key: str, col: str, first: str) -> None:
        """A text column must hold file paths; if its first value is no file, the column is
        most likely the wrong one (or an imagefolder column datasets did not load)."""
        if _is_file(Path(self._resolve(first))):
            return
        where = f"{self.root} and the current folder" if self.root else "the current folder"
        raise SamMedftError(
            f"{self.label}: data.hf.{key}={col!r} is a text column whose first value {first!r} "
            f"is not a file (looked in {where}); the columns are: {self.columns}. If the masks "
            f"are listed in an imagefolder's metadata.csv, name that column `<name>_file_name` "
            f"(e.g. mask_file_name, which datasets loads as images in the column `mask`) and "
            f"set data.hf.{key} to `<name>`"
        )

    def fix_hint(self, problem: str) -> str | None:
        role = "mask" if "mask" in problem else "image"
        key = f"data.hf.{role}_column"
        col = self.mask_column if role == "mask" else self.image_column
        if problem.startswith("missing"):
            return (
                f"these paths come from the column {key}={col!r}; check that it names the "
                f"{role}s (columns: {self.columns}) and that the files exist"
            )
        if problem.startswith("corrupt"):
            return (
                f"check that {key}={col!r} names the {role}s (columns: {self.columns}); if it "
                f"does, re-export these files"
                + (" as single-channel label maps" if role == "mask" else "")
            )
        if problem == "mask looks like an image":
            return (
                f"{key}={col!r} seems to hold images; set it to the column with the label maps "
                f"(columns: {self.columns})"
            )
        return None

    def _read(self, value: Any, col: str, i: int, mask: bool) -> np.ndarray:
        where = f"{self.label}[{i}].{col}"
        if isinstance(value, dict):  # Image(decode=False): {"bytes": ..., "path": ...}
            data, path = value.get("bytes"), value.get("path")
            where = f"{self.label}[{i}].{col} ({path})" if path else where
            if data is None and path is None:
                raise SamMedftError(f"{where}: empty image cell; remove the row or fill it")
            src = data if data is not None else path
            if data is None and str(path).lower().endswith(".npy"):
                src = path
            return io.read_mask(src, where) if mask else io.read_image(src, self.intensity, where)
        if isinstance(value, str | Path):
            path = self._resolve(str(value))
            return io.read_mask(path) if mask else io.read_image(path, self.intensity)
        if value is None:
            raise SamMedftError(f"{where}: missing value; remove the row or fill it")
        if hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
            return (
                io.pil_to_mask(value, where)
                if mask
                else io.pil_to_rgb(value, self.intensity, where)
            )
        a = np.asarray(value)
        return io.mask_array(a, where) if mask else io.array_to_rgb(a, self.intensity, where)

    def load(self, i: int) -> Sample:
        row = self.dataset[int(i)]
        image = self._read(row[self.image_column], self.image_column, i, mask=False)
        mask = self._read(row[self.mask_column], self.mask_column, i, mask=True)
        _check_same_size(
            image.shape[:2],
            mask.shape,
            self.where(i),
            self.mask_path(i) or f"{self.label}[{i}].{self.mask_column}",
        )
        return Sample(image, mask, self.names[i], self._spacing(row))

    def _spacing(self, row: dict) -> tuple[float, float] | None:
        if not self.spacing_column:
            return None
        v = row[self.spacing_column]
        if v is None:
            return None
        v = np.atleast_1d(np.asarray(v, dtype=float)).ravel()
        if v.size == 1:
            return float(v[0]), float(v[0])
        return float(v[0]), float(v[1])

    def image_path(self, i: int) -> str | None:
        return self._paths[i]

    def mask_path(self, i: int) -> str | None:
        return self._mask_paths[i]

    def image_header(self, i: int) -> io.ImageHeader:
        value = self.dataset[int(i)][self.image_column]
        where = f"{self.label}[{i}].{self.image_column}"
        if isinstance(value, dict):
            src = value.get("bytes") if value.get("bytes") is not None else value.get("path")
            return io.image_header(src, where, verify=True)
        if isinstance(value, str | Path):
            return io.image_header(self._resolve(str(value)), verify=True)
        a = self._read(value, self.image_column, i, mask=False)
        return io.ImageHeader(a.shape[0], a.shape[1], "array", 3, "float")

    def load_mask(self, i: int) -> np.ndarray:
        return self._read(self.dataset[int(i)][self.mask_column], self.mask_column, i, mask=True)


# ---- building the splits from a recipe -----------------------------------------------------------


def build_splits(data: DataConfig) -> dict[str, SampleSource]:
    """`train`, `val`, `test` sources for the recipe's data section (unconfigured splits are
    absent). Raises SamMedftError for missing lists/files/columns before any model work.
    Volumes (nnU-Net raw data sets, folders or lists of volumes) come sliced
    (`data.volume_source`)."""
    volumes = volume_splits(data)
    if volumes is not None:
        return volumes
    if data.source == "lists":
        return {
            split: _list_source(data, path)
            for split, path in (
                ("train", data.train_list),
                ("val", data.val_list),
                ("test", data.test_list),
            )
            if path is not None and (split != "test" or test_list_present(path))
        }
    if data.source == "folder":
        pairs = folder_pairs(data.folder, data.val_fraction, data.test_fraction, data.split_seed)
        root = Path(data.folder) / "images"
        return {s: PairSource(p, data.intensity, root=root) for s, p in pairs.items()}
    if data.source == "synthetic":
        folder = synthetic_folder(data.synthetic)
        return {  # a split of 0 slices is absent (its list is empty), like an unset list
            s: PairSource(read_pair_list(folder / f"{s}.csv"), data.intensity, root=folder)
            for s in SPLITS
            if getattr(data.synthetic, f"n_{s}")
        }
    if data.source == "hf":
        return _hf_splits(data.hf, data.intensity, data)
    if data.source == "python":
        raise SamMedftError(
            "data.source=python: this run's data was handed over in Python "
            "(sam_medft.train(recipe, train_data=..., val_data=...)), so there are no files to "
            "read again; pass the images as a list (`sam-medft eval RUN --list test.csv`) or set "
            "data.source to lists, folder, hf or synthetic")
    raise SamMedftError(f"unknown data.source {data.source!r}; use lists, folder, nnunet, hf or "
                        "synthetic")


def test_list_present(path: Path) -> bool:
    """A test list is for `eval` only: one that is not there (the shipped recipes name
    datasets/test.csv; the study's layout has none) leaves the run without a test split,
    said once per list per process, and eval names what is missing when it needs it."""
    if _is_file(Path(path)):
        return True
    key = str(Path(path).absolute())
    if key not in _NO_TEST_SAID:
        _NO_TEST_SAID.add(key)
        log.warning(
            "data.test_list %s not found: no test split (training is not affected). To "
            "evaluate later pass `sam-medft eval RUN --list FILE` or --data "
            "data.test_list=FILE; set data.test_list=null to silence this", path)
    return False


def _list_source(data: DataConfig, list_path: Path) -> PairSource:
    pairs = read_pair_list(list_path, data.img_folder, data.mask_folder)
    root = data.img_folder if data.img_folder is not None else Path(list_path).parent
    return PairSource(pairs, data.intensity, root=root)


def default_label_map(data: DataConfig) -> LabelMap | None:
    """The label map the recipe implies (labels, binary, or the synthetic set's own), or
    None when it must be inferred from the masks (`LabelMap.infer`)."""
    if data.binary:
        return LabelMap(binary=True)
    if data.labels is not None:
        return LabelMap(data.labels)
    from_dataset_json = volume_label_map(data)
    if from_dataset_json is not None:
        return from_dataset_json
    if data.source == "synthetic":
        return LabelMap(SYNTHETIC_LABELS)
    return None


# ---- synthetic cache ---------------------------------------------------------------------------


def cache_root() -> Path:
    """`$SAM_MEDFT_CACHE`, else `$XDG_CACHE_HOME/sam_medft` (default ~/.cache/sam_medft)."""
    env = os.environ.get("SAM_MEDFT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sam_medft"


def synthetic_folder(cfg: SyntheticConfig) -> Path:
    """Generate the synthetic set once per settings (atomically) and return its folder."""
    key = json.dumps({"v": SYNTHETIC_VERSION, **cfg.model_dump()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    final = cache_root() / "synthetic" / digest
    if (final / "dataset.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=final.parent))
    try:
        write_synthetic(tmp, cfg.n_train, cfg.n_val, cfg.n_test, cfg.size, cfg.seed)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first (or a stale partial folder)
            if not (final / "dataset.json").is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---- Hugging Face loading ----------------------------------------------------------------------


def _hf_splits(cfg: HFDataConfig, intensity: IntensityConfig,
               data: DataConfig | None = None) -> dict[str, SampleSource]:
    out: dict[str, SampleSource] = {}
    for ours, theirs, rows, split_root in _hf_split_rows(cfg):
        cases = _hf_cases(cfg, theirs, rows, split_root) if data is not None else None
        if cases is not None:  # a column of volume paths: sliced as data.volumes says
            out[ours] = VolumeSliceSource(cases, data.volumes, intensity,
                                          sample_empty=ours == "train", seed=data.split_seed)
            continue
        out[ours] = HFSource(
            rows,
            cfg.image_column,
            cfg.mask_column,
            intensity,
            root=split_root,
            label=f"{cfg.path}[{theirs}]",
        )
    return out


def hf_volume_cases(data: DataConfig) -> dict[str, list[VolumeCase]] | None:
    """train/val/test cases of a `datasets` source whose image column holds volume paths
    (what `data check` lists per volume), or None when its rows are 2-D images."""
    if data.source != "hf" or data.hf is None:
        return None
    out = {ours: cases for ours, theirs, rows, root in _hf_split_rows(data.hf)
           if (cases := _hf_cases(data.hf, theirs, rows, root)) is not None}
    return out or None


def _hf_cases(cfg: HFDataConfig, theirs: str, rows: Any, split_root: Path | None
              ) -> list[VolumeCase] | None:
    if not {cfg.image_column, cfg.mask_column} <= set(rows.column_names):
        return None
    return cases_from_rows(rows[cfg.image_column], rows[cfg.mask_column], split_root,
                           f"{cfg.path}[{theirs}]")


def _hf_split_rows(cfg: HFDataConfig) -> list[tuple[str, str, Any, Path | None]]:
    """(our split, its name in the data set, its rows, the root of its relative paths) for
    each split the recipe names and the data set has (a missing one: a warning)."""
    splits, root = load_hf(cfg)
    available = list(splits)
    wanted = {"train": cfg.train_split, "val": cfg.val_split, "test": cfg.test_split}
    if cfg.train_split not in splits:
        raise SamMedftError(
            f"data.hf.path={cfg.path}: no split {cfg.train_split!r} (data.hf.train_split); "
            f"the splits are: {', '.join(available)}"
        )
    out = []
    for ours, theirs in wanted.items():
        if theirs is None:
            continue
        if theirs not in splits:
            warnings.warn(
                f"data.hf.path={cfg.path}: no split {theirs!r} (data.hf.{ours}_split); the "
                f"splits are {', '.join(available)}; running without a {ours} split. Set "
                f"data.hf.{ours}_split to one of them (or null to silence this)",
                stacklevel=3,
            )
            continue
        split_root = (root / theirs) if root is not None and (root / theirs).is_dir() else root
        out.append((ours, theirs, splits[theirs], split_root))
    return out


def load_hf(cfg: HFDataConfig) -> tuple[dict[str, Any], Path | None]:
    """(split name -> datasets.Dataset, local root or None) from a `save_to_disk` folder,
    an imagefolder data_dir (metadata.csv with file_name, mask_file_name) or a Hub id."""
    import datasets

    path = Path(cfg.path).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:  # noqa: BLE001 - datasets raises many types here
                raise SamMedftError(f"{path}: cannot load this save_to_disk folder ({e})") from None
            if isinstance(ds, datasets.Dataset):
                return {cfg.train_split: ds}, None
            return dict(ds), None
        if not any(path.rglob("metadata.csv")) and not any(path.rglob("metadata.jsonl")):
            raise SamMedftError(
                f"{path}: a local folder without dataset_dict.json/state.json (save_to_disk) or "
                "metadata.csv (imagefolder); add metadata.csv with columns file_name,"
                "mask_file_name per split folder, or use data.source: folder"
            )
        try:
            dd = datasets.load_dataset("imagefolder", data_dir=str(path))
        except Exception as e:  # noqa: BLE001
            raise SamMedftError(f"{path}: cannot load it as an imagefolder ({e})") from None
        return dict(dd), path
    if cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") > 1:
        raise SamMedftError(
            f"data.hf.path={cfg.path}: folder {path.resolve()} not found; give an existing "
            "folder or a Hub dataset id like owner/name"
        )
    try:
        dd = datasets.load_dataset(cfg.path, cfg.name, revision=cfg.revision)
    except Exception as e:  # noqa: BLE001 - offline, not found, gated, bad config name...
        offline = datasets.config.HF_HUB_OFFLINE
        why = (
            "HF_HUB_OFFLINE is set and it is not in the local cache; run once online or unset "
            "HF_HUB_OFFLINE"
            if offline
            else "check the id (and data.hf.name/revision), run `hf auth login` for private or "
            "gated sets, or use a local folder"
        )
        raise SamMedftError(
            f"data.hf.path={cfg.path}: not a local folder and cannot be loaded from the Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {why}"
        ) from None
    if isinstance(dd, datasets.Dataset):
        return {cfg.train_split: dd}, None
    return dict(dd), None
