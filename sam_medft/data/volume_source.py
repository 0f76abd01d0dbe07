"""Volumes as a data source: cases found in lists, folders or nnU-Net raw data sets, split by
case, then sliced into 2-D samples inside the source.

Why slicing lives here: the trainer, evaluator and checker read samples one way
(`SampleSource`); a volume source hands them 2-D slices (with the slice's pixel spacing in mm,
its case id and index) so nothing downstream needs a second code path, and nobody has to
export PNGs first (`sam-medft data slice` does, for users who want the files).

- Cases are found in: pair lists whose rows name volumes (`image,label` per line), a folder
  with `images/` and `labels/` (or `masks/`) holding volumes, and the nnU-Net raw layout
  (`DatasetXXX_Name/{imagesTr,labelsTr,imagesTs,labelsTs}` + `dataset.json`, whose `labels`
  become the class names). Image files may carry nnU-Net's channel suffix (`_0000`).
- Splits are by case (`split_cases`): a patient's slices never sit in two splits.
- Each volume is read in RAS (`data.volumes`), scaled once per volume (a CT window preset, or
  percentiles over the whole volume, so slices of one scan share one scale), and sliced along
  `data.volumes.axis`; `2.5d` puts the neighbouring slices in the first and last channel.
- Training keeps every slice with a label and `empty_fraction` of the others (seeded);
  validation and test keep every slice, so 3-D metrics see whole volumes.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_medft.config import DataConfig, IntensityConfig, VolumeConfig
from sam_medft.data import io
from sam_medft.data.dicom_seg import is_dicom_seg, segment_labels
from sam_medft.data.labels import LabelMap
from sam_medft.data.lists import read_pair_list
from sam_medft.data.sample import Sample, SampleSource
from sam_medft.data.volumes import (
    Volume,
    axis_index,
    check_same_geometry,
    is_dicom_series,
    is_label_volume,
    is_nifti,
    is_volume,
    plane,
    plane_spacing,
    read_geometry,
    read_labels,
    read_volume,
    volume_case_id,
)
from sam_medft.errors import SamMedftError

log = logging.getLogger("sam_medft.data")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net: case_0000.nii.gz
_SHOW = 5
_CACHE_CASES = 2  # decoded volumes kept per source (slices are read case by case)


@dataclass(frozen=True)
class VolumeCase:
    """One case: an image volume and its label volume (None: unlabelled, prediction only)."""

    case_id: str
    image: Path
    label: Path | None


# ---- finding cases ---------------------------------------------------------------------------


def volumes_in(folder: Path) -> list[Path]:
    """The volumes directly in `folder`: NIfTI files and DICOM series sub-folders, by name."""
    found = []
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith("."):
            continue
        if (p.is_file() and is_nifti(p)) or (p.is_dir() and is_dicom_series(p)):
            found.append(p)
    return found


def holds_volumes(folder: Path) -> bool:
    """Whether a folder holds volumes (a NIfTI file or a DICOM series) rather than 2-D images."""
    return Path(folder).is_dir() and bool(volumes_in(folder))


def case_id_of(path: Path) -> tuple[str, int | None]:
    """(case id, nnU-Net channel or None): `liver_003_0000.nii.gz` -> (`liver_003`, 0)."""
    stem = volume_case_id(path)
    m = _CHANNEL.match(stem)
    return (m["case"], int(m["channel"])) if m else (stem, None)


def cases_from_folders(images: Path, labels: Path | None, what: str) -> list[VolumeCase]:
    """Image volumes in `images` matched by case id to label volumes in `labels` (channel 0
    of nnU-Net multi-channel images is used; the others are named in a warning)."""
    if not Path(images).is_dir():
        raise SamMedftError(f"{images} not found; {what}")
    by_case: dict[str, Path] = {}
    extra_channels = 0
    for p in volumes_in(images):
        case, channel = case_id_of(p)
        if channel not in (None, 0):
            extra_channels += 1
            continue
        if case in by_case:
            raise SamMedftError(f"{images}: {by_case[case].name} and {p.name} are both case "
                                f"{case!r}; keep one image volume per case")
        by_case[case] = p
    if extra_channels:
        log.warning("%s: %d volume(s) of channels other than _0000 are not used (one input "
                    "channel per case is read)", images, extra_channels)
    if not by_case:
        raise SamMedftError(f"{images} holds no volumes (.nii, .nii.gz files or DICOM series "
                            f"folders); {what}")
    if labels is None:
        return [VolumeCase(c, p, None) for c, p in sorted(by_case.items())]
    if not Path(labels).is_dir():
        raise SamMedftError(f"{labels} not found; {what}")
    label_files = {case_id_of(p)[0]: p for p in volumes_in(labels)}
    no_label = sorted(set(by_case) - set(label_files))
    no_image = sorted(set(label_files) - set(by_case))
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(f"{len(no_label)} image volume(s) without a label volume in {labels}, "
                         f"e.g. {', '.join(by_case[c].name for c in no_label[:_SHOW])}")
        if no_image:
            parts.append(f"{len(no_image)} label volume(s) without an image in {images}, e.g. "
                         f"{', '.join(label_files[c].name for c in no_image[:_SHOW])}")
        raise SamMedftError("; ".join(parts) + ". A label volume is named like its image "
                            "(without the _0000 channel suffix)")
    return [VolumeCase(c, by_case[c], label_files[c]) for c in sorted(by_case)]


def cases_from_list(list_path: Path, img_folder: Path | None, mask_folder: Path | None
                    ) -> list[VolumeCase]:
    """A pair list whose rows name an image volume and its label volume."""
    pairs = read_pair_list(list_path, img_folder, mask_folder, must_exist=False)
    missing = [f"{kind} {p}" for pair in pairs for kind, p, ok in (
        ("image", pair.image, is_volume), ("label", pair.mask, is_label_volume)) if not ok(p)]
    if missing:
        raise SamMedftError(
            f"{list_path}: {len(missing)} listed volume(s) are missing or not volumes (.nii, "
            f".nii.gz, DICOM series folders; labels also DICOM-SEG files), e.g.\n  "
            + "\n  ".join(missing[:_SHOW]))
    cases = [VolumeCase(case_id_of(p.image)[0], p.image, p.mask) for p in pairs]
    _check_unique(cases, str(list_path))
    return cases


def cases_from_rows(images: Sequence, labels: Sequence, root: Path | None, where: str
                    ) -> list[VolumeCase] | None:
    """A `datasets` split whose image and mask columns hold volume paths (relative ones
    against `root`), or None when its first image is not a volume path (2-D data)."""
    if not len(images) or not isinstance(images[0], str):
        return None

    def resolve(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() or root is None else Path(root) / p

    if not (is_nifti(images[0]) or is_dicom_series(resolve(images[0]))):
        return None
    cases, missing = [], []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        if not isinstance(image, str) or not isinstance(label, str):
            raise SamMedftError(f"{where} row {i}: the image and mask columns must both hold "
                                f"volume paths (got {type(image).__name__}, "
                                f"{type(label).__name__})")
        img, lab = resolve(image), resolve(label)
        missing += [str(p) for p, ok in ((img, is_volume), (lab, is_label_volume)) if not ok(p)]
        cases.append(VolumeCase(case_id_of(img)[0], img, lab))
    if missing:
        raise SamMedftError(f"{where}: {len(missing)} volume path(s) are missing or not volumes, "
                            f"e.g. {', '.join(missing[:_SHOW])}")
    _check_unique(cases, where)
    return cases


def list_names_volumes(list_path: Path, img_folder: Path | None) -> bool:
    """Whether a pair list's first image is a volume (then the list is a volume source)."""
    try:
        pairs = read_pair_list(list_path, img_folder, None, must_exist=False)
    except SamMedftError:
        return False  # the 2-D reader reports what is wrong with the list
    return bool(pairs) and (is_nifti(pairs[0].image) or is_dicom_series(pairs[0].image))


