"""The one batched prediction pipeline: images -> model-frame batches -> the model -> results.

Every prediction goes through here: `sam-medft predict` (`predict_paths`), prompted
prediction (`predict_paths_with_prompts`), the Python API (`FineTunedSam.predict`,
`predict_proba`) and `sam-medft eval` (`iter_cases`), so what is evaluated is what is
deployed. Loader workers decode each image and bring it into the model frame with
training's sample path (`transforms.preprocess_image`: resized, rounded to uint8, padded);
the uint8 batch goes to the model's device (a quarter of the bytes of floats) and is
normalised there with training's `transforms.normalize_batch`, so a pixel reaches the model
exactly as it did in training. Then, per batch:

- without prompts (automatic mode): one forward pass; softmax and argmax on the device, so
  only the H x W label maps (and the probabilities, when asked) come back;
- with prompts (prompt modes): one encoder call embeds the whole batch, then each image's
  prompts are decoded against its own embeddings by the caller's `decode_image` (the
  objects of an image ride on the batch axis, see `infer.prompted.decode`).

Which of the two a model can do is its task's answer (`task.check_prediction`), asked
before any image is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sam_medft.config import IntensityConfig
from sam_medft.data.io import read_image, scale_intensity
from sam_medft.data.transforms import (
    ModelImage,
    SamGeometry,
    normalize_batch,
    preprocess_image,
    valid_window,
)
from sam_medft.runs import AdapterMeta
from sam_medft.tasks import Task

#: `decode_image(embeddings, original, index, extra)`: one image's prompted result
DecodeImage = Callable[[Any, tuple[int, int], int, Any], Any]


class Predictor(Protocol):
    """A fine-tuned model as the prediction code uses it (`infer.predict.FineTunedSam`): the
    pipeline and prompted decoding are written against this, below the class itself."""

    meta: AdapterMeta
    task: Task
    model: torch.nn.Module
    device: torch.device
    geometry: SamGeometry
    intensity: IntensityConfig
    multimask: bool  # prompt modes: decode SAM's 3 masks (as trained) or token 0 only
    autocast: AbstractContextManager

    @property
    def class_names(self) -> list[str]: ...

    def pixel_batch(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple]]: ...

    def embed_pixels(self, pixels: torch.Tensor) -> Any: ...

    def labels_from_pixels(self, pixels: torch.Tensor, originals: Sequence[tuple], *,
                           probs: torch.dtype | None = None
                           ) -> tuple[list[np.ndarray], list | None]: ...


class PredictInputs(Protocol):
    """What the pipeline predicts on: `load(k)` -> (HxWx3 float image in [0, 255], extra).
    `extra` travels with the image to the result (eval: the sample and its reference).
    Runs in loader workers, so it must be picklable."""

    def __len__(self) -> int: ...

    def load(self, k: int) -> tuple[np.ndarray, Any]: ...


def to_image(item: Any, intensity: IntensityConfig) -> np.ndarray:
    """A path or an array -> HxWx3 float32 in [0, 255] (the data's intensity rules)."""
    if isinstance(item, str | Path):
        return read_image(Path(item), intensity)
    return scale_intensity(np.asarray(item), intensity, source="array")


class Images:
    """Image files or arrays (`scaled`: already HxWx3 in [0, 255], as data sources and
    `to_image` give them; else scaled with the model's intensity rules)."""

    def __init__(self, items: Sequence, intensity: IntensityConfig | None = None, *,
                 scaled: bool = False):
        self.items = list(items)
        self.intensity = intensity or IntensityConfig()
        self.scaled = scaled

    def __len__(self) -> int:
        return len(self.items)

    def load(self, k: int) -> tuple[np.ndarray, None]:
        item = self.items[k]
        if self.scaled and not isinstance(item, str | Path):
            return np.asarray(item), None
        return to_image(item, self.intensity), None


class _ModelFrame(torch.utils.data.Dataset):
    """The worker side: decode, then the one preprocessing."""

    def __init__(self, inputs: PredictInputs, geometry: SamGeometry):
        self.inputs, self.geometry = inputs, geometry

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, k: int) -> tuple[int, ModelImage, Any]:
        image, extra = self.inputs.load(k)
        return k, preprocess_image(image, self.geometry), extra


