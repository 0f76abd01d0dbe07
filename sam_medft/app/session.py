"""The app's state and model calls, without any user-interface code (so it is testable alone).

`Engine` holds the loaded runs (one, or two to compare side by side) and a small cache of
image embeddings: the expensive encoder pass runs once per image/slice and model, and every
click after that only runs SAM's light prompt decoder. `Session` is one person's work: the
open scan, the slice, the prompts per class (one object per class: its positive/negative
points and its box), the undo history, and painted corrections.

The label map of a slice is computed with the package's own inference functions
(`infer.prompted.paint_prompts`, `FineTunedSam.labels_from_pixels`) on the image as
`predict` reads it, so the app's map equals `sam_medft.load(run).predict(image, prompts)`
for the same prompts; corrections are then painted over it. On a volume, automatic mode
predicts the shown slice together with the rest of its `predict_volume` batch (the slices
`VOLUME_BATCH * b ... VOLUME_BATCH * (b + 1) - 1`, through the same pipeline and inputs), so
the app's label volume equals `sam_medft.load(run).predict_volume(path)` bit for bit, and
the neighbouring slices are then shown at once.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam_medft.app.scan import Scan, open_scan
from sam_medft.config import VolumeConfig
from sam_medft.errors import SamMedftError
from sam_medft.infer.pipeline import predict_images
from sam_medft.infer.predict import FineTunedSam
from sam_medft.infer.prompted import check_prompts, embed_image, paint_prompts
from sam_medft.infer.volume_inference import VOLUME_BATCH, VolumeSlices, slicing_of

CACHE_ITEMS = 32  # embeddings kept per app (a vit-b embedding is 4 MiB in fp32)
NO_CORRECTION = -1  # corrections map: this pixel keeps the model's label

CLICK_MODES = ("positive point", "negative point", "box (two corners)")


def is_prompted(predictor: FineTunedSam) -> bool:
    return predictor.meta.prompt_mode != "none"


class SliceRange:
    """Slices start..stop-1 of a volume's prediction inputs (one `predict_volume` batch)."""

    def __init__(self, slices: VolumeSlices, start: int, stop: int):
        self.slices, self.start, self.stop = slices, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self, k: int) -> tuple[np.ndarray, None]:
        return self.slices.load(self.start + k)


class Engine:
    """The models of this app and their per-slice embedding cache (shared by sessions)."""

    def __init__(self, predictors: list[FineTunedSam], names: list[str],
                 cache_items: int = CACHE_ITEMS):
        if not predictors:
            raise SamMedftError("the app needs a run to load")
        self.predictors, self.names = predictors, names
        self.cache_items = cache_items
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.encoder_calls = 0  # how many embeddings were computed (the cache's test)

    @property
    def main(self) -> FineTunedSam:
        return self.predictors[0]

    @property
    def slicing(self) -> VolumeConfig:
        """How volumes are sliced in the app: as the main run was trained (`predict_volume`)."""
        return slicing_of(self.main)

    def model_image(self, m: int, scan: Scan, k: int) -> np.ndarray:
        """Slice k as model m sees it (its intensity rules; on a volume its 2-D/2.5-D
        channels, across the scan's axis)."""
        predictor = self.predictors[m]
        channels = slicing_of(predictor).channels if scan.volume is not None else None
        return scan.model_image(k, predictor.intensity, channels)

    def _cached(self, key: tuple, make):
        with self._lock:  # the page runs handlers in threads
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = make()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_items:
                self._cache.popitem(last=False)
        return value

    def embeddings(self, m: int, session: Session, k: int) -> tuple[Any, tuple[int, int]]:
        """Model m's image embeddings of slice k, computed once and cached."""
        predictor = self.predictors[m]

        def make():
            self.encoder_calls += 1
            return embed_image(predictor, self.model_image(m, session.scan, k))

        return self._cached(("emb", m, session.scan_key, k), make)

    def automatic(self, m: int, session: Session, k: int) -> np.ndarray:
        """Model m's prompt-free label map of slice k (cached; a volume's by batches, see
        the module)."""
        predictor, scan = self.predictors[m], session.scan
        if scan.volume is not None:
            return self._volume_batch(m, session, k - k % VOLUME_BATCH)[k % VOLUME_BATCH]

        def make():
            image = self.model_image(m, scan, k)
            labels, _ = predictor.labels_from_pixels(*predictor.pixel_batch([image]))
            return labels[0]

        return self._cached(("auto", m, session.scan_key, k), make)

    def _volume_batch(self, m: int, session: Session, start: int) -> list[np.ndarray]:
        """Model m's label maps of the volume slices start.. of one `predict_volume` batch."""
        predictor, scan = self.predictors[m], session.scan
        settings = VolumeConfig(axis=scan.slicing.axis, channels=slicing_of(predictor).channels)

        def make():
            inputs = SliceRange(VolumeSlices(scan.scaled_volume(predictor.intensity), settings),
                                start, min(start + VOLUME_BATCH, len(scan)))
            return [done.labels for done in predict_images(predictor, inputs,
                                                           batch_size=VOLUME_BATCH)]

        return self._cached(("auto-volume", m, session.scan_key, start), make)

    def model_labels(self, m: int, session: Session, k: int | None = None) -> np.ndarray:
        """Model m's HxW uint8 class map of a slice: automatic, or from the slice's prompts
        (all background while it has none)."""
        k = session.slice if k is None else k
        predictor = self.predictors[m]
        if not is_prompted(predictor):
            return self.automatic(m, session, k)
        entries = session.entries(k)
        if not entries:
            return np.zeros(session.scan.shape, dtype=np.uint8)
        checked = check_prompts(entries, session.scan.shape, predictor.class_names)
        emb, original = self.embeddings(m, session, k)
        return paint_prompts(predictor, emb, original, checked)

    def labels(self, session: Session, k: int | None = None) -> np.ndarray:
        """The main model's label map with this session's corrections painted over it."""
        k = session.slice if k is None else k
        labels = self.model_labels(0, session, k)
        fix = session.state(k).corrections
        if fix is None:
            return labels
        return np.where(fix != NO_CORRECTION, fix, labels).astype(np.uint8)