def _check_unique(cases: Sequence[VolumeCase], where: str) -> None:
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case_id in seen:
            raise SamMedftError(f"{where}: {seen[c.case_id]} and {c.image} are both case "
                                f"{c.case_id!r}; name each case's volume differently")
        seen[c.case_id] = c.image


# ---- nnU-Net raw data sets -------------------------------------------------------------------


@dataclass(frozen=True)
class NnUNetDataset:
    folder: Path
    labels: dict[int, str]  # raw value -> class name, from dataset.json
    channel_names: dict[str, str]
    train: list[VolumeCase]
    test: list[VolumeCase]  # imagesTs with labelsTs (an unlabelled imagesTs is not a split)


def is_nnunet_folder(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / "dataset.json").is_file() and (folder / "imagesTr").is_dir()


def read_nnunet(folder: str | Path) -> NnUNetDataset:
    """An nnU-Net raw data set: `dataset.json` (labels, channel_names, file_ending) and its
    imagesTr/labelsTr (+ imagesTs/labelsTs)."""
    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise SamMedftError(f"{folder} is not an nnU-Net raw data set: {meta_path} is missing "
                            "(expected DatasetXXX_Name/ with dataset.json, imagesTr/, labelsTr/)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SamMedftError(f"{meta_path} is not readable JSON ({e}); fix the file") from None
    raw_labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise SamMedftError(f"{meta_path} has no `labels` object (class name -> value, e.g. "
                            '{"background": 0, "liver": 1}); add it')
    labels: dict[int, str] = {}
    for name, value in raw_labels.items():
        if isinstance(value, list | tuple):
            raise SamMedftError(
                f"{meta_path}: label {name!r} is a region ({value}); region-based labels are "
                "not supported: give each class one value")
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            raise SamMedftError(f"{meta_path}: label {name!r} has the value {value!r}; values "
                                "are whole numbers >= 0")
        labels[int(value)] = str(name)
    if 0 not in labels:
        raise SamMedftError(f"{meta_path}: `labels` must give the background value 0")
    ending = meta.get("file_ending", ".nii.gz")
    if str(ending).lower() not in (".nii.gz", ".nii"):
        raise SamMedftError(
            f"{meta_path}: file_ending {ending!r}; nnU-Net data sets are read here as NIfTI "
            "volumes (.nii.gz, .nii). For 2-D images (PNG) list them instead (data.source: "
            "lists, image_path,mask_path per line)")
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if isinstance(channels, dict) and len(channels) > 1:
        log.warning("%s: %d channels (%s); channel 0 is used", meta_path, len(channels),
                    ", ".join(map(str, channels.values())))
    what = "an nnU-Net raw data set has imagesTr/ and labelsTr/ beside dataset.json"
    train = cases_from_folders(folder / "imagesTr", folder / "labelsTr", what)
    test: list[VolumeCase] = []
    if (folder / "imagesTs").is_dir() and (folder / "labelsTs").is_dir():
        test = cases_from_folders(folder / "imagesTs", folder / "labelsTs", what)
    return NnUNetDataset(folder, dict(sorted(labels.items())),
                         {str(k): str(v) for k, v in dict(channels).items()}, train, test)


# ---- splits by case ------------------------------------------------------------------------


def split_cases(cases: Sequence[VolumeCase], val_fraction: float, test_fraction: float,
                seed: int, where: str) -> dict[str, list[VolumeCase]]:
    """A seeded shuffle of whole cases into train/val/test (fraction 0: the split is absent)."""
    ids = sorted(c.case_id for c in cases)
    random.Random(seed).shuffle(ids)
    n = len(ids)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise SamMedftError(f"{where}: {n} case(s) are too few for val_fraction={val_fraction} "
                            f"and test_fraction={test_fraction}; add cases or lower the fractions")
    chosen = {"val": set(ids[:n_val]), "test": set(ids[n_val:n_val + n_test]),
              "train": set(ids[n_val + n_test:])}
    return {split: [c for c in cases if c.case_id in chosen[split]]
            for split in ("train", "val", "test") if chosen[split]}


# ---- intensity ---------------------------------------------------------------------------


def scale_volume(array: np.ndarray, intensity: IntensityConfig, where: str) -> np.ndarray:
    """A volume's voxels -> float32 in [0, 255], one scale for the whole volume: a window
    (CT presets, in HU), else robust min-max over the volume's percentiles."""
    a = np.asarray(array, dtype=np.float32)
    if intensity.mode == "window":
        if intensity.window is None:
            raise SamMedftError("data.intensity.mode=window needs data.intensity.window: "
                                "[center, width], or a preset (data.intensity.preset: ct_abdomen)")
        center, width = intensity.window
        lo, hi = center - width / 2, center + width / 2
    elif intensity.mode == "none":
        lo, hi = 0.0, 255.0
        if np.nanmin(a) < 0 or np.nanmax(a) > 255:
            raise SamMedftError(
                f"{where}: values {np.nanmin(a):g}..{np.nanmax(a):g} are outside 0..255 with "
                "data.intensity.mode=none; use a preset (data.intensity.preset: ct_abdomen, "
                "mr, ...) or mode percentile")
    else:  # auto, percentile: robust min-max over the volume
        finite = a[np.isfinite(a)]
        lo, hi = (np.percentile(finite, intensity.percentiles) if finite.size else (0.0, 1.0))
        if hi <= lo:
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    out = (a - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0), 0, 255)