@dataclass
class RawBatch:
    """A collated uint8 batch, as the loader hands it over."""

    indices: list[int]
    images: torch.Tensor  # (B, 3, S, S) uint8
    resized: torch.Tensor  # (B, 2) int64
    originals: list[tuple[int, int]]
    extras: list

    @staticmethod
    def collate(items: list[tuple[int, ModelImage, Any]]) -> RawBatch:
        return RawBatch([k for k, _, _ in items], torch.stack([m.pixels for _, m, _ in items]),
                        torch.tensor([m.resized for _, m, _ in items]),
                        [m.original for _, m, _ in items], [e for _, _, e in items])

    def pin_memory(self) -> RawBatch:
        """Called by the DataLoader (pin_memory=True): pinned pages copy without blocking."""
        self.images, self.resized = self.images.pin_memory(), self.resized.pin_memory()
        return self


@dataclass
class ModelBatch:
    """A batch ready for the model: normalised pixels on its device and who they are."""

    indices: list[int]  # positions in the inputs
    pixels: torch.Tensor  # (B, 3, S, S) float
    originals: list[tuple[int, int]]
    extras: list


def model_batches(inputs: PredictInputs, geometry: SamGeometry, normalization: str,
                  device: torch.device | str, *, batch_size: int = 8,
                  num_workers: int = 0) -> Iterator[ModelBatch]:
    """Inputs -> normalised model batches on `device`, in input order; loader workers
    decode and preprocess the next batches while the model runs."""
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        _ModelFrame(inputs, geometry), batch_size=batch_size, num_workers=num_workers,
        collate_fn=RawBatch.collate, pin_memory=device.type == "cuda")
    for raw in loader:
        images = raw.images.to(device, non_blocking=True)
        valid = valid_window(raw.resized, geometry.input_size, device)
        pixels = normalize_batch(images, valid, normalization)
        yield ModelBatch(raw.indices, pixels, raw.originals, raw.extras)


@dataclass
class Predicted:
    """One image's result."""

    index: int  # position in the inputs
    original: tuple[int, int]
    extra: Any  # what the inputs passed along
    labels: np.ndarray | None = None  # automatic: HxW class map
    probs: np.ndarray | None = None  # automatic, when asked: (C, H, W)
    decoded: Any = None  # prompts: what `decode_image` returned


def image_embeddings_of(embeddings: Any, k: int) -> Any:
    """Image k of batched embeddings (SAM: a (B,C,E,E) tensor; SAM-HQ: a tuple with the
    intermediate ViT embeddings), keeping the batch axis of 1."""
    if isinstance(embeddings, tuple):
        main, inter = embeddings
        return main[k : k + 1], [t[k : k + 1] for t in inter]
    return embeddings[k : k + 1]


def predict_images(predictor: Predictor, inputs: PredictInputs, *, batch_size: int = 8,
                   num_workers: int = 0, probs: torch.dtype | None = None,
                   decode_image: DecodeImage | None = None) -> Iterator[Predicted]:
    """Predict every input, in order (see the module). `decode_image` given: prompts are
    decoded per image from the batch's embeddings; else label maps (and `probs` in that
    dtype). The model's task refuses the wrong one before any image is read."""
    predictor.task.check_prediction(has_prompts=decode_image is not None)
    batches = model_batches(inputs, predictor.geometry, predictor.meta.normalization,
                            predictor.device, batch_size=batch_size, num_workers=num_workers)
    return _predict(predictor, batches, probs, decode_image)


def _predict(predictor: Predictor, batches: Iterator[ModelBatch], probs: torch.dtype | None,
             decode_image: DecodeImage | None) -> Iterator[Predicted]:
    for batch in batches:
        rows = zip(batch.indices, batch.originals, batch.extras, strict=True)
        if decode_image is None:
            labels, p = predictor.labels_from_pixels(batch.pixels, batch.originals, probs=probs)
            for k, (i, original, extra) in enumerate(rows):
                yield Predicted(i, original, extra, labels=labels[k],
                                probs=None if p is None else p[k])
        else:
            emb = predictor.embed_pixels(batch.pixels)
            for k, (i, original, extra) in enumerate(rows):
                out = decode_image(image_embeddings_of(emb, k), original, i, extra)
                yield Predicted(i, original, extra, decoded=out)


__all__ = [
    "DecodeImage",
    "Images",
    "ModelBatch",
    "PredictInputs",
    "Predicted",
    "Predictor",
    "image_embeddings_of",
    "model_batches",
    "predict_images",
    "to_image",
]
