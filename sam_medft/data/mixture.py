"""Several sources read as one: pretraining on several splits (Setup 3) and the labelled
mixture of data sets (Setup 2).

`ConcatSource` keeps each part's own source (any kind: lists, folder, `datasets`, ...) and
prefixes sample names with the part's name, so outputs never collide and every sample says
where it came from. With `label_maps`, each part's raw mask values are mapped by that part's
own label map onto the union class space (`union_label_map`), whose raw values are the class
indices themselves; `valid_classes` says which union classes each part labels.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from sam_medft.config import DataConfig
from sam_medft.data import io
from sam_medft.data.check import DataReport, check_dataset
from sam_medft.data.labels import LabelMap
from sam_medft.data.sources import (
    SPLITS,
    Sample,
    SampleSource,
    build_splits,
    default_label_map,
)
from sam_medft.errors import SamMedftError


def union_label_map(label_maps: Sequence[LabelMap]) -> LabelMap:
    """Background + every part's foreground class, by name, in first-seen order; the raw
    value of a union class is its index."""
    names = ["background"]
    for lm in label_maps:
        for name in lm.class_names[1:]:
            if name not in names:
                names.append(name)
    return LabelMap({i: n for i, n in enumerate(names)})


class ConcatSource(SampleSource):
    """`parts` one after the other; `part_names[k]` prefixes the names of part k."""

    def __init__(self, parts: Sequence[SampleSource], part_names: Sequence[str],
                 label_maps: Sequence[LabelMap] | None = None,
                 weights: Sequence[float] | None = None,
                 union: LabelMap | None = None) -> None:
        if len(parts) != len(part_names) or len(set(part_names)) != len(part_names):
            raise SamMedftError(f"data set names must be unique, got {list(part_names)}")
        self.parts = list(parts)
        self.part_names = list(part_names)
        self.starts = list(np.cumsum([0, *[len(p) for p in self.parts]])[:-1])
        self.names = [f"{n}/{s}" for n, p in zip(part_names, parts, strict=True) for s in p.names]
        self.weights = list(weights) if weights is not None else None
        self.label_maps = list(label_maps) if label_maps is not None else None
        if union is None and self.label_maps is not None:
            union = union_label_map(self.label_maps)
        self.union = union  # the class space of every split of a mixture (all its data sets)
        self._to_union: list[np.ndarray] = []
        for lm in self.label_maps or []:
            # class 0 is every data set's background, whatever its name there
            table = np.array([0, *(self.union.class_names.index(n) for n in lm.class_names[1:])])
            self._to_union.append(table)

    def locate(self, i: int) -> tuple[int, int]:
        """Sample i -> (part, index inside the part)."""
        if not 0 <= i < len(self.names):
            raise IndexError(i)
        k = bisect.bisect_right(self.starts, i) - 1
        return k, i - self.starts[k]

    def part_of(self) -> np.ndarray:
        """(N,) the part of every sample."""
        return np.concatenate([np.full(len(p), k) for k, p in enumerate(self.parts)])

    def sample_weights(self) -> np.ndarray | None:
        """(N,) sampling probabilities: part k gets weights[k] / sum(weights) of the draws,
        whatever its size (None: no weights, every sample once per epoch)."""
        if self.weights is None:
            return None
        w = np.array(self.weights, dtype=np.float64)
        sizes = np.array([len(p) for p in self.parts], dtype=np.float64)
        per = np.where(sizes > 0, w / np.maximum(sizes, 1), 0.0)
        out = per[self.part_of()]
        return out / out.sum()

    def sample_valid_classes(self) -> np.ndarray:
        """(N, union classes) bool: the classes sample i's data set labels."""
        return self.valid_classes()[self.part_of()]

    def valid_classes(self) -> np.ndarray:
        """(parts, union classes) bool: the classes each part labels (background always)."""
        if self.union is None:
            raise ValueError("valid_classes needs label_maps")
        out = np.zeros((len(self.parts), self.union.num_classes), dtype=bool)
        for k, table in enumerate(self._to_union):
            out[k, table] = True
        return out

    def _mask(self, k: int, raw: np.ndarray, where: str) -> np.ndarray:
        if self.label_maps is None:
            return raw
        return self._to_union[k][self.label_maps[k].apply(raw, where)].astype(np.int64)

    def load(self, i: int) -> Sample:
        k, j = self.locate(i)
        s = self.parts[k].load(j)
        return Sample(s.image, self._mask(k, s.raw_mask, self.parts[k].where(j)), self.names[i],
                      s.spacing)

    def image_path(self, i: int) -> str | None:
        k, j = self.locate(i)
        return self.parts[k].image_path(j)

    def mask_path(self, i: int) -> str | None:
        k, j = self.locate(i)
        return self.parts[k].mask_path(j)

    def image_header(self, i: int) -> io.ImageHeader:
        k, j = self.locate(i)
        return self.parts[k].image_header(j)

    def load_mask(self, i: int) -> np.ndarray:
        k, j = self.locate(i)
        return self._mask(k, self.parts[k].load_mask(j), self.parts[k].where(j))


# ---- a recipe's mixture -------------------------------------------------------------------


def check_data(data: DataConfig, sources: dict[str, SampleSource] | None = None, *,
               entries: list[tuple[DataConfig, DataReport]] | None = None) -> DataReport:
    """`check_dataset` of a recipe's data; a mixture checks each data set with its own labels
    (messages name the data set; `entries`: `check_entries` already run) and reports the
    union label map."""
    if data.source != "mixture" or sources is not None:
        return check_dataset(data, sources=sources)
    errors, warns, maps = [], [], []
    for entry, report in entries if entries is not None else check_entries(data):
        errors += [f"data set {entry.name}: {e}" for e in report.errors]
        warns += [f"data set {entry.name}: {w}" for w in report.warnings]
        maps.append(report.label_map)
    union = union_label_map(maps) if all(m is not None for m in maps) else None
    return DataReport({}, errors, warns, union)


def check_entries(data: DataConfig) -> list[tuple[DataConfig, DataReport]]:
    """Each data set of a mixture checked on its own, with its own label map."""
    return [(entry, check_dataset(entry)) for entry in data.datasets or []]


def data_splits(data: DataConfig) -> dict[str, SampleSource]:
    """`build_splits`, and for a mixture one `ConcatSource` per split over the data sets that
    have it, each data set's masks mapped onto the union classes."""
    if data.source != "mixture":
        return build_splits(data)
    per_entry = [(e, build_splits(e), default_label_map(e) or _label_map_for(e))
                 for e in data.datasets]
    union = union_label_map([lm for _, _, lm in per_entry])
    out: dict[str, SampleSource] = {}
    for split in SPLITS:
        have = [(e, s[split], lm) for e, s, lm in per_entry if split in s and len(s[split])]
        if have:
            out[split] = ConcatSource([s for _, s, _ in have], [e.name for e, _, _ in have],
                                      label_maps=[lm for _, _, lm in have],
                                      weights=[e.weight for e, _, _ in have], union=union)
    return out


def _label_map_for(entry: DataConfig) -> LabelMap:
    """An entry's label map when the recipe does not give it: inferred from its masks."""
    report = check_dataset(entry)
    if report.label_map is None:
        report.raise_for_errors()
        raise SamMedftError(f"data set {getattr(entry, 'name', '?')}: give data.labels")
    return report.label_map