def slice_image(scaled: np.ndarray, axis: int, k: int, channels: str) -> np.ndarray:
    """Slice k of a scaled volume as an HxWx3 float32 image (2.5d: k-1, k, k+1)."""
    if channels == "2.5d":
        last = scaled.shape[axis] - 1
        planes = [plane(scaled, axis, min(max(j, 0), last)) for j in (k - 1, k, k + 1)]
    else:
        planes = [plane(scaled, axis, k)] * 3
    return np.ascontiguousarray(np.stack(planes, axis=-1), dtype=np.float32)


# ---- the source ----------------------------------------------------------------------------


class VolumeSliceSource(SampleSource):
    """The slices of a split's volumes. `index[i]` = (case number, slice index); slices are
    ordered case by case, so sequential reading decodes each volume once."""

    def __init__(self, cases: Sequence[VolumeCase], settings: VolumeConfig | None = None,
                 intensity: IntensityConfig | None = None, *, sample_empty: bool = False,
                 seed: int = 0) -> None:
        self.cases = list(cases)
        if not self.cases:
            raise SamMedftError("a volume split holds no cases")
        _check_unique(self.cases, "volume data")
        if any(c.label is None for c in self.cases):
            raise SamMedftError(f"{next(c.image for c in self.cases if c.label is None)} has no "
                                "label volume; training and evaluation need one per case")
        self.settings = settings or VolumeConfig()
        self.intensity = intensity or IntensityConfig()
        self.axis = axis_index(self.settings.axis)
        self._cache: OrderedDict[int, tuple[Volume, np.ndarray, np.ndarray]] = OrderedDict()
        self.index: list[tuple[int, int]] = []
        self.skipped_empty = 0
        for n, case in enumerate(self.cases):
            self.index += [(n, k) for k in self._slices_of(n, case, sample_empty, seed)]
        self.names = [f"{self.cases[n].case_id}_{k:03d}" for n, k in self.index]

    def _slices_of(self, n: int, case: VolumeCase, sample_empty: bool, seed: int) -> list[int]:
        image_geo = read_geometry(case.image)
        if is_dicom_seg(case.label):  # placed on the image's grid (or an error) when read
            seg_labels = read_labels(case.label, image_geo).array
        else:
            check_same_geometry(image_geo, read_geometry(case.label, label=True))
            seg_labels = None
        depth = image_geo.shape[self.axis]
        if not sample_empty or self.settings.empty_fraction >= 1:
            return list(range(depth))
        labels = seg_labels if seg_labels is not None else \
            read_volume(case.label, label=True).array
        other = tuple(a for a in range(3) if a != self.axis)
        has_label = np.any(labels != 0, axis=other)
        keep = [k for k in range(depth) if has_label[k]]
        empty = [k for k in range(depth) if not has_label[k]]
        n_keep = round(len(empty) * self.settings.empty_fraction)
        picked = random.Random(f"{seed}:{case.case_id}").sample(empty, n_keep)
        self.skipped_empty += len(empty) - n_keep
        return sorted(keep + picked)

    def volume(self, n: int) -> tuple[Volume, np.ndarray, np.ndarray]:
        """Case n decoded: (image volume, its scaled voxels, its label voxels), cached."""
        if n in self._cache:
            self._cache.move_to_end(n)
            return self._cache[n]
        case = self.cases[n]
        image = read_volume(case.image)
        labels = read_labels(case.label, image)
        check_same_geometry(image, labels)
        item = (image, scale_volume(image.array, self.intensity, str(case.image)), labels.array)
        self._cache[n] = item
        while len(self._cache) > _CACHE_CASES:
            self._cache.popitem(last=False)
        return item

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": OrderedDict()}  # loader workers decode their own

    def load(self, i: int) -> Sample:
        n, k = self.index[i]
        image, scaled, labels = self.volume(n)
        return Sample(slice_image(scaled, self.axis, k, self.settings.channels),
                      plane(labels, self.axis, k), self.names[i],
                      plane_spacing(image.spacing, self.axis), case=self.cases[n].case_id,
                      slice_index=k)

    def load_mask(self, i: int) -> np.ndarray:
        n, k = self.index[i]
        return plane(self.volume(n)[2], self.axis, k)

    def image_path(self, i: int) -> str:
        return str(self.cases[self.index[i][0]].image)

    def mask_path(self, i: int) -> str:
        return str(self.cases[self.index[i][0]].label)

    def where(self, i: int) -> str:
        n, k = self.index[i]
        return f"{self.cases[n].image} ({self.settings.axis} slice {k})"

    def image_header(self, i: int) -> io.ImageHeader:
        n, _ = self.index[i]
        geo = read_geometry(self.cases[n].image)
        cols, rows = (s for a, s in enumerate(geo.shape) if a != self.axis)  # see `plane`
        return io.ImageHeader(height=int(rows), width=int(cols), mode="volume", channels=1,
                              depth="float")

    def slices_of(self, case_id: str) -> list[int]:
        """The sample indices of one case, in slice order."""
        return [i for i, (n, _) in enumerate(self.index) if self.cases[n].case_id == case_id]


