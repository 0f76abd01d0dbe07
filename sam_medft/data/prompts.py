"""Prompt simulation (points, boxes, both) for SAM training, evaluation and inference.

SAM is interactive: it segments one object per prompt. Training it honestly therefore needs one
prompt set per *object* (connected component of one class) with that object's own mask as the
target, never the union of all boxes of an image (the reference study's box mode did that).
The HF `SamModel` carries several prompt sets of one image on its `point_batch` axis, so an image
trains all its objects at once; `collate_prompts` pads a batch to a common `point_batch` and says
which slots are real (`prompt_valid`) so the loss can ignore the padding.

Coordinate convention (the one segment-anything and MedSAM use): x is the column, y the row, in
pixel *index* units of the original image. A point at (x, y) is pixel (row y, column x); a box
is `[x_min, y_min, x_max, y_max]` of the object's pixel indices, i.e. x1, y1 are *inclusive*
(the last column/row of the object, not one past it). Moving to the model frame only scales
(`SamGeometry.coords_to_model`, segment-anything's `ResizeLongestSide.apply_coords`); the prompt
encoder then adds 0.5 to land on pixel centres. Seen in the resized image a box therefore ends
`scale - 1` pixels before the object's last resized pixel (a sub-pixel offset when downscaling)
which is exactly what the pretrained SAM checkpoints saw during their training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import ValidationError
from scipy import ndimage

from sam_medft.config import PromptConfig
from sam_medft.data.transforms import IGNORE_INDEX, SamGeometry
from sam_medft.errors import SamMedftError

PromptMode = Literal["point", "box", "hybrid"]
PAD_LABEL = -10  # SamModel's "padding point" label: the prompt encoder zeroes its embedding
PROMPT_KEYS = ("input_points", "input_labels", "input_boxes")  # the collated keys SamModel takes


# ---- settings and the prompt container ---------------------------------------------------------
def _recipe_default(name: str) -> Any:
    """`prompt.<name>`'s default in the recipe schema: the one home of every default."""
    return PromptConfig.model_fields[name].default


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are simulated from a label map (one prompt set per object and class).

    `n_points` positive points per object, drawn uniformly among the object's most interior
    pixels (top `interior_fraction` of its distance-transform values); `n_negative` negative
    points just outside the object (see `simulate_prompts`); `box_jitter` moves every box side
    independently by U(-j, j) x the box extent, in or out; objects smaller than
    `min_object_area` pixels are ignored; at most `max_objects_per_image` objects are kept
    (None: all). `connectivity` 2 = 8-neighbourhood, 1 = 4-neighbourhood.
    The fields shared with the recipe's `prompt:` section take their defaults and ranges from
    `PromptConfig` (built from a recipe by `tasks.prompted.prompt_settings`).
    """

    mode: PromptMode = "box"  # the recipe's default is "none": no prompts to simulate
    n_points: int = _recipe_default("n_points")
    n_negative: int = _recipe_default("n_negative")
    interior_fraction: float = _recipe_default("interior_fraction")
    box_jitter: float = _recipe_default("box_jitter")
    max_objects_per_image: int | None = _recipe_default("max_objects_per_image")
    min_object_area: int = 1
    connectivity: int = 2

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, fix: str) -> SamMedftError:
            return SamMedftError(f"prompts.{name}={value!r} is invalid: {fix}")

        if self.mode not in get_args(PromptMode):
            raise bad("mode", self.mode, "use 'point', 'box' or 'hybrid'")
        # the shared ranges are the schema's; box mode has no points, None keeps all objects
        shared = {"n_negative": self.n_negative, "interior_fraction": self.interior_fraction,
                  "box_jitter": self.box_jitter}
        if self.mode != "box":
            shared["n_points"] = self.n_points
        if self.max_objects_per_image is not None:
            shared["max_objects_per_image"] = self.max_objects_per_image
        try:
            checked = PromptConfig(**shared)
        except ValidationError as e:
            first = e.errors()[0]
            fix = first["msg"].replace("Input should be", "it should be")
            raise bad(str(first["loc"][0]), first["input"], fix) from None
        for name in shared:  # as the schema parsed them ("2" -> 2)
            object.__setattr__(self, name, getattr(checked, name))
        if self.min_object_area < 1:
            raise bad("min_object_area", self.min_object_area, "use 1 or more pixels")
        if self.connectivity not in (1, 2):
            raise bad("connectivity", self.connectivity, "use 1 (4-neighbours) or 2 (8)")

    @property
    def uses_box(self) -> bool:
        """Whether each prompt set carries a box (box and hybrid modes)."""
        return self.mode != "point"

    @property
    def points_per_object(self) -> int:
        """k: positive + negative points per prompt set (0 in box mode)."""
        return 0 if self.mode == "box" else self.n_points + self.n_negative


@dataclass
class PromptSet:
    """The N prompt sets of one image (one per object), in one coordinate frame.

    Original frame (`simulate_prompts`): numpy; `targets` (N,H,W) bool, each object's own mask.
    Model frame (`to_model_frame`): torch; coordinates scaled to the model input, `targets`
    (N,h,w) int64 on the low-res grid with IGNORE_INDEX in the padding. `points` (N,k,2) x,y
    float32 (k = 0 in box mode), `point_labels` (N,k) int64 (1 positive, 0 negative, -10
    padding), `boxes` (N,4) x0,y0,x1,y1 float32 or None (point mode), `targets` None for user
    prompts at inference, `class_ids` (N,) int64.
    """

    points: np.ndarray | torch.Tensor
    point_labels: np.ndarray | torch.Tensor
    boxes: np.ndarray | torch.Tensor | None
    targets: np.ndarray | torch.Tensor | None
    class_ids: np.ndarray | torch.Tensor
    frame: Literal["original", "model"] = "original"

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])


# ---- simulation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledObject:
    """One connected component of one class: `components == index` within `bbox`."""

    class_id: int
    components: np.ndarray  # (H, W) int, scipy's component labels of this class (shared)
    index: int
    bbox: tuple[slice, slice]  # rows, cols of the tight bounding box
    area: int

    def crop(self) -> np.ndarray:
        """The object's mask cropped to its bounding box (cheap: no full-image pass)."""
        return self.components[self.bbox] == self.index

    def mask(self) -> np.ndarray:
        """The object's full-image (H, W) bool mask."""
        full = np.zeros(self.components.shape, dtype=bool)
        full[self.bbox] = self.crop()
        return full