def _digest(path: Path) -> str:
    """What the embedding cache knows a scan by: its bytes (a folder: its files' bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class SliceState:
    """One slice's prompts (class id -> its object), undo history and corrections."""

    objects: dict[int, dict] = field(default_factory=dict)
    corner: tuple[float, float] | None = None  # the first corner of a box being drawn
    history: list[tuple] = field(default_factory=list)
    corrections: np.ndarray | None = None  # int16, NO_CORRECTION where not painted

    def snapshot(self) -> tuple:
        return (copy.deepcopy(self.objects), self.corner,
                None if self.corrections is None else self.corrections.copy())


@dataclass
class Session:
    """One person's open scan and work on it."""

    scan: Scan | None = None
    scan_key: str = ""
    slice: int = 0
    slices: dict[int, SliceState] = field(default_factory=dict)

    def open(self, path: str | Path, name: str | None = None,
             slicing: VolumeConfig | None = None) -> None:
        """Open a file or DICOM series folder, volumes sliced by `slicing` (an unreadable one
        raises and leaves the current scan as it was)."""
        scan = open_scan(path, name, slicing)
        self.scan, self.scan_key, self.slice, self.slices = scan, _digest(Path(path)), 0, {}

    def require_scan(self) -> Scan:
        if self.scan is None:
            raise SamMedftError("open an image first (PNG, TIFF, DICOM slice or series, "
                                "NIfTI volume)")
        return self.scan

    def state(self, k: int | None = None) -> SliceState:
        k = self.slice if k is None else k
        return self.slices.setdefault(k, SliceState())

    def go_to(self, k: int) -> None:
        scan = self.require_scan()
        if not 0 <= k < len(scan):
            raise SamMedftError(f"slice {k} is outside 0..{len(scan) - 1}")
        self.slice = k

    # ---- prompts -------------------------------------------------------------------------
    def click(self, x: float, y: float, mode: str, class_id: int) -> None:
        """A click on the image (original pixels): a point, or a corner of a box."""
        scan = self.require_scan()
        h, w = scan.shape
        if not (0 <= x < w and 0 <= y < h):
            raise SamMedftError(f"the click ({x}, {y}) is outside the {w}x{h} image")
        if mode not in CLICK_MODES:
            raise SamMedftError(f"unknown click mode {mode!r}; use one of {', '.join(CLICK_MODES)}")
        st = self.state()
        if mode == CLICK_MODES[2] and st.corner is not None and (
                st.corner[0] == x or st.corner[1] == y):
            raise SamMedftError("a box needs two corners that differ in x and in y: click "
                                "the corner opposite the first one")
        st.history.append(st.snapshot())
        if mode == CLICK_MODES[2]:
            if st.corner is None:
                st.corner = (x, y)
                return
            (x0, y0), st.corner = st.corner, None
            self._object(class_id)["box"] = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
            return
        obj = self._object(class_id)
        obj["points"].append([x, y])
        obj["point_labels"].append(1 if mode == CLICK_MODES[0] else 0)

    def set_box(self, box: list[float], class_id: int) -> None:
        """A box drawn in one gesture (x0, y0, x1, y1 in original pixels)."""
        self.require_scan()
        st = self.state()
        st.history.append(st.snapshot())
        st.corner = None
        self._object(class_id)["box"] = [float(v) for v in box]

    def _object(self, class_id: int) -> dict:
        return self.state().objects.setdefault(
            class_id, {"points": [], "point_labels": [], "box": None})

    def undo(self) -> bool:
        """Undo the last click, box or correction of this slice; False if none is left."""
        st = self.state()
        if not st.history:
            return False
        st.objects, st.corner, st.corrections = st.history.pop()
        return True

    def clear(self) -> None:
        """Remove this slice's prompts and corrections (undoable)."""
        st = self.state()
        st.history.append(st.snapshot())
        st.objects, st.corner, st.corrections = {}, None, None

    def entries(self, k: int | None = None) -> list[dict]:
        """This slice's prompts as `predict(image, prompts)` takes them."""
        out = []
        for class_id, obj in sorted(self.state(k).objects.items()):
            entry: dict[str, Any] = {"label": class_id}
            if obj["box"] is not None:
                entry["box"] = list(obj["box"])
            if obj["points"]:
                entry["points"] = [list(p) for p in obj["points"]]
                entry["point_labels"] = list(obj["point_labels"])
            if len(entry) > 1:
                out.append(entry)
        return out

    # ---- corrections ---------------------------------------------------------------------
    def correct(self, painted: np.ndarray) -> None:
        """Paint corrections: an HxW int map, a class id where painted, NO_CORRECTION else."""
        scan = self.require_scan()
        if painted.shape != scan.shape:
            raise SamMedftError(f"corrections of shape {painted.shape} do not match the "
                                f"{scan.shape} slice")
        st = self.state()
        st.history.append(st.snapshot())
        base = (np.full(scan.shape, NO_CORRECTION, np.int16) if st.corrections is None
                else st.corrections.copy())
        st.corrections = np.where(painted != NO_CORRECTION, painted, base).astype(np.int16)


__all__ = ["CLICK_MODES", "NO_CORRECTION", "Engine", "Session", "SliceState", "is_prompted"]
