"""The torch Dataset the trainer and evaluator iterate: source sample -> model-frame batch.

Each item is one image in the model frame, from the `PreprocessedStore` when the run keeps
one (decoded once per run) or decoded now: uint8 pixels resized and padded to the input
size, class masks at the input size and on the low-res grid, and the sizes needed to go
back to the original frame. Normalisation, augmentation and the int64 labels are made by
`model_frame.finish_batch`, either on the accelerator for a whole batch
(`finish_in_loader=False`) or here, per item (prompt modes simulate prompts from the
augmented mask, so they always finish here). Augmentation parameters are drawn per item,
seeded by (seed, epoch, index), so the data order and the augmentations replay exactly on
resume and under any number of workers, processes or finishing devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sam_medft.config import AugmentConfig
from sam_medft.data.augment import draw_params
from sam_medft.data.labels import LabelMap
from sam_medft.data.model_frame import UINT8_KEYS, HostMeta, finish_batch
from sam_medft.data.preprocessed import (
    PreprocessedStore,
    image_key,
    mask_dtype,
    preprocess_sample,
)
from sam_medft.data.prompts import (
    PromptSettings,
    collate_prompts,
    simulate_prompts,
    to_model_frame,
)
from sam_medft.data.sources import SampleSource
from sam_medft.data.transforms import IGNORE_INDEX, SamGeometry


@dataclass
class ModelFrameSpec:
    geometry: SamGeometry
    normalization: str
    label_map: LabelMap


class SamSegmentationDataset(Dataset):
    """Finished items: pixel_values (3,S,S), labels (M,M) int64, original_size, index.
    Unfinished items (`finish_in_loader=False`): image_u8, mask_input, mask_lowres and a
    `host` HostMeta instead of pixel_values and labels."""

    def __init__(self, source: SampleSource, spec: ModelFrameSpec,
                 augment: AugmentConfig | None = None, seed: int = 0,
                 prompts: PromptSettings | None = None, store: PreprocessedStore | None = None,
                 finish_in_loader: bool = True, cache_keys: bool = False):
        self.source = source
        self.spec = spec
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0
        self.prompts = prompts  # prompt modes: simulated from the (augmented) model-frame mask
        self.store = store
        if prompts is not None and not finish_in_loader:
            raise ValueError("prompt modes finish items in the loader (prompts need the mask)")
        self.finish_in_loader = finish_in_loader
        self.cache_keys = cache_keys  # embedding-cache keys of the uint8 images in `host`
        self.pad = mask_dtype(spec.label_map.num_classes)[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """`key`: an index (this dataset's epoch applies) or (epoch, index) from
        `EpochSampler`, so a persistent worker's copy never augments with a stale epoch."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if self.store is not None:
            s = self.store[index]
            key = self.store.keys[index] if self.cache_keys else None
        else:
            s = preprocess_sample(self.source.load(index), self.spec.geometry, self.spec.label_map)
            key = image_key(s.image) if self.cache_keys else None
        params = None
        if self.augment is not None:
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch, index))
            params = draw_params(self.augment, 1, gen)
        host = HostMeta(torch.tensor([s.resized]), self.pad, params,
                        None if key is None else [key])
        item = {"index": index, "original_size": torch.tensor(s.original), "image_u8": s.image,
                "mask_input": s.mask, "mask_lowres": s.lowres, "host": host}
        if not self.finish_in_loader:
            return item
        g = self.spec.geometry
        batch = {k: (v[None] if k in UINT8_KEYS else v) for k, v in item.items()}
        done = finish_batch(batch, g, self.spec.normalization, self.augment,
                            keep_input_mask=self.prompts is not None)
        item = {"index": index, "original_size": item["original_size"], "host": host,
                "pixel_values": done["pixel_values"][0], "labels": done["labels"][0]}
        if self.prompts is not None:
            item["prompts"] = self._simulate(done["mask_input"][0], item["labels"], epoch, index)
        return item

    def _simulate(self, mask: torch.Tensor, lowres: torch.Tensor, epoch: int, index: int):
        """Prompts from the model-frame mask: coordinates need no further transform."""
        g = self.spec.geometry
        label_map = mask.clamp(min=0).numpy()
        rng = np.random.default_rng(_mix(self.seed, epoch, index, 7))
        classes = list(range(1, self.spec.label_map.num_classes))
        ps = simulate_prompts(label_map, self.prompts, rng, class_ids=classes)
        ps = to_model_frame(ps, g, (g.input_size, g.input_size))
        ps.targets[:, lowres == IGNORE_INDEX] = IGNORE_INDEX
        return ps


def collate(items: list[dict]) -> dict:
    """Items (finished or uint8) -> one batch; `host` metadata is merged, not stacked."""
    tensors = [k for k in ("pixel_values", "labels", "original_size", *UINT8_KEYS) if k in items[0]]
    out = {k: torch.stack([it[k] for it in items]) for k in tensors}
    out["index"] = torch.tensor([it["index"] for it in items])
    out["host"] = HostMeta.collate([it["host"] for it in items])
    if "prompts" in items[0]:
        sets = [it["prompts"] for it in items]
        out.update(collate_prompts(sets, max(1, max(len(s) for s in sets))))
    return out


class EpochSampler(Sampler[tuple[int, int]]):
    """A seeded permutation per epoch: the same order in every process and after resume.
    Yields (epoch, index): the item's augmentation seed travels with the key, so loader
    workers can persist across epochs."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True,
                 weights: np.ndarray | None = None):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        # a weighted mixture (Setup 2): n draws with replacement, sample i with weights[i]
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = range(self.n)
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, -1))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        return iter([(self.epoch, i) for i in order])

    def __len__(self) -> int:
        return self.n


def _mix(*xs: int) -> int:
    return int(np.random.SeedSequence([x % (2**32) for x in xs]).generate_state(1)[0])


__all__ = ["SamSegmentationDataset", "ModelFrameSpec", "collate", "EpochSampler", "IGNORE_INDEX"]
