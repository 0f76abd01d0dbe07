"""Predicting a whole volume: its slices through the one prediction pipeline, reassembled.

A model trained on volumes predicts them as it was trained: the adapter's `volume` settings
(slicing axis, 2-D or 2.5-D channels) and intensity rules (one scale per volume) are applied
by the same functions the training source used (`data.volume_source`), the slices go through
`infer.pipeline.predict_images` in batches, and the label maps are put back into a volume in
canonical (RAS) order. Optional post-processing per class, for the artefacts slice-by-slice
prediction leaves: keep each class's largest 3-D connected component, fill enclosed holes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from sam_medft.config import VolumeConfig
from sam_medft.data.volume_source import scale_volume, slice_image
from sam_medft.data.volumes import Volume, axis_index, read_volume, set_plane
from sam_medft.errors import SamMedftError
from sam_medft.infer.pipeline import Predictor, predict_images

#: slices per model batch: the app predicts a shown slice with its whole batch of this size, so
#: its maps are bit for bit `predict_volume`'s (a batch's numbers can depend on its other images)
VOLUME_BATCH = 8


class VolumeSlices:
    """A scaled volume's slices as prediction inputs (picklable, for loader workers)."""

    def __init__(self, scaled: np.ndarray, settings: VolumeConfig):
        self.scaled, self.settings = scaled, settings
        self.axis = axis_index(settings.axis)

    def __len__(self) -> int:
        return int(self.scaled.shape[self.axis])

    def load(self, k: int) -> tuple[np.ndarray, None]:
        return slice_image(self.scaled, self.axis, k, self.settings.channels), None


def slicing_of(predictor: Predictor) -> VolumeConfig:
    """How the model's training volumes were sliced (a model trained on 2-D images: axial
    2-D slices, the default)."""
    return VolumeConfig(**(predictor.meta.volume or {}))


def predict_volume(predictor: Predictor, volume: Volume | str | Path | np.ndarray, *,
                   batch_size: int = VOLUME_BATCH, num_workers: int = 0, largest_component: bool = False,
                   fill_holes: bool = False) -> np.ndarray:
    """A volume (a `Volume`, a NIfTI path / DICOM series folder, or a 3-D array in RAS axis
    order, e.g. `Volume.array`) -> its label volume (class indices, uint8) of the same shape
    and order."""
    if isinstance(volume, str | Path):
        volume = read_volume(volume)
    if isinstance(volume, Volume):
        array, where = volume.array, str(volume.path)
    else:
        array, where = np.asarray(volume), "the volume array"
        if array.ndim != 3 or min(array.shape) < 1:
            raise SamMedftError(f"{where} has shape {array.shape}; a 3-D array (x, y, z in RAS "
                                "order, as Volume.array) is expected")
    settings = slicing_of(predictor)
    scaled = scale_volume(array, predictor.intensity, where)
    labels = np.zeros(array.shape, np.uint8 if len(predictor.class_names) <= 256 else np.int32)
    axis = axis_index(settings.axis)
    for done in predict_images(predictor, VolumeSlices(scaled, settings), batch_size=batch_size,
                               num_workers=num_workers):
        set_plane(labels, axis, done.index, done.labels)
    return postprocess(labels, len(predictor.class_names), largest_component=largest_component,
                       fill_holes=fill_holes)


def postprocess(labels: np.ndarray, num_classes: int, *, largest_component: bool = False,
                fill_holes: bool = False) -> np.ndarray:
    """Per foreground class: keep only its largest connected component (26-connectivity),
    then fill holes it encloses (only background voxels are filled; another class's voxels
    are never overwritten)."""
    if not (largest_component or fill_holes):
        return labels
    out = labels.copy()
    full = np.ones((3,) * labels.ndim, bool)
    for c in range(1, num_classes):
        mask = out == c
        if not mask.any():
            continue
        if largest_component:
            parts, n = ndimage.label(mask, structure=full)
            if n > 1:
                sizes = np.bincount(parts.ravel())[1:]
                keep = parts == (int(np.argmax(sizes)) + 1)
                out[mask & ~keep] = 0
                mask = keep
        if fill_holes:
            filled = ndimage.binary_fill_holes(mask)
            out[filled & (out == 0)] = c
    return out
