"""One sample and the indexable source of samples: the interface every data source implements.

Its own module so that sources of different kinds (2-D files and datasets in
`data.sources`, sliced volumes in `data.volume_source`) share it without importing each
other; `data.sources` re-exports both names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from sam_medft.data import io


@dataclass
class Sample:
    image: np.ndarray  # HxWx3 float32 in [0, 255]
    raw_mask: np.ndarray  # HxW int64 raw label values
    name: str  # unique within the split; used for output file names
    spacing: tuple[float, float] | None = None  # (sy, sx) in mm, when known
    # slices of volumes: the volume's case id and the slice's index along the slicing axis
    # (3-D metrics put a case's slices back together by these)
    case: str | None = None
    slice_index: int | None = None


class SampleSource(ABC):
    """An indexable split. `names[i]` is unique; `load(i)` decodes one sample."""

    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @abstractmethod
    def load(self, i: int) -> Sample: ...

    @abstractmethod
    def image_path(self, i: int) -> str | None:
        """The image's file path, when there is one (for reports and overlays)."""

    @abstractmethod
    def mask_path(self, i: int) -> str | None: ...

    @abstractmethod
    def image_header(self, i: int) -> io.ImageHeader:
        """Size and pixel type without decoding the pixels (for the dataset check)."""

    @abstractmethod
    def load_mask(self, i: int) -> np.ndarray:
        """HxW int64 raw values."""

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)

    def where(self, i: int) -> str:
        """How to name sample i in a message: its path, else its name."""
        return self.image_path(i) or self.names[i]

    def fix_hint(self, problem: str) -> str | None:
        """A fix for a data-check problem (`missing mask`, `corrupt mask`, ...) that knows
        where this source's files come from; None: the checker's generic fix."""
        return None