# ---- building the splits -------------------------------------------------------------------


def volume_splits(data: DataConfig) -> dict[str, SampleSource] | None:
    """The recipe's splits when its data are volumes (None: 2-D data, `data.sources` builds
    them). Training samples empty slices at data.volumes.empty_fraction."""
    by_split = volume_cases(data)
    if by_split is None:
        return None
    return {split: VolumeSliceSource(cases, data.volumes, data.intensity,
                                     sample_empty=split == "train", seed=data.split_seed)
            for split, cases in by_split.items() if cases}


def is_volume_data(data: DataConfig) -> bool:
    """Whether the recipe's data are volumes (looks at names only: no volume is decoded)."""
    if data.source == "nnunet":
        return True
    if data.source == "folder" and data.folder is not None:
        folder = Path(data.folder)
        return is_nnunet_folder(folder) or holds_volumes(folder / "images")
    if data.source == "lists" and data.train_list is not None:
        return Path(data.train_list).is_file() and list_names_volumes(data.train_list,
                                                                      data.img_folder)
    return False


def volume_settings(data: DataConfig, train: SampleSource | None) -> dict | None:
    """What prediction must repeat of the slicing (the adapter's sam_medft.json `volume`)
    when the training split is sliced volumes; None for 2-D data."""
    if isinstance(train, VolumeSliceSource):
        return data.volumes.model_dump(mode="json")
    return None


