"""Samples preprocessed once per run: uint8 pixels and class masks at SAM's input size.

Decoding a PNG/NIfTI/DICOM slice, mapping its labels and resizing it to 1024 px costs more
CPU time per image than a GPU spends on the model step, every epoch. A `PreprocessedStore`
does that work once per run (in parallel, with the loader's workers) and keeps the result:

- `images`  [N, 3, S, S] uint8: `transforms.preprocess_image` (longest side S, bilinear,
  antialiased, rounded to uint8, zero-padded bottom/right), the very pixels eval and
  prediction feed the model too.
- `masks`   [N, S, S] class ids at the input size (nearest), for augmentation and prompts.
- `lowres`  [N, M, M] class ids on the decoder's grid, resized from the original mask (the
  labels of un-augmented batches, exactly as before).
- `resized` [N, 2] (h, w) of the un-padded window; `original` [N, 2] the original size.
- `keys`    a SHA-256 of each uint8 image, so the embedding cache never hashes a batch.

Masks are uint8 with 255 as padding (int16 with -1 above 254 classes): a quarter of the
int64 labels' size. Normalisation, augmentation and the int64 labels are made from these on
the accelerator (`sam_medft.data.model_frame`), or in the loader workers.

`memory` keeps the arrays in this process's memory (loader workers forked from it read the
same pages, copy-on-write; no /dev/shm is used, which containers often keep small);
`disk` writes them as .npy files in the run folder and memory-maps them (for data sets
larger than RAM; the page cache shares them between processes). `auto` picks memory when
the estimate fits `limit_gib` per process.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sam_medft.data.sources import SampleSource
from sam_medft.data.transforms import IGNORE_INDEX, SamGeometry, preprocess_image

log = logging.getLogger("sam_medft.data")

CacheMode = Literal["auto", "memory", "disk", "off"]
_FIELDS = ("images", "masks", "lowres", "resized", "original")


@dataclass
class PreprocessedSample:
    """One sample at the input size, padded: what the store keeps per index."""

    image: torch.Tensor  # (3, S, S) uint8
    mask: torch.Tensor  # (S, S) class ids, mask_dtype, padding = pad value
    lowres: torch.Tensor  # (M, M) class ids, padding = pad value
    resized: tuple[int, int]
    original: tuple[int, int]


def mask_dtype(num_classes: int) -> tuple[torch.dtype, int]:
    """Storage dtype of class masks and its padding value."""
    return (torch.uint8, 255) if num_classes <= 255 else (torch.int16, -1)


def stored_to_labels(mask: torch.Tensor, pad: int) -> torch.Tensor:
    """Stored class ids -> int64 labels with IGNORE_INDEX in the padding (on any device)."""
    m = mask.long()
    return m.masked_fill(m == pad, IGNORE_INDEX) if pad != IGNORE_INDEX else m


def preprocess_sample(sample, geometry: SamGeometry, label_map) -> PreprocessedSample:
    """Source sample (image in [0, 255], raw mask) -> uint8 model-frame sample (the image
    by `preprocess_image`, as every route makes it)."""
    dtype, pad = mask_dtype(label_map.num_classes)
    classes = label_map.apply(sample.raw_mask, source=sample.name)
    image = preprocess_image(sample.image, geometry)
    mask = _pad_ids(geometry.mask_to_input(classes), pad, dtype)
    lowres = _pad_ids(geometry.mask_to_lowres(classes), pad, dtype)
    return PreprocessedSample(image.pixels, mask, lowres, image.resized, image.original)


def image_key(image: torch.Tensor) -> str:
    """The embedding-cache key of a stored uint8 image (its bytes and shape)."""
    h = hashlib.sha256(f"u8|{tuple(image.shape)}|".encode())
    h.update(memoryview(image.contiguous().numpy()).cast("B"))
    return h.hexdigest()


def _pad_ids(labels: torch.Tensor, pad: int, dtype: torch.dtype) -> torch.Tensor:
    return labels.masked_fill(labels == IGNORE_INDEX, pad).to(dtype)


def estimate_bytes(n: int, geometry: SamGeometry, num_classes: int) -> int:
    """Size of a store of n samples."""
    item = mask_dtype(num_classes)[0].itemsize
    s, m = geometry.input_size, geometry.mask_size
    return n * (3 * s * s + item * (s * s + m * m) + 16)  # + two int32 (h, w) pairs


def choose_mode(mode: CacheMode, n: int, geometry: SamGeometry, num_classes: int,
                limit_gib: float, processes_per_node: int = 1) -> Literal["memory", "disk", "off"]:
    """`auto` -> memory when every process's copy fits `limit_gib`, else disk."""
    if mode != "auto":
        return mode
    need = estimate_bytes(n, geometry, num_classes) / 2**30
    return "memory" if need <= limit_gib / max(1, processes_per_node) else "disk"


