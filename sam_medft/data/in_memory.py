"""Data handed over in Python: a `datasets.Dataset`, a torch `Dataset` or any sequence of
(image, mask) pairs, turned into the same `SampleSource` a recipe's files give.

This is what `sam_medft.training(recipe, train_data=..., val_data=...)` feeds the trainer, so
in-memory data takes the one sample path (decode rules, intensity scaling, label checks)
that files take.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from sam_medft.config import IntensityConfig
from sam_medft.data import io
from sam_medft.data.sources import HFSource, Sample, SampleSource
from sam_medft.errors import SamMedftError


class PairItemsSource(SampleSource):
    """A sequence (or torch `Dataset`) whose items are `(image, mask)` pairs or mappings with
    `image` and `mask` keys; images and masks are PIL images, numpy arrays or tensors."""

    def __init__(self, items: Any, intensity: IntensityConfig | None = None,
                 label: str = "data") -> None:
        try:
            n = len(items)
        except TypeError:
            raise SamMedftError(
                f"{label}: a {type(items).__name__} has no length; pass a datasets.Dataset, a "
                "torch Dataset with __len__, or a list of (image, mask) pairs") from None
        self.items = items
        self.intensity = intensity or IntensityConfig()
        self.label = label
        self.names = [f"{label}_{i:06d}" for i in range(n)]

    def _pair(self, i: int) -> tuple[Any, Any]:
        item = self.items[i]
        if isinstance(item, Mapping) and "image" in item and "mask" in item:
            return item["image"], item["mask"]
        if isinstance(item, tuple | list) and len(item) == 2:
            return item[0], item[1]
        kind = (f"a mapping with keys {sorted(item)}" if isinstance(item, Mapping)
                else type(item).__name__)
        raise SamMedftError(f"{self.where(i)}: item is {kind}; each item must be an (image, mask) "
                            "pair or a mapping with 'image' and 'mask'")

    def load(self, i: int) -> Sample:
        image, mask = self._pair(i)
        rgb = io.scale_intensity(_array(image), self.intensity, source=self.where(i))
        labels = io.mask_array(_array(mask), f"{self.where(i)} (mask)")
        if rgb.shape[:2] != labels.shape:
            raise SamMedftError(f"{self.where(i)}: image {rgb.shape[:2]} and mask {labels.shape} "
                                "differ in size; give each pair at the same height and width")
        return Sample(rgb, labels, self.names[i])

    def image_path(self, i: int) -> str | None:
        return None

    def mask_path(self, i: int) -> str | None:
        return None

    def where(self, i: int) -> str:
        return f"{self.label}[{i}]"

    def image_header(self, i: int) -> io.ImageHeader:
        a = np.asarray(_array(self._pair(i)[0]))
        channels = 1 if a.ndim == 2 else a.shape[2]
        return io.ImageHeader(a.shape[0], a.shape[1], f"array:{a.dtype}", channels,
                              f"{a.dtype.itemsize * 8}-bit")

    def load_mask(self, i: int) -> np.ndarray:
        return io.mask_array(_array(self._pair(i)[1]), f"{self.where(i)} (mask)")


def _array(value: Any) -> np.ndarray | Image.Image:
    """PIL images stay PIL (their mode carries the bit depth); tensors become arrays."""
    if isinstance(value, Image.Image):
        return value
    if hasattr(value, "detach"):  # a torch tensor: channels first when 3-D with C in 1..4
        a = value.detach().cpu().numpy()
        return np.moveaxis(a, 0, -1) if a.ndim == 3 and a.shape[0] in (1, 3, 4) else a
    return np.asarray(value)


def as_source(data: Any, intensity: IntensityConfig | None = None, *, label: str = "data",
              image_column: str = "image", mask_column: str = "mask") -> SampleSource:
    """Any supported in-memory data set -> a SampleSource."""
    if isinstance(data, SampleSource):
        return data
    try:
        from datasets import Dataset
    except ImportError:  # pragma: no cover - datasets is a dependency
        Dataset = ()  # noqa: N806
    if isinstance(data, Dataset):
        return HFSource(data, image_column, mask_column, intensity=intensity, label=label)
    return PairItemsSource(data, intensity, label=label)
