"""Unlabelled images for self-supervised pretraining (Setup 3): image files without masks.

`pretrain.images` names a folder (searched recursively) or a text list of image paths (one
a line, relative to the list's folder). Masks are never read: each sample carries an empty
one, so the one sample path (preprocess, store, augment) is unchanged. Every file's header
is checked before training, and the unreadable ones are named in one message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam_medft.config import IntensityConfig
from sam_medft.data import io
from sam_medft.data.sources import Sample, SampleSource
from sam_medft.errors import SamMedftError

_SHOW = 5


def image_files(where: str | Path) -> list[Path]:
    """The image files of a folder (recursively, sorted) or of a .txt list."""
    p = Path(where).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file()
                       and f.name.lower().endswith(io.IMAGE_EXTENSIONS))
        if not files:
            raise SamMedftError(f"pretrain.images={where}: no image files "
                                f"({', '.join(io.IMAGE_EXTENSIONS)}) in {p} or below")
        return files
    if p.is_file():
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        files = [Path(ln) if Path(ln).is_absolute() else p.parent / ln
                 for ln in lines if ln and not ln.startswith("#")]
        if not files:
            raise SamMedftError(f"pretrain.images={where}: the list names no image")
        return files
    raise SamMedftError(f"pretrain.images={where} not found: give a folder of images or a .txt "
                        f"list of image paths (one a line)")


class UnlabelledSource(SampleSource):
    """Image files, each with an empty mask (pretraining only)."""

    def __init__(self, files: list[Path], intensity: IntensityConfig | None = None,
                 root: Path | None = None) -> None:
        self.files = list(files)
        self.intensity = intensity or IntensityConfig()
        self.names = [str(f.relative_to(root)) if root and f.is_relative_to(root) else f.name
                      for f in self.files]

    @classmethod
    def from_path(cls, where: str | Path, intensity: IntensityConfig | None = None
                  ) -> UnlabelledSource:
        p = Path(where).expanduser()
        source = cls(image_files(p), intensity, root=p if p.is_dir() else p.parent)
        source.check()
        return source

    def check(self) -> None:
        """Every header readable (a truncated or unsupported file fails now, not mid-run)."""
        bad = []
        for f in self.files:
            try:
                io.image_header(f, verify=True)
            except (SamMedftError, OSError, ValueError) as e:
                bad.append(f"{f} ({e})")
        if bad:
            more = f" (and {len(bad) - _SHOW} more)" if len(bad) > _SHOW else ""
            raise SamMedftError(f"pretrain.images: {len(bad)} unreadable image(s): "
                                f"{'; '.join(bad[:_SHOW])}{more}. Remove or replace them")

    def load(self, i: int) -> Sample:
        image = io.read_image(self.files[i], self.intensity)
        return Sample(image, np.zeros(image.shape[:2], dtype=np.int64), self.names[i])

    def image_path(self, i: int) -> str:
        return str(self.files[i])

    def mask_path(self, i: int) -> str | None:
        return None

    def image_header(self, i: int) -> io.ImageHeader:
        return io.image_header(self.files[i], verify=True)

    def load_mask(self, i: int) -> np.ndarray:
        h = self.image_header(i)
        return np.zeros((h.height, h.width), dtype=np.int64)