class _Decode(torch.utils.data.Dataset):
    """The one-off decode pass, run by loader workers."""

    def __init__(self, source: SampleSource, geometry: SamGeometry, label_map):
        self.source, self.geometry, self.label_map = source, geometry, label_map

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        s = preprocess_sample(self.source.load(i), self.geometry, self.label_map)
        return i, s, image_key(s.image)


class PreprocessedStore:
    """Preprocessed samples of one split, indexable like the source."""

    def __init__(self, arrays: dict, keys: list[str], pad: int, folder: Path | None = None):
        self._arrays = arrays
        self.keys = keys
        self.pad = pad
        self.folder = folder  # disk mode: the .npy files (re-opened lazily in each worker)

    @classmethod
    def build(cls, source: SampleSource, geometry: SamGeometry, label_map, *,
              mode: Literal["memory", "disk"] = "memory", folder: Path | None = None,
              num_workers: int = 0, desc: str = "preprocess") -> PreprocessedStore:
        """Decode, map and resize every sample of `source` once (workers in parallel)."""
        if mode == "disk" and folder is None:
            raise ValueError("a disk store needs a folder")
        n = len(source)
        dtype, pad = mask_dtype(label_map.num_classes)
        s, m = geometry.input_size, geometry.mask_size
        shapes = {"images": ((n, 3, s, s), torch.uint8), "masks": ((n, s, s), dtype),
                  "lowres": ((n, m, m), dtype), "resized": ((n, 2), torch.int32),
                  "original": ((n, 2), torch.int32)}
        tmp, maps = None, {}
        if mode == "disk":
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            maps = {k: np.lib.format.open_memmap(tmp / f"{k}.npy", mode="w+", dtype=_np(dt),
                                                 shape=shape)
                    for k, (shape, dt) in shapes.items()}
            arrays = {k: torch.from_numpy(a) for k, a in maps.items()}
        else:
            arrays = {k: torch.empty(shape, dtype=dt) for k, (shape, dt) in shapes.items()}
        keys = [""] * n
        try:
            loader = torch.utils.data.DataLoader(
                _Decode(source, geometry, label_map), batch_size=None, num_workers=num_workers)
            for i, sample, key in tqdm(loader, total=n, desc=desc, unit="img", leave=False):
                arrays["images"][i] = sample.image
                arrays["masks"][i] = sample.mask
                arrays["lowres"][i] = sample.lowres
                arrays["resized"][i] = torch.tensor(sample.resized)
                arrays["original"][i] = torch.tensor(sample.original)
                keys[i] = key
            if mode == "disk":
                for a in maps.values():
                    a.flush()
                arrays, maps = {}, {}  # close the memmaps before the rename
                (tmp / "keys.txt").write_text("\n".join(keys) + "\n")
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
                return cls.open(folder, pad)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(arrays, keys, pad)

    @classmethod
    def open(cls, folder: Path, pad: int) -> PreprocessedStore:
        """A disk store written by `build` (by this or another process)."""
        keys = (folder / "keys.txt").read_text().split()
        return cls({}, keys, pad, folder)

    def _array(self, name: str):
        """A torch tensor (memory) or a read-only numpy memmap (disk, opened on first use
        in each process)."""
        if name not in self._arrays:
            self._arrays[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> PreprocessedSample:
        get = {k: self._array(k)[i] for k in _FIELDS}
        t = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))
             for k, v in get.items()}
        return PreprocessedSample(t["images"], t["masks"], t["lowres"],
                                  tuple(int(x) for x in t["resized"]),
                                  tuple(int(x) for x in t["original"]))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.folder is not None:
            state["_arrays"] = {}  # memmaps are re-opened in the worker, not pickled
        return state

    def nbytes(self) -> int:
        return sum(int(np.prod(self._array(k).shape)) * self._array(k).dtype.itemsize
                   for k in _FIELDS)

    @property
    def mode(self) -> str:
        return "disk" if self.folder is not None else "memory"


def _np(dtype: torch.dtype):
    return {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32}[dtype]


def lowres_from_input(mask: torch.Tensor, mask_size: int) -> torch.Tensor:
    """(B, S, S) int64 labels -> (B, M, M) by nearest sampling (padding stays ignored)."""
    m = F.interpolate(mask[:, None].float(), size=(mask_size, mask_size), mode="nearest-exact")
    return m[:, 0].long()
