"""The torch Dataset the trainer and evaluator iterate: source sample -> model tensors.

Each item is one image in the model frame: normalised, resized, padded pixels; the label
map on the low-res grid (padding = IGNORE_INDEX); and the sizes needed to go back to the
original frame. Augmentation (train only) runs in the model frame, seeded by
(seed, epoch, index) so the data order and the augmentations replay exactly on resume and
under any number of workers or processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from sam_medft.config import AugmentConfig
from sam_medft.data.labels import LabelMap
from sam_medft.data.prompts import PromptSettings
from sam_medft.data.sources import SampleSource
from sam_medft.data.transforms import IGNORE_INDEX, SamGeometry, to_model_input


@dataclass
class ModelFrameSpec:
    geometry: SamGeometry
    normalization: str
    label_map: LabelMap


class SamSegmentationDataset(Dataset):
    """Items: pixel_values (3,S,S), labels (M,M) int64, original_size, index."""

    def __init__(self, source: SampleSource, spec: ModelFrameSpec,
                 augment: AugmentConfig | None = None, seed: int = 0,
                 prompts: PromptSettings | None = None):
        self.source = source
        self.spec = spec
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0
        self.prompts = prompts  # prompt modes: simulated from the (augmented) model-frame mask

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        sample = self.source.load(index)
        g = self.spec.geometry
        classes = self.spec.label_map.apply(sample.raw_mask, source=sample.name)
        pixels, original, _ = to_model_input(sample.image, g, self.spec.normalization)
        item = {"index": index, "original_size": torch.tensor(original)}
        if self.augment is None and self.prompts is None:
            item["labels"] = g.mask_to_lowres(classes)
        else:
            mask = g.mask_to_input(classes)
            if self.augment is not None:
                from sam_medft.data.augment import augment_sample

                gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch, index))
                pixels, mask = augment_sample(pixels, mask, self.augment, gen)
            item["labels"] = input_to_lowres(mask, g)
            if self.prompts is not None:
                item["prompts"] = self._simulate(mask, item["labels"], index)
        item["pixel_values"] = pixels
        return item

    def _simulate(self, mask: torch.Tensor, lowres: torch.Tensor, index: int):
        """Prompts from the model-frame mask: coordinates need no further transform."""
        from sam_medft.data.prompts import simulate_prompts, to_model_frame

        g = self.spec.geometry
        label_map = mask.clamp(min=0).numpy()
        rng = np.random.default_rng(_mix(self.seed, self.epoch, index, 7))
        classes = list(range(1, self.spec.label_map.num_classes))
        ps = simulate_prompts(label_map, self.prompts, rng, class_ids=classes)
        ps = to_model_frame(ps, g, (g.input_size, g.input_size))
        ps.targets[:, lowres == IGNORE_INDEX] = IGNORE_INDEX
        return ps


def input_to_lowres(mask: torch.Tensor, g: SamGeometry) -> torch.Tensor:
    """Model-frame (S,S) labels -> low-res (M,M) by nearest sampling (padding stays ignored)."""
    m = F.interpolate(mask[None, None].float(), size=(g.mask_size, g.mask_size), mode="nearest-exact")
    return m[0, 0].long()


def collate(items: list[dict]) -> dict:
    out = {k: torch.stack([it[k] for it in items]) for k in ("pixel_values", "labels", "original_size")}
    out["index"] = torch.tensor([it["index"] for it in items])
    if "prompts" in items[0]:
        from sam_medft.data.prompts import collate_prompts

        sets = [it["prompts"] for it in items]
        out.update(collate_prompts(sets, max(1, max(len(s) for s in sets))))
    return out


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch: the same order in every process and after resume."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, -1))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _mix(*xs: int) -> int:
    return int(np.random.SeedSequence([x % (2**32) for x in xs]).generate_state(1)[0])


__all__ = ["SamSegmentationDataset", "ModelFrameSpec", "collate", "EpochSampler", "IGNORE_INDEX"]