def volume_cases(data: DataConfig) -> dict[str, list[VolumeCase]] | None:
    """train/val/test cases of a volume recipe, or None when its data are 2-D."""
    if not is_volume_data(data):
        return None
    if data.source == "nnunet" or (data.source == "folder" and is_nnunet_folder(data.folder)):
        ds = read_nnunet(data.folder)
        splits = split_cases(ds.train, data.val_fraction, 0.0, data.split_seed, str(ds.folder))
        if ds.test:
            splits["test"] = ds.test
        elif data.test_fraction > 0:
            splits = split_cases(ds.train, data.val_fraction, data.test_fraction,
                                 data.split_seed, str(ds.folder))
        return splits
    if data.source == "folder":
        folder = Path(data.folder)
        labels = folder / "labels" if (folder / "labels").is_dir() else folder / "masks"
        what = (f"data.source=folder with volumes expects {folder}/images/ and {folder}/labels/ "
                "(or masks/) with one label volume per image volume")
        cases = cases_from_folders(folder / "images", labels, what)
        return split_cases(cases, data.val_fraction, data.test_fraction, data.split_seed,
                           str(folder))
    out: dict[str, list[VolumeCase]] = {}
    for split, path in (("train", data.train_list), ("val", data.val_list),
                        ("test", data.test_list)):
        if path is not None and (split != "test" or Path(path).is_file()):
            out[split] = cases_from_list(Path(path), data.img_folder, data.mask_folder)
    _check_no_leak(out)
    return out