def find_objects(
    label_map: np.ndarray, settings: PromptSettings, class_ids: Sequence[int] | None = None
) -> list[LabelledObject]:
    """Connected components of every class, each class labelled on its own mask so touching
    objects of different classes stay separate; sorted by class, then scipy's label order;
    components smaller than `settings.min_object_area` are dropped."""
    structure = ndimage.generate_binary_structure(2, settings.connectivity)
    classes = np.unique(label_map[label_map > 0]) if class_ids is None else class_ids
    objects: list[LabelledObject] = []
    for c in sorted(int(c) for c in classes):
        comps, n = ndimage.label(label_map == c, structure=structure)
        if n == 0:
            continue
        areas = np.bincount(comps.ravel(), minlength=n + 1)
        for i, sl in enumerate(ndimage.find_objects(comps), start=1):
            if sl is not None and areas[i] >= settings.min_object_area:
                objects.append(LabelledObject(c, comps, i, sl, int(areas[i])))
    return objects


def simulate_prompts(
    label_map: np.ndarray,
    settings: PromptSettings,
    rng: np.random.Generator,
    class_ids: Sequence[int] | None = None,
) -> PromptSet:
    """One prompt set per object (connected component) and class of an integer label map.

    `class_ids` restricts the classes (default: every non-zero value present). With more
    objects than `settings.max_objects_per_image`, a random subset (drawn from `rng`, kept in
    class/component order) is used, so every object is seen over the epochs. Positive points
    are drawn uniformly from the object's most interior pixels (top `interior_fraction` of its
    Euclidean distance transform, the image border counting as background, at least the single
    most interior pixel). Negative points are drawn uniformly from the pixels *not* in the object
    inside its box grown by half its extent per side (where a user would click to say "not
    this"; a touching object of another class is a fair negative); if that neighbourhood is all
    object, anywhere outside the object; if the object fills the image they become padding
    (label -10). Boxes are the tight inclusive `[x_min, y_min, x_max, y_max]` with each side moved
    by U(-j, j) x the pixel extent along its axis, clipped to the image (0..W-1, 0..H-1); if two
    sides cross they meet at their midpoint. Same `rng` state, same prompts.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(
            f"label_map must be a 2-D integer array, got {label_map.dtype} {label_map.shape}"
        )
    h, w = label_map.shape
    objects = find_objects(label_map, settings, class_ids)
    cap = settings.max_objects_per_image
    if cap is not None and len(objects) > cap:
        keep = np.sort(rng.choice(len(objects), size=cap, replace=False))
        objects = [objects[i] for i in keep]

    k = settings.points_per_object
    n = len(objects)
    points = np.zeros((n, k, 2), np.float32)
    labels = np.zeros((n, k), np.int64)
    boxes = np.zeros((n, 4), np.float32) if settings.mode != "point" else None
    targets = np.zeros((n, h, w), dtype=bool)
    for i, obj in enumerate(objects):
        targets[i] = obj.mask()
        if settings.mode != "box":
            pos = _interior_points(obj, settings.n_points, settings.interior_fraction, rng)
            neg, neg_labels = _negative_points(obj, targets[i], settings.n_negative, rng)
            points[i] = np.concatenate([pos, neg])
            labels[i] = np.concatenate([np.ones(settings.n_points, np.int64), neg_labels])
        if boxes is not None:
            boxes[i] = _jittered_box(obj, settings.box_jitter, (h, w), rng)
    return PromptSet(
        points, labels, boxes, targets, np.array([o.class_id for o in objects], dtype=np.int64)
    )


def _interior_points(
    obj: LabelledObject, n: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """n x,y points uniform among the object's top-`fraction` distance-transform pixels."""
    rows, cols = obj.bbox
    crop = obj.crop()
    dist = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]  # border = background
    values = np.sort(dist[crop])
    threshold = values[values.size - max(1, math.ceil(fraction * values.size))]
    candidates = np.argwhere(crop & (dist >= threshold))  # (m, 2) row, col
    pick = candidates[rng.choice(len(candidates), size=n, replace=n > len(candidates))]
    return np.stack([pick[:, 1] + cols.start, pick[:, 0] + rows.start], axis=1).astype(np.float32)


