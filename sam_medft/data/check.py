"""`sam-medft data check`: read every mask once and report what is wrong before training.

The study's loader discovered bad files one at a time, mid-epoch, or never (an out-of-range
label became a CUDA device-side assert). This walks each split once, image headers (plus a
structural check) and full masks, and returns every problem at once: missing and corrupt
files, image/mask size mismatches, label values the recipe does not map, plus what a user
wants to know anyway: sizes, pixel types, class frequencies and empty masks.

It also catches data that decodes fine but is wrong, which `data.binary: true` (every
value > 0 is foreground) would otherwise train on without a word: "masks" that are images
(swapped list columns, the wrong folder or column), JPEG masks (lossy: label values change
at every edge), and a validation split without any foreground (every validation Dice is 0
or undefined, so the "best" adapter would silently stay at the first evaluation).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import track
from rich.table import Table

from sam_medft.config import DataConfig
from sam_medft.data import io
from sam_medft.data.labels import LabelMap
from sam_medft.data.lists import read_pair_list
from sam_medft.data.sources import (
    PairSource,
    SampleSource,
    build_splits,
    default_label_map,
    test_list_present,
)
from sam_medft.data.volume_source import is_volume_data
from sam_medft.errors import SamMedftError

_SHOW = 5  # files named per problem

_FIXES = {
    "missing image": "check data.img_folder and the list paths",
    "missing mask": "check data.mask_folder and the list paths",
    "corrupt image": "re-export these files or drop them from the list",
    "corrupt mask": "re-export these files as single-channel label maps",
    "size mismatch": "masks must have their image's size; check the pairing or resample "
    "the masks with nearest-neighbour",
    "unmapped labels": (
        "add the values to data.labels, or make every value > 0 one foreground class with "
        "the override data.binary=true (it replaces the recipe's labels; drop a data.labels=... "
        "override), or in the recipe file replace `labels:` with `binary: true`"
    ),
    "lossy (JPEG) mask": "JPEG changes label values at every object edge (with data.binary: "
    "true each artefact becomes foreground); re-export the masks as PNG from the original "
    "label maps, or if JPEG is all you have, threshold while converting (e.g. value > 127 -> "
    "255) and list the PNGs",
    "mask looks like an image": "these hold smooth intensities (many grey levels varying "
    "pixel to pixel) where a label map has flat regions of one integer per class; check the "
    "pairing (lists are image_path,mask_path, image first) and point the list/folder at the "
    "label maps",
}
# An intensity image, not a label map: more distinct values than this, and most neighbouring
# pixels differ (a label map is flat regions), by steps small against the value range.
_IMAGE_MIN_VALUES = 16
_IMAGE_MIN_ROUGH = 0.5
_IMAGE_MAX_STEP = 1 / 8
_BINARY_MANY_VALUES = 64  # binary masks with more values than this get a warning
# A training class is rare (the trainer warns before the first step) when it is in at most
# this share of the training images (1 in 5), or covers less than this share of all
# labelled training pixels: such a class often stays unpredicted (validation Dice 0).
RARE_IMAGE_SHARE = 0.20
RARE_PIXEL_SHARE = 0.01


@dataclass
class SplitReport:
    """Everything found in one split."""

    name: str
    n: int = 0
    sizes: Counter = field(default_factory=Counter)  # (H, W) -> count
    kinds: Counter = field(default_factory=Counter)  # image pixel type -> count
    value_pixels: Counter = field(default_factory=Counter)  # raw value -> pixels
    value_images: Counter = field(default_factory=Counter)  # raw value -> images
    file_values: list[tuple[str, frozenset[int]]] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    class_pixels: list[int] = field(default_factory=list)
    class_images: list[int] = field(default_factory=list)
    empty: int = 0  # masks without any foreground class
    # masks reported as lossy or image-like: left out of label inference and the
    # unmapped-values problem (one problem per file, the one that says what is wrong)
    flagged: set[str] = field(default_factory=set)
    many_values: list[str] = field(default_factory=list)  # > 64 values, flat (not image-like)

    @property
    def checked(self) -> int:
        return len(self.file_values)

    def rare_classes(self, class_names: list[str]) -> list[RareClass]:
        """Foreground classes at or below RARE_IMAGE_SHARE of the images or below
        RARE_PIXEL_SHARE of the labelled pixels (the class table's counts, no new read)."""
        images = self.checked - len(self.flagged)
        total = sum(self.class_pixels)
        fg = sum(self.class_pixels[1:])
        if not images or not total or len(self.class_images) != len(class_names):
            return []
        out = []
        for c in range(1, len(class_names)):
            image_share = self.class_images[c] / images
            pixel_share = self.class_pixels[c] / total
            if image_share <= RARE_IMAGE_SHARE or pixel_share < RARE_PIXEL_SHARE:
                out.append(RareClass(class_names[c], c, self.class_images[c], images,
                                     pixel_share, self.class_pixels[c] / fg if fg else 0.0))
        return out


@dataclass
class RareClass:
    """A class few training images or pixels hold (`SplitReport.rare_classes`)."""

    name: str
    index: int
    images: int  # training images holding it
    of_images: int
    pixel_share: float  # of all labelled pixels
    foreground_share: float  # of the foreground pixels

    def to_dict(self) -> dict:
        return {"class": self.name, "images": self.images, "of_images": self.of_images,
                "pixel_share": round(self.pixel_share, 6),
                "foreground_share": round(self.foreground_share, 6)}


@dataclass
class DataReport:
    splits: dict[str, SplitReport]
    errors: list[str]
    warnings: list[str]
    label_map: LabelMap | None

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """One SamMedftError summarising every problem (first files per problem + counts)."""
        if self.errors:
            raise SamMedftError(
                f"the data check found {len(self.errors)} problem(s):\n- "
                + "\n- ".join(self.errors)
            )

    def table(self) -> Table:
        """One row per split: counts, sizes, pixel types, raw values, classes, empties."""
        t = Table(title="data check")
        for col in ("split", "images", "size (HxW)", "pixel type", "raw values"):
            t.add_column(col)
        names = self.label_map.class_names if self.label_map else []
        for name in names[1:]:
            t.add_column(f"{name}\nimages (px %)", justify="right")
        t.add_column("empty", justify="right")
        t.add_column("problems")
        for s in self.splits.values():
            total_px = sum(s.class_pixels) or 1
            row = [
                s.name,
                str(s.n),
                _sizes(s.sizes),
                ", ".join(f"{k} x{v}" for k, v in s.kinds.most_common(3)),
                _values(sorted(s.value_pixels)),
            ]
            for c in range(1, len(names)):
                if c < len(s.class_images):
                    row.append(f"{s.class_images[c]} ({100 * s.class_pixels[c] / total_px:.1f}%)")
                else:
                    row.append("-")
            row.append(str(s.empty))
            probs = [f"{k}: {len(v)}" for k, v in s.problems.items() if v]
            row.append("[red]" + ", ".join(probs) + "[/red]" if probs else "[green]none[/green]")
            t.add_row(*row)
        return t


def check_dataset(data: DataConfig, progress: bool = False,
                  sources: dict[str, SampleSource] | None = None) -> DataReport:
    """Check every split of the recipe's data section, or the `sources` handed over in
    Python; never raises for data problems (see `DataReport.raise_for_errors`)."""
    errors: list[str] = []
    warns: list[str] = []
    split_errors: list[str] = []  # handed-over sources were built by the caller: none here
    if sources is None:
        sources, split_errors = _sources(data)
        errors.extend(split_errors)
    splits = {name: _scan(name, src, progress) for name, src in sources.items()}

    label_map = default_label_map(data)
    if label_map is None:
        seen = {
            v
            for s in splits.values()
            for where, values in s.file_values
            if where not in s.flagged
            for v in values
        }
        if seen:
            try:
                label_map = LabelMap.infer(seen)
                warns.append(
                    f"no data.labels in the recipe: using the values found ({_values(sorted(seen))})"
                    f" as classes {', '.join(label_map.class_names[1:])}"
                )
            except SamMedftError as e:
                errors.append(str(e))

    for s in splits.values():
        if label_map is not None:
            _classes(s, label_map)
        src = sources[s.name]
        for kind, files in s.problems.items():
            if files:
                shown = "; ".join(files[:_SHOW])
                more = f" (and {len(files) - _SHOW} more)" if len(files) > _SHOW else ""
                fix = _fix(kind, s, src, data)
                errors.append(
                    f"{s.name}: {kind} in {len(files)} file(s): {shown}{more}. Fix: {fix}"
                )
        if s.empty:
            warns.append(f"{s.name}: {s.empty} of {s.checked} masks have no foreground (empty)")
        if data.binary and s.many_values:
            warns.append(
                f"{s.name}: {len(s.many_values)} mask(s) have more than {_BINARY_MANY_VALUES} "
                f"distinct values, e.g. {s.many_values[0]}; with data.binary: true all of them "
                "are one foreground class. If they are classes, map them in data.labels"
            )
        all_empty = label_map is not None and s.checked and s.empty == s.checked
        if all_empty and s.name == "train":
            errors.append(
                f"train: all {s.checked} masks are empty under the label map {label_map!r}; "
                "there is nothing to learn (check data.labels and data.mask_folder)"
            )
        if all_empty and s.name == "val":
            errors.append(
                f"val: all {s.checked} validation masks are empty (no foreground) under the label "
                f"map {label_map!r}: every validation Dice would be 0 or undefined and the best "
                "adapter would stay the one of the first evaluation. Fix: add labelled slices to "
                f"the validation split, or train without validation ({_no_val_fix(data)}); the "
                "adapter of the last step is then saved"
            )
    if "train" not in splits and not any("train" in e for e in split_errors):
        errors.append("no train split configured (data.train_list / data.folder / data.hf)")
    return DataReport(splits, errors, warns, label_map)


def _no_val_fix(data: DataConfig) -> str:
    """How to switch validation off for this recipe's data source."""
    return {
        "lists": "set data.val_list: null",
        "folder": "set data.val_fraction: 0",
        "nnunet": "set data.val_fraction: 0",
        "hf": "set data.hf.val_split: null",
        "synthetic": "set data.synthetic.n_val: 0",
        "python": "leave out val_data",
    }[data.source]


def _fix(kind: str, rep: SplitReport, src: SampleSource, data: DataConfig) -> str:
    """The fix for one problem kind: the source's own when it has one (HF columns), else a
    generic one; a split whose every mask looks like an image names the likely cause."""
    hint = src.fix_hint(kind)
    if kind == "mask looks like an image" and len(rep.problems[kind]) == rep.checked:
        if data.source == "lists":
            listed = {"train": data.train_list, "val": data.val_list, "test": data.test_list}
            return (
                f"every mask of {listed.get(rep.name)} looks like an image (smooth grey levels, "
                "not flat label regions): are the list's columns swapped? Each line is "
                "image_path,mask_path (image first); swap them, or name the columns in a "
                "header row (`mask,image`)"
            )
        if hint is None and data.source == "folder":
            return (
                f"every file in {data.folder}/masks looks like an image: are images/ and masks/ "
                "swapped? masks/ must hold the label maps"
            )
    return hint or _FIXES[kind]


def _sources(data: DataConfig) -> tuple[dict[str, SampleSource], list[str]]:
    """Split sources without the existence check (missing files are counted per file)."""
    out: dict[str, SampleSource] = {}
    errors: list[str] = []
    if data.source == "lists" and not is_volume_data(data):  # volumes: build_splits
        for split, path in (
            ("train", data.train_list),
            ("val", data.val_list),
            ("test", data.test_list),
        ):
            if path is None or (split == "test" and not test_list_present(path)):
                continue  # a missing test list is a notice (build_splits), not a data error
            try:
                pairs = read_pair_list(path, data.img_folder, data.mask_folder, must_exist=False)
            except SamMedftError as e:
                errors.append(f"{split}: {e}")
                continue
            root = data.img_folder if data.img_folder is not None else Path(path).parent
            out[split] = PairSource(pairs, data.intensity, root=root)
        return out, errors
    try:
        return build_splits(data), errors  # folder/synthetic pairs exist by construction
    except SamMedftError as e:
        return out, [str(e)]


def _scan(name: str, src: SampleSource, progress: bool) -> SplitReport:
    rep = SplitReport(name, n=len(src))
    indices = range(len(src))
    if progress:
        indices = track(indices, description=f"checking {name}", transient=True)
    for i in indices:
        where = src.where(i)
        if isinstance(src, PairSource):
            pair = src.pairs[i]
            missing = False
            if not _is_file(pair.image):
                rep.problems["missing image"].append(str(pair.image))
                missing = True
            if not _is_file(pair.mask):
                rep.problems["missing mask"].append(str(pair.mask))
                missing = True
            if missing:
                continue
        try:
            header = src.image_header(i)
        except io.MissingFileError as e:
            rep.problems["missing image"].append(_first_line(e))
            header = None
        except SamMedftError as e:
            rep.problems["corrupt image"].append(_first_line(e))
            header = None
        mask_where = src.mask_path(i) or where
        try:
            mask = src.load_mask(i)
        except io.MissingFileError as e:
            rep.problems["missing mask"].append(_first_line(e))
            continue
        except io.NotALabelMapError:
            rep.problems["mask looks like an image"].append(f"{mask_where} (a colour image)")
            rep.flagged.add(mask_where)
            rep.file_values.append((mask_where, frozenset()))
            continue
        except SamMedftError as e:
            rep.problems["corrupt mask"].append(_first_line(e))
            continue
        if header is not None:
            rep.sizes[(header.height, header.width)] += 1
            rep.kinds[header.kind] += 1
            if (header.height, header.width) != mask.shape:
                rep.problems["size mismatch"].append(
                    f"{where} is {header.height}x{header.width}, its mask "
                    f"{src.mask_path(i) or ''} is {mask.shape[0]}x{mask.shape[1]}"
                )
        values, counts = np.unique(mask, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            rep.value_pixels[v] += c
            rep.value_images[v] += 1
        rep.file_values.append((mask_where, frozenset(values.tolist())))
        if str(mask_where).lower().endswith(io.LOSSY_MASK_EXTENSIONS):
            rep.problems["lossy (JPEG) mask"].append(str(mask_where))
            rep.flagged.add(mask_where)
            continue
        looks = image_like(mask, len(values))
        if looks:
            rep.problems["mask looks like an image"].append(f"{mask_where} ({looks})")
            rep.flagged.add(mask_where)
        elif len(values) > _BINARY_MANY_VALUES:
            rep.many_values.append(f"{mask_where} ({len(values)} values)")
    return rep


def image_like(mask: np.ndarray, n_values: int | None = None) -> str | None:
    """Why a decoded mask looks like an intensity image rather than a label map, or None.

    A label map is flat regions: neighbouring pixels are mostly equal. An image has many
    values and most neighbours differ, by steps small against its range (smooth intensities
    plus noise). Few-valued masks return at once, so label maps cost one `np.unique` (already
    done by the scan) and nothing more."""
    if n_values is None:
        n_values = len(np.unique(mask))
    if n_values <= _IMAGE_MIN_VALUES or mask.ndim != 2 or min(mask.shape) < 2:
        return None
    dx, dy = np.diff(mask, axis=1), np.diff(mask, axis=0)
    steps = np.abs(np.concatenate([dx[dx != 0], dy[dy != 0]]))
    rough = steps.size / (dx.size + dy.size)
    if rough <= _IMAGE_MIN_ROUGH:
        return None
    span = int(mask.max()) - int(mask.min())
    step = float(np.median(steps))
    if step > _IMAGE_MAX_STEP * span:
        return None
    return f"{n_values} values, {rough:.0%} of neighbouring pixels differ"


def _classes(rep: SplitReport, label_map: LabelMap) -> None:
    """Class frequencies, empty masks and unmapped values under the final label map."""
    k = label_map.num_classes
    rep.class_pixels, rep.class_images, rep.empty = [0] * k, [0] * k, 0
    lut = {}
    for v in rep.value_pixels:
        if not label_map.unmapped([v]):
            lut[v] = int(label_map.apply(np.array([v]))[0])
    for v, px in rep.value_pixels.items():
        if v in lut:
            rep.class_pixels[lut[v]] += px
    for where, values in rep.file_values:
        if where in rep.flagged:  # reported as lossy or image-like; not counted as empty
            continue
        bad = label_map.unmapped(values)
        if bad:
            rep.problems["unmapped labels"].append(f"{where} (values {_values(bad)})")
        present = {lut[v] for v in values if v in lut}
        for c in present:
            rep.class_images[c] += 1
        if not bad and not (present - {0}):
            rep.empty += 1


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):  # a name the OS cannot look up: not there
        return False


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0]


def _sizes(sizes: Counter) -> str:
    if not sizes:
        return "-"
    if len(sizes) == 1:
        ((h, w),) = sizes
        return f"{h}x{w}"
    by_area = sorted(sizes, key=lambda s: s[0] * s[1])
    lo, hi = by_area[0], by_area[-1]
    return f"{lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]} ({len(sizes)} sizes)"


def _values(values: list[int], n: int = 8) -> str:
    head = ", ".join(str(v) for v in values[:n])
    return head + (f", ... ({len(values)} values)" if len(values) > n else "")