def _check_no_leak(splits: dict[str, list[VolumeCase]]) -> None:
    """A case (or an image volume) listed in two splits would be scored on what it trained."""
    seen: dict[str, str] = {}
    for split, cases in splits.items():
        for c in cases:
            for key in (c.case_id, str(Path(c.image).resolve())):
                if key in seen and seen[key] != split:
                    raise SamMedftError(
                        f"case {c.case_id!r} ({c.image}) is in both the {seen[key]} and the "
                        f"{split} list: splits are by case (a patient's slices in two splits "
                        "inflate the scores); keep each case in one list")
                seen[key] = split


def volume_label_map(data: DataConfig) -> LabelMap | None:
    """The classes an nnU-Net data set's dataset.json names, or the segment labels of a data
    set labelled by DICOM-SEG files (None for other sources)."""
    if data.source == "nnunet" or (data.source == "folder" and data.folder is not None
                                   and is_nnunet_folder(data.folder)):
        return LabelMap(read_nnunet(data.folder).labels)
    if data.source == "lists" and data.train_list is not None and is_volume_data(data):
        return seg_label_map([c.label for cases in (volume_cases(data) or {}).values()
                              for c in cases if c.label is not None])
    return None


def seg_label_map(labels: Sequence[Path]) -> LabelMap | None:
    """Segment number -> SegmentLabel over the DICOM-SEG files among `labels` (None when none
    is a SEG); one number named differently in two files stops with both named."""
    names: dict[int, tuple[str, Path]] = {}
    for path in labels:
        if not is_dicom_seg(path):
            continue
        for number, name in segment_labels(path).items():
            if number in names and names[number][0] != name:
                raise SamMedftError(
                    f"segment {number} is {names[number][0]!r} in {names[number][1]} but "
                    f"{name!r} in {path}: segments become classes by number, so number them "
                    "alike in every SEG file, or give data.labels (value -> class name)")
            names.setdefault(number, (name, path))
    if not names:
        return None
    return LabelMap({0: "background", **{n: v for n, (v, _) in sorted(names.items())}})