def _negative_points(
    obj: LabelledObject, mask: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n x,y points outside the object, preferring its box neighbourhood; labels 0 (or -10)."""
    if n == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    h, w = mask.shape
    rows, cols = obj.bbox
    gy = max(1, (rows.stop - rows.start) // 2)
    gx = max(1, (cols.stop - cols.start) // 2)
    near = np.zeros_like(mask)
    near[
        max(0, rows.start - gy) : min(h, rows.stop + gy),
        max(0, cols.start - gx) : min(w, cols.stop + gx),
    ] = True
    candidates = np.argwhere(near & ~mask)
    if len(candidates) == 0:
        candidates = np.argwhere(~mask)
    if len(candidates) == 0:
        return np.zeros((n, 2), np.float32), np.full(n, PAD_LABEL, np.int64)
    pick = candidates[rng.choice(len(candidates), size=n, replace=n > len(candidates))]
    return pick[:, ::-1].astype(np.float32), np.zeros(n, np.int64)


def _jittered_box(
    obj: LabelledObject, jitter: float, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    rows, cols = obj.bbox
    box = np.array([cols.start, rows.start, cols.stop - 1, rows.stop - 1], np.float64)
    extent = np.array([cols.stop - cols.start, rows.stop - rows.start] * 2, np.float64)
    box += rng.uniform(-jitter, jitter, size=4) * extent
    box = np.clip(box, 0, [shape[1] - 1, shape[0] - 1] * 2)
    for lo, hi in ((0, 2), (1, 3)):
        if box[lo] > box[hi]:
            box[lo] = box[hi] = (box[lo] + box[hi]) / 2
    return box.astype(np.float32)


# ---- model frame and batching -------------------------------------------------------------------
def to_model_frame(
    prompt_set: PromptSet, geometry: SamGeometry, original_size: tuple[int, int]
) -> PromptSet:
    """Original-frame prompts -> the model frame: coordinates resized like the image (padding
    is bottom/right, so no offset), targets to the low-res grid (0/1, IGNORE_INDEX padding)."""
    if prompt_set.frame != "original":
        raise ValueError("prompt set is already in the model frame")
    original_size = (int(original_size[0]), int(original_size[1]))
    targets = None
    if prompt_set.targets is not None:
        t = np.asarray(prompt_set.targets)
        if t.shape[1:] != original_size:
            raise ValueError(f"targets are {t.shape[1:]}, original_size is {original_size}")
        m = geometry.mask_size
        targets = (
            torch.stack([geometry.mask_to_lowres(x.astype(np.int64)) for x in t])
            if len(t)
            else torch.zeros((0, m, m), dtype=torch.int64)
        )
    boxes = prompt_set.boxes
    return PromptSet(
        points=geometry.coords_to_model(prompt_set.points, original_size),
        point_labels=torch.as_tensor(np.asarray(prompt_set.point_labels), dtype=torch.int64),
        boxes=None if boxes is None else geometry.coords_to_model(boxes, original_size),
        targets=targets,
        class_ids=torch.as_tensor(np.asarray(prompt_set.class_ids), dtype=torch.int64),
        frame="model",
    )


def collate_prompts(
    prompt_sets: list[PromptSet], max_objects: int, *, static: bool = False
) -> dict[str, torch.Tensor]:
    """Pad model-frame prompt sets of B images to one `point_batch` P for SamModel.

    P = max N in the batch (at least 1), or `max_objects` with `static=True` (fixed shapes for
    torch.compile / CUDA graphs). Padded slots get points (0,0) with label -10 (ignored by the
    prompt encoder), a zero box and IGNORE_INDEX targets; `prompt_valid` is False there, so the
    loss must skip them (their masks are finite but meaningless). Keys: `input_points`
    (B,P,k,2) and `input_labels` (B,P,k) unless box mode, `input_boxes` (B,P,4) unless point
    mode, `targets` (B,P,h,w) int64 when the sets carry targets, `prompt_valid` (B,P) bool,
    `class_ids` (B,P) int64 (0 in padded slots). Feed `{k: batch[k] for k in PROMPT_KEYS if k
    in batch}` to the model. Sets with different k are padded with -10 points.
    """
    if not prompt_sets:
        raise ValueError("collate_prompts needs at least one prompt set")
    if any(ps.frame != "model" for ps in prompt_sets):
        raise ValueError("collate_prompts needs model-frame prompt sets (use to_model_frame)")
    sizes = [len(ps) for ps in prompt_sets]
    if max(sizes) > max_objects:
        raise ValueError(
            f"an image has {max(sizes)} prompt sets, more than max_objects="
            f"{max_objects}; cap them with PromptSettings.max_objects_per_image"
        )
    with_boxes = {ps.boxes is not None for ps in prompt_sets}
    with_targets = {ps.targets is not None for ps in prompt_sets}
    if len(with_boxes) > 1 or len(with_targets) > 1:
        raise ValueError(
            "cannot batch prompt sets with and without boxes/targets together; "
            "group them (see prompt_sets_from_entries)"
        )
    b, p = len(prompt_sets), max_objects if static else max(1, max(sizes))
    k = max(int(ps.points.shape[1]) for ps in prompt_sets)
    valid = torch.zeros((b, p), dtype=torch.bool)
    class_ids = torch.zeros((b, p), dtype=torch.int64)
    points = torch.zeros((b, p, k, 2), dtype=torch.float32)
    labels = torch.full((b, p, k), PAD_LABEL, dtype=torch.int64)
    boxes = torch.zeros((b, p, 4), dtype=torch.float32)
    targets = None
    if with_targets == {True}:
        h, w = prompt_sets[0].targets.shape[-2:]
        targets = torch.full((b, p, h, w), IGNORE_INDEX, dtype=torch.int64)
    for i, ps in enumerate(prompt_sets):
        n, kk = len(ps), int(ps.points.shape[1])
        valid[i, :n] = True
        class_ids[i, :n] = ps.class_ids
        points[i, :n, :kk] = ps.points
        labels[i, :n, :kk] = ps.point_labels
        if ps.boxes is not None:
            boxes[i, :n] = ps.boxes
        if targets is not None:
            targets[i, :n] = ps.targets
    out: dict[str, torch.Tensor] = {"prompt_valid": valid, "class_ids": class_ids}
    if k > 0:
        out["input_points"], out["input_labels"] = points, labels
    if with_boxes == {True}:
        out["input_boxes"] = boxes
    if targets is not None:
        out["targets"] = targets
    return out


# ---- interactive refinement ---------------------------------------------------------------------
def corrective_click(
    pred: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[float, float, int] | None:
    """The next click of iterative refinement (SAM / RITM click simulation): at the most
    interior pixel of the largest error region (8-connected), positive (1) if that region is
    missed object (false negative), negative (0) if it is a false positive. Ties of the
    distance maximum are broken by `rng`. Returns (x, y, label), or None when pred == target.
    """
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must be equal 2-D shapes")
    structure = ndimage.generate_binary_structure(2, 2)
    best: tuple[int, np.ndarray, int] | None = None  # (area, region mask, label)
    for error, label in ((target & ~pred, 1), (pred & ~target, 0)):
        comps, n = ndimage.label(error, structure=structure)
        if n == 0:
            continue
        areas = np.bincount(comps.ravel())[1:]
        i = int(np.argmax(areas))
        if best is None or areas[i] > best[0]:
            best = (int(areas[i]), comps == i + 1, label)
    if best is None:
        return None
    _, region, label = best
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    peaks = np.argwhere(dist == dist.max())
    y, x = peaks[rng.integers(len(peaks))]
    return float(x), float(y), label


# ---- user prompts (ground-truth-free inference) ---------------------------------------------
_ENTRY_KEYS = {"label", "box", "points", "point_labels"}


def load_prompts_file(
    path: str | Path,
    images: dict[str, tuple[int, int]],
    *,
    class_names: Sequence[str] | None = None,
) -> dict[str, list[dict]]:
    """Read and check a prompts.json for inference without ground truth.

    Format: `{"image.png": [{"label": 1, "box": [x0, y0, x1, y1]}, {"label": "tumour",
    "points": [[x, y], ...], "point_labels": [1, 0]}]}` in original pixel coordinates (x =
    column, y = row); `images` maps the image names to (height, width). `class_names` (index =
    class id, 0 = background) turns class names into ids and checks ids; without it names stay
    strings. Returns per image a list of `{"label", "box" (list or None), "points",
    "point_labels"}` (point_labels default to 1). Every mistake raises SamMedftError naming the
    file, the image and the value.
    """
    path = Path(path)
    if not path.is_file():
        raise SamMedftError(f"prompts file {path} does not exist; pass the path of a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SamMedftError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: "
            f"{e.msg}; fix the syntax there"
        ) from None
    except UnicodeDecodeError:
        raise SamMedftError(f"{path} is not UTF-8 text; save it as UTF-8 JSON") from None
    except (ValueError, RecursionError) as e:  # a number of > 4300 digits, absurd nesting
        raise SamMedftError(
            f"{path}: not a prompts file ({type(e).__name__}: {str(e)[:80]}); write "
            '{"image.png": [{"label": 1, "box": [x0, y0, x1, y1]}]}'
        ) from None
    if not isinstance(data, dict):
        raise SamMedftError(
            f"{path}: the top level must be an object mapping image names to "
            f"lists of prompts, got {type(data).__name__}"
        )
    out: dict[str, list[dict]] = {}
    for name, entries in data.items():
        if name not in images:
            known = sorted(images)
            shown = ", ".join(known[:5]) + (
                f", ... ({len(known)} in all)" if len(known) > 5 else ""
            )
            raise SamMedftError(
                f"{path}: unknown image {name!r}; known images: "
                f"{shown or '(none)'}. Use the image file names as keys"
            )
        if not isinstance(entries, list):
            raise SamMedftError(f"{path}: image {name!r} needs a list of prompts, got {entries!r}")
        where = f"{path}: image {name!r}"
        out[name] = [
            check_entry(e, f"{where}, prompt {j}", images[name], class_names)
            for j, e in enumerate(entries)
        ]
    return out


def check_entry(
    entry: Any, where: str, size: tuple[int, int], class_names: Sequence[str] | None
) -> dict:
    """One prompt entry (`{"label", "box", "points", "point_labels"}`, from prompts.json or the
    Python API) checked against the image size and classes -> the normalised entry; `where`
    names it in the messages."""
    if not isinstance(entry, dict):
        raise SamMedftError(
            f"{where}: a prompt must be an object like "
            f'{{"label": 1, "box": [x0, y0, x1, y1]}}, got {entry!r}'
        )
    unknown = sorted(set(entry) - _ENTRY_KEYS, key=repr)  # keys of any type (Python API)
    if unknown:
        raise SamMedftError(
            f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(_ENTRY_KEYS)}"
        )
    if "label" not in entry:
        raise SamMedftError(f'{where}: missing "label" (a class id >= 1 or a class name)')
    label = _check_label(entry["label"], where, class_names)
    if "point_labels" in entry and "points" not in entry:
        raise SamMedftError(f'{where}: "point_labels" given without "points"; add the points')
    if "box" not in entry and "points" not in entry:
        raise SamMedftError(f'{where}: give a "box" [x0, y0, x1, y1] and/or "points" [[x, y], ...]')
    box = None if "box" not in entry else check_box(entry["box"], size, where)
    points: list[list[float]] = []
    point_labels: list[int] = []
    if "points" in entry:
        raw = entry["points"]
        if not isinstance(raw, list) or not raw:
            raise SamMedftError(
                f'{where}: "points" must be a non-empty list of [x, y], got {raw!r}'
            )
        points = [check_point(p, size, where) for p in raw]
        point_labels = entry.get("point_labels", [1] * len(points))
        if (
            not isinstance(point_labels, list)
            or len(point_labels) != len(points)
            or any(type(v) is not int or v not in (0, 1) for v in point_labels)
        ):
            raise SamMedftError(
                f'{where}: "point_labels" {point_labels!r} must be a list of '
                f"{len(points)} values, 1 (object) or 0 (not object)"
            )
    return {"label": label, "box": box, "points": points, "point_labels": point_labels}


def _check_label(label: Any, where: str, class_names: Sequence[str] | None) -> int | str:
    if isinstance(label, str) and label:
        if class_names is None:
            return label
        if label in list(class_names)[1:]:
            return list(class_names).index(label)
        raise SamMedftError(
            f"{where}: unknown class name {label!r}; known classes: {list(class_names)[1:]}"
        )
    if type(label) is int and label >= 1:
        if class_names is not None and label >= len(class_names):
            raise SamMedftError(
                f"{where}: label {label} is out of range; the model has classes "
                f"1..{len(class_names) - 1}"
            )
        return label
    raise SamMedftError(
        f"{where}: label {label!r} must be a class id >= 1 (0 is background) or a class name"
    )


def _finite(v: Any) -> bool:
    """A JSON number usable as a coordinate (an int too big for a float is not)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _numbers(value: Any, n: int, where: str, what: str, form: str) -> list[float]:
    ok = isinstance(value, (list, tuple)) and len(value) == n and all(_finite(v) for v in value)
    if not ok:
        raise SamMedftError(f"{where}: {what} {value!r} must be {n} finite numbers {form}")
    return [float(v) for v in value]


def check_box(value: Any, size: tuple[int, int] | None, where: str) -> list[float]:
    """A box [x0, y0, x1, y1] with x0 < x1, y0 < y1 inside a (height, width) image (0..W, 0..H)."""
    x0, y0, x1, y1 = _numbers(value, 4, where, "box", "[x0, y0, x1, y1]")
    if x1 <= x0 or y1 <= y0:
        raise SamMedftError(
            f"{where}: box {value!r} needs x0 < x1 and y0 < y1 (order: left, top, right, bottom)"
        )
    if size is not None:
        h, w = size
        if min(x0, y0) < 0 or x1 > w or y1 > h:
            raise SamMedftError(
                f"{where}: box {value!r} lies outside the {w}x{h} (width x "
                f"height) image; use 0 <= x <= {w}, 0 <= y <= {h}"
            )
    return [x0, y0, x1, y1]


def check_point(value: Any, size: tuple[int, int] | None, where: str) -> list[float]:
    """A point [x, y] inside a (height, width) image (0 <= x < W, 0 <= y < H)."""
    x, y = _numbers(value, 2, where, "point", "[x, y]")
    if size is not None:
        h, w = size
        if not (0 <= x < w and 0 <= y < h):
            raise SamMedftError(
                f"{where}: point {value!r} lies outside the {w}x{h} (width x "
                f"height) image; use 0 <= x < {w}, 0 <= y < {h}"
            )
    return [x, y]


def _split_numbers(text: str, n: int, flag: str, form: str) -> list[float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != n:
            raise ValueError
        return [float(p) for p in parts]
    except ValueError:
        raise SamMedftError(f"{flag} {text!r} must be {n} comma-separated numbers {form}") from None


def parse_box(
    text: str, size: tuple[int, int] | None = None, *, flag: str = "--box"
) -> list[float]:
    """A CLI box "x0,y0,x1,y1" (original pixels), checked like the prompts file."""
    return check_box(_split_numbers(text, 4, flag, "x0,y0,x1,y1"), size, flag)


def parse_point(
    text: str, size: tuple[int, int] | None = None, *, flag: str = "--point"
) -> list[float]:
    """A CLI point "x,y" (original pixels), checked like the prompts file."""
    return check_point(_split_numbers(text, 2, flag, "x,y"), size, flag)


def prompt_sets_from_entries(entries: list[dict]) -> list[tuple[list[int], PromptSet]]:
    """Checked user prompts of one image -> original-frame PromptSets without targets.

    SamModel cannot mix "has a box" and "has no box" within one forward pass, so entries are
    grouped by kind (box only, points only, both); each group is one forward pass and comes
    with the indices of its entries. Points are padded to the group's longest list with -10.
    Labels must already be class ids (pass `class_names` to `load_prompts_file`).
    """
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, e in enumerate(entries):
        if not isinstance(e["label"], int):
            raise SamMedftError(
                f"prompt label {e['label']!r} is a class name; pass class_names "
                "to load_prompts_file so it becomes a class id"
            )
        groups.setdefault((e["box"] is not None, bool(e["points"])), []).append(i)
    result = []
    for (has_box, _), idx in sorted(groups.items()):
        k = max(len(entries[i]["points"]) for i in idx)
        points = np.zeros((len(idx), k, 2), np.float32)
        labels = np.full((len(idx), k), PAD_LABEL, np.int64)
        for row, i in enumerate(idx):
            pts = entries[i]["points"]
            if pts:
                points[row, : len(pts)] = pts
                labels[row, : len(pts)] = entries[i]["point_labels"]
        boxes = np.array([entries[i]["box"] for i in idx], np.float32) if has_box else None
        cls = np.array([entries[i]["label"] for i in idx], np.int64)
        result.append((idx, PromptSet(points, labels, boxes, None, cls)))
    return result


__all__ = [
    "PAD_LABEL",
    "PROMPT_KEYS",
    "PromptSettings",
    "PromptSet",
    "simulate_prompts",
    "to_model_frame",
    "collate_prompts",
    "corrective_click",
    "load_prompts_file",
    "parse_box",
    "parse_point",
    "check_box",
    "check_entry",
    "check_point",
    "prompt_sets_from_entries",
    "find_objects",
    "LabelledObject",
]
