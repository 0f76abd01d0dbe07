"""Prediction with a fine-tuned model: label maps at each image's original size.

`FineTunedSam` is the Python API (`sam_medft.load(run_or_hub_id).predict(image)`);
`predict_paths` (and `predict_paths_with_prompts`, with boxes/points decoded by
`sam_medft.infer.prompted`) is what `sam-medft predict` runs: batched, bf16 on GPU, a
progress bar, and output names that mirror the inputs so nothing is overwritten silently.
The PNGs hold class indices (a palette; `values="class"`), the same indices as a plain
one-channel PNG (`values="index"`: tools that read PNGs as grey values, e.g. nnU-Net, would read
a palette as RGB colours) or each class's raw mask value as the training masks stored it
(`values="raw"`: `raw_values`, `value_table`); legend.json
(`legend_of`) names both for every class. Overlays of prompted runs show the prompts
(`draw_prompts`).
All of them run the one prediction pipeline (`sam_medft.infer.pipeline`), as eval does.

The user's files are never replaced: `check_output_folder` refuses an --out folder that is,
or is inside, an input folder or holds an input image, and a file there that this package
did not write (the folder's `sam_medft_predictions.json` lists the ones it did; --overwrite
replaces only those). Both before the model loads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from sam_medft.adapters.artifact import load_adapter_model
from sam_medft.config import IntensityConfig
from sam_medft.data.io import image_size, read_image
from sam_medft.data.lists import list_images
from sam_medft.data.prompts import load_prompts_file
from sam_medft.data.transforms import SamGeometry
from sam_medft.data.volumes import Volume, read_volume, write_label_volume
from sam_medft.errors import SamMedftError
from sam_medft.files import read_manifest, write_manifest
from sam_medft.hub import resolve_run
from sam_medft.infer.pipeline import Images, model_batches, predict_images
from sam_medft.infer.prompted import cli_entry, predict_prompted, predict_with_prompts
from sam_medft.infer.volume_inference import VOLUME_BATCH, predict_volume
from sam_medft.models.fast_attention import enable_fast_attention
from sam_medft.models.forward import automatic_forward, image_embeddings
from sam_medft.runs import AdapterMeta, find_adapter_folder
from sam_medft.tasks import task_from_meta

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy"}
LIST_SUFFIXES = (".txt", ".csv", ".tsv")
LEGEND = "legend.json"
MANIFEST = "sam_medft_predictions.json"  # every file `predict` wrote in an --out folder

# a colour per class index (0 = background = black), repeated past 10 classes
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
           (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]
#: what a prediction PNG holds: "class" (class indices, palette PNG), "index" (class indices,
#: plain single-channel PNG) or "raw" (each class's raw mask value, as the training masks
#: stored it; single-channel uint8/uint16 PNG)
VALUES = ("class", "index", "raw")
#: a binary run's foreground in `--values raw` when --foreground-value is not given: its
#: sam_medft.json does not record the training masks' foreground values (every value > 0 was
#: foreground), so the common 0/255 convention is written and legend.json says so
DEFAULT_FOREGROUND = 255
_PNG_MAX = 65535  # the largest value a (16-bit) PNG holds
PROMPT_RIM = (255, 255, 255)  # the rim of point markers on prompted overlays


class FineTunedSam:
    """A fine-tuned SAM ready for inference (automatic mode, or prompts when given)."""

    def __init__(self, model: torch.nn.Module, meta: AdapterMeta, device: str | None = None,
                 *, multimask: bool = True, fast_attention: bool = True):
        self.meta = meta
        self.multimask = multimask  # prompt modes: decode SAM's 3 masks (as trained) or token 0
        self.task = task_from_meta(meta, multimask=multimask)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        if fast_attention:  # exact (tested against the plain path), faster, less memory
            enable_fast_attention(self.model)
        self.geometry = SamGeometry(meta.input_size, meta.mask_size)
        self.intensity = IntensityConfig(**meta.intensity) if meta.intensity else IntensityConfig()
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                         else nullcontext())

    @classmethod
    def load(cls, run_or_hub_id: str | Path, *, device: str | None = None,
             revision: str | None = None, fast_attention: bool = True) -> FineTunedSam:
        folder = find_adapter_folder(resolve_run(str(run_or_hub_id), revision=revision))
        model, meta = load_adapter_model(folder)
        return cls(model, meta, device=device, multimask=meta.multimask,
                   fast_attention=fast_attention)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    def predict_proba(self, images: Sequence, *, batch_size: int = 8) -> list[np.ndarray]:
        """Per-class probabilities (C,H,W) at each image's original size."""
        done = predict_images(self, Images(images, self.intensity), batch_size=batch_size,
                              probs=torch.float32)
        return [d.probs for d in done]

    def pixel_batch(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple]]:
        """HxWx3 arrays in [0, 255] -> the normalised, padded model batch (on the device) and
        the original sizes, as the prediction pipeline makes it."""
        batch = next(model_batches(Images(arrays, scaled=True), self.geometry,
                                   self.meta.normalization, self.device, batch_size=len(arrays)))
        return batch.pixels, batch.originals

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor):
        """(B,3,S,S) model batch -> its image embeddings, computed once per image for all
        its prompts (SAM: a (B,C,E,E) tensor; SAM-HQ: a tuple, see `models.forward`)."""
        with self.autocast:
            return image_embeddings(self.model, pixels)

    def _proba_on_device(self, pixels: torch.Tensor, originals: Sequence[tuple]) -> list:
        """(B,3,S,S) model batch -> per-image (C,H,W) probabilities, on the model's device."""
        with self.autocast:
            logits, _ = automatic_forward(self.model, pixels.to(self.device, non_blocking=True))
        return [self.geometry.logits_to_original(lg, tuple(original)).softmax(0)
                for lg, original in zip(logits.float(), originals, strict=True)]

    @torch.inference_mode()
    def labels_from_pixels(self, pixels: torch.Tensor, originals: Sequence[tuple], *,
                           probs: torch.dtype | None = None) -> tuple[list[np.ndarray], list | None]:
        """Label maps (argmax taken on the device: only H x W bytes come back; uint8 up to
        256 classes) and, when `probs` names a dtype, the probabilities in it, for a model
        batch from the pipeline (`pixel_batch`)."""
        on_device = self._proba_on_device(pixels, originals)
        dtype = torch.uint8 if len(self.meta.class_names) <= 256 else torch.int32
        labels = [p.argmax(0).to(dtype).cpu().numpy() for p in on_device]
        return labels, (None if probs is None else [p.to(probs).cpu().numpy() for p in on_device])

    def predict(self, image, prompts: list[dict] | None = None, *, values: str = "class",
                foreground: int | None = None) -> np.ndarray:
        """One image (path or array) -> HxW map at its original size: uint8 class indices
        (`values="class"` or `"index"`), or each pixel's raw mask value (`values="raw"`, see
        `to_raw_values`; `foreground`: a binary run's foreground value, 255 by default)."""
        lut = value_table(self.meta, values, foreground)  # a mistake fails before predicting
        if prompts:
            labels = predict_with_prompts(self, image, prompts)
        else:
            labels = next(predict_images(self, Images([image], self.intensity))).labels
        return labels if lut is None else lut[labels]

    def predict_volume(self, volume: Volume | str | Path | np.ndarray, *,
                       out: str | Path | None = None, largest_component: bool = False,
                       fill_holes: bool = False, batch_size: int = VOLUME_BATCH) -> np.ndarray:
        """A volume (NIfTI path, DICOM series folder, `Volume`, or a 3-D array in RAS axis
        order) -> its label volume (uint8 class indices) in RAS order, the order of
        `sam_medft.data.volumes.read_volume(path).array`, sliced as the model was trained.
        `out`: also write it as NIfTI in the source file's geometry (affine, header, voxel
        order), for 3D Slicer / ITK-SNAP; needs a path or a `Volume`."""
        if isinstance(volume, str | Path):
            volume = read_volume(volume)
        if out is not None and not isinstance(volume, Volume):
            raise SamMedftError("predict_volume(out=...) needs a volume path or a Volume (an "
                                "array has no affine to write)")
        labels = predict_volume(self, volume, batch_size=batch_size,
                                largest_component=largest_component, fill_holes=fill_holes)
        if out is not None:
            write_label_volume(out, labels, like=volume)
        return labels

    def to_raw_values(self, labels: np.ndarray, *, foreground: int | None = None) -> np.ndarray:
        """A class-index map -> the raw mask values of its classes (the run's data.labels:
        raw value -> class name; the first raw value of a class mapped from several), uint8,
        or uint16 when a raw value is > 255. Binary runs: 0 and `foreground` (default 255;
        the training masks' foreground values are not recorded, any value > 0 was one)."""
        return value_table(self.meta, "raw", foreground)[np.asarray(labels)]


def collect_inputs(inputs: Sequence[str | Path],
                   img_folder: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Files, folders (recursive) or .txt/.csv lists -> (path, name relative to its root).
    Lists follow `data.lists.list_images` (relative to `img_folder`, the run's
    data.img_folder, else the list's folder), as training and eval read them."""
    found: list[tuple[Path, Path]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((f, f.relative_to(p)))
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            found += list_images(p, img_folder)
        elif p.is_file():
            found.append((p, Path(p.name)))
        else:
            raise SamMedftError(f"input {p} not found (give image files, folders or a .txt/.csv list)")
    if not found:
        raise SamMedftError(f"no images found in {', '.join(map(str, inputs))} "
                            f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def output_paths(names: Iterable[Path], out_dir: Path, suffix: str) -> list[Path]:
    """Output paths mirroring the input names inside `out_dir` (`..` parts of list entries
    dropped, so nothing lands outside it); two inputs on one output stop the run."""
    paths, seen = [], {}
    for name in names:
        inside = Path(*[p for p in Path(name).parts if p not in ("..", ".")] or ["_"])
        target = Path(out_dir) / inside.with_suffix(suffix)
        if target in seen:
            raise SamMedftError(f"inputs {seen[target]} and {name} would both be written to {target}; "
                                f"rename one or predict them into different --out folders")
        seen[target] = name
        paths.append(target)
    return paths


def output_files(inputs: Sequence[str | Path], out_dir: Path, *, probs: bool = False,
                 overlays: bool = False, img_folder: str | Path | None = None) -> list[Path]:
    """Every file `predict_paths` writes for these inputs (legend and manifest aside)."""
    targets = output_paths([n for _, n in collect_inputs(inputs, img_folder)], Path(out_dir),
                           ".png")
    return _with_extras(targets, probs, overlays)


def _with_extras(targets: Sequence[Path], probs: bool, overlays: bool) -> list[Path]:
    files = list(targets)
    if probs:
        files += [t.with_suffix(".probs.npy") for t in targets]
    if overlays:
        files += [t.with_suffix(".overlay.png") for t in targets]
    return files


def check_output_folder(inputs: Sequence[str | Path], outputs: Sequence[Path], out_dir: Path, *,
                        overwrite: bool = False, claim: bool = True,
                        img_folder: str | Path | None = None,
                        input_files: Sequence[Path] | None = None) -> None:
    """Refuse an --out folder that would put the user's files at risk; nothing is written
    unless every check passes. `outputs`: the files about to be written in it.

    - it is, or is inside, an input folder, or holds an input image or list: refused whatever
      --overwrite says (that is how a run once replaced the scans with label maps);
    - a file there with an output's name that `predict` did not write: refused, naming it;
    - outputs an earlier `predict` wrote: replaced only with `overwrite` (legend.json, the
      folder's own metadata, is rewritten either way).

    `input_files`: what the inputs hold, when not 2-D images (see `check_out_location`).
    `claim=True` then records `outputs` in the folder's manifest (creating the folder) before
    any of them is written, so an interrupted run's files are known as ours."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SamMedftError(f"--out {out} is a file: give a folder for the label maps")
    check_out_location(inputs, out, img_folder, input_files)
    outputs = list(outputs)
    if len(set(outputs)) != len(outputs):
        twice = next(p for p in outputs if outputs.count(p) > 1)
        raise SamMedftError(
            f"{twice} would be written twice (an input named like another input's "
            f".overlay.png/.probs.npy): rename that input or leave --overlays/--probs out")
    ours = read_manifest(out / MANIFEST, "predict", keep=lambda f: ".." not in Path(f).parts,
                         fix="choose another --out")
    legend = out / LEGEND
    existing = [p for p in [*outputs, legend] if p.exists() or p.is_symlink()]
    foreign = [p for p in existing if _rel(p, out) not in ours]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise SamMedftError(
            f"{foreign[0]}{more} exists and was not written by `sam-medft predict` (it is not "
            f"listed in {out / MANIFEST}): nothing was written; move it away, or choose another "
            f"--out")
    replaced = [p for p in existing if p != legend]
    if replaced and not overwrite:
        raise SamMedftError(
            f"{len(replaced)} prediction(s) already exist in {out} (e.g. {replaced[0]}), written "
            f"by an earlier `sam-medft predict`: pass --overwrite to replace them, or choose "
            f"another --out")
    if claim:
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(out / MANIFEST, "predict", ours | {_rel(p, out) for p in [*outputs, legend]})


def check_out_location(inputs: Sequence[str | Path], out_dir: Path,
                       img_folder: str | Path | None = None,
                       input_files: Sequence[Path] | None = None) -> None:
    """--out must not be an input folder, lie inside one, or hold an input image, volume or
    list (refused whatever --overwrite says; the message never suggests it). `input_files`:
    what the inputs hold (default: the 2-D images `collect_inputs` finds; volume prediction
    passes its volumes, so one rule serves both)."""
    out = Path(out_dir)
    out_r = out.resolve()
    held = [Path(f) for f in input_files or () if Path(f).is_dir()]  # listed DICOM series
    for raw in [*inputs, *held]:
        p = Path(raw)
        if p.is_dir() and (out_r == p.resolve() or out_r.is_relative_to(p.resolve())):
            where = "the input folder" if out_r == p.resolve() else "inside the input folder"
            raise SamMedftError(
                f"--out {out} is {where} {p}: the label maps would be written among your images "
                f"(and read as inputs next time); choose an --out outside it, e.g. --out "
                f"{_beside(p)}")
    files = [Path(raw) for raw in inputs if Path(raw).is_file()]
    files += (list(input_files) if input_files is not None
              else [f for f, _ in collect_inputs(inputs, img_folder)])
    for f in files:
        if f.resolve().is_relative_to(out_r):
            raise SamMedftError(
                f"--out {out} holds the input {f}: the label maps would be written among your "
                f"images; choose an --out that holds none of the inputs, e.g. --out "
                f"{_beside(out)}")


def _beside(folder: Path) -> Path:
    """`<folder>_predictions` next to `folder`, as the user would type it."""
    r = Path(folder).resolve()
    cand = r.parent / f"{r.name}_predictions"
    try:
        return cand.relative_to(Path.cwd())
    except ValueError:
        return cand


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def raw_values(meta: AdapterMeta, foreground: int | None = None) -> list[int]:
    """For each class index, the raw mask value `--values raw` writes: the (first) raw value
    the run's data.labels mapped to the class; a binary run: 0 and `foreground` (default
    DEFAULT_FOREGROUND = 255, as its training masks' foreground values are not recorded)."""
    if foreground is not None and not meta.binary:
        raise SamMedftError(
            f"--foreground-value is for binary runs (data.binary: true); this run maps raw mask "
            f"values to its classes ({_mapping(meta)}) and --values raw writes those")
    if meta.binary:
        fg = DEFAULT_FOREGROUND if foreground is None else foreground
        if isinstance(fg, bool) or not isinstance(fg, int) or not 1 <= fg <= _PNG_MAX:
            raise SamMedftError(f"--foreground-value {fg!r} must be a whole number 1..{_PNG_MAX} "
                                f"(what a PNG holds; 0 is the background)")
        return [0] + [fg] * (len(meta.class_names) - 1)
    if not meta.labels:  # no mapping recorded: the masks held the class indices themselves
        return list(range(len(meta.class_names)))
    out = []
    for name in meta.class_names:
        mapped = _mapped_values(meta, name)
        if not mapped:
            raise SamMedftError(f"the run's labels ({_mapping(meta)}) give no raw value for the "
                                f"class {name!r}; use --values class (class indices, see "
                                f"{LEGEND})")
        if not 0 <= mapped[0] <= _PNG_MAX:
            raise SamMedftError(f"--values raw: the class {name!r} has the raw value {mapped[0]}, "
                                f"which a PNG cannot hold (0..{_PNG_MAX}); use --values class "
                                f"(class indices, see {LEGEND})")
        out.append(mapped[0])
    return out


def value_table(meta: AdapterMeta, values: str = "class",
                foreground: int | None = None) -> np.ndarray | None:
    """`values="raw"`: class index -> raw value lookup table (uint8, uint16 past 255);
    `"index"`: the identity (class indices in a plain one-channel PNG); `"class"`: None (a
    palette PNG of the class indices). Checked before any image is read."""
    if values not in VALUES:
        raise SamMedftError(f"--values {values!r}: use one of {', '.join(VALUES)}")
    if values != "raw":
        if foreground is not None:
            raise SamMedftError("--foreground-value sets what --values raw writes for a binary "
                                "run's foreground; add --values raw")
        if values == "class":
            return None
    table = raw_values(meta, foreground) if values == "raw" else list(range(len(meta.class_names)))
    return np.asarray(table, dtype=np.uint8 if max(table) <= 255 else np.uint16)


def _mapped_values(meta: AdapterMeta, name: str) -> list[int]:
    return [int(v) for v, n in (meta.labels or {}).items() if n == name]


def _mapping(meta: AdapterMeta) -> str:
    return ", ".join(f"{v}: {n}" for v, n in (meta.labels or {}).items()) or "class indices"


def save_raw_png(raw: np.ndarray, path: Path) -> None:
    """A raw-value map -> a single-channel PNG (8-bit, or 16-bit for uint16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(raw).save(path)


def save_label_png(labels: np.ndarray, path: Path) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for i in range(256) for c in PALETTE[i % len(PALETTE)]] if labels.max() < 256 else None
    img.putpalette(flat)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def legend_of(meta: AdapterMeta, values: str = "class", foreground: int | None = None) -> dict:
    """legend.json: per class index, its `index`, `name`, overlay `color`, `raw_value` (the
    raw mask value of the class: what `--values raw` writes, never null) and `png_value`
    (what the PNGs in this folder hold for it: the index, or the raw value). Binary runs add
    a `note` saying where the foreground value comes from; a class that data.labels mapped
    from several raw values lists them in `mapped_raw_values`."""
    value_table(meta, values, foreground)  # the same checks as the prediction
    raw = raw_values(meta, foreground)
    legend = {}
    for i, name in enumerate(meta.class_names):
        entry = {"index": i, "name": name, "color": list(PALETTE[i % len(PALETTE)]),
                 "raw_value": raw[i], "png_value": raw[i] if values == "raw" else i}
        mapped = _mapped_values(meta, name)
        if len(mapped) > 1:
            entry["mapped_raw_values"] = mapped
        if meta.binary and i > 0:
            entry["note"] = (
                f"binary run: every mask value > 0 was this class in training; --values raw "
                f"writes it as {raw[i]} "
                + ("(--foreground-value)" if foreground is not None else
                   "(the default: the training masks' foreground values are not recorded; "
                   "--foreground-value sets another, e.g. 1 for 0/1 masks)"))
        legend[str(i)] = entry
    return legend


def write_legend(meta: AdapterMeta, out_dir: Path, *, values: str = "class",
                 foreground: int | None = None) -> Path:
    path = out_dir / LEGEND
    path.write_text(json.dumps(legend_of(meta, values, foreground), indent=2))
    return path


def predict_paths(predictor: FineTunedSam, inputs: Sequence[str | Path], out_dir: Path, *,
                  batch_size: int = 8, save_probs: bool = False, overlays: bool = False,
                  values: str = "class", foreground: int | None = None,
                  overwrite: bool = False, show_progress: bool = True,
                  num_workers: int = 0, img_folder: str | Path | None = None) -> list[Path]:
    """Predict every input image; returns the written label PNGs (lists: `collect_inputs`).

    The prediction pipeline (`infer.pipeline`), so a GPU is not left waiting: loader
    workers decode and resize the next batches while the model runs, the argmax is taken
    on the device, and PNGs are written by a thread pool while the next batch is predicted."""
    predictor.task.check_prediction(has_prompts=False)
    lut = value_table(predictor.meta, values, foreground)  # --values raw: written through it
    if batch_size < 1:
        raise SamMedftError(f"predict --batch-size {batch_size} is too small; use 1 or more")
    if num_workers < 0:
        raise SamMedftError(f"predict --workers {num_workers} is too small; use 0 or more")
    out_dir = Path(out_dir)
    pairs = collect_inputs(inputs, img_folder)
    targets = output_paths([n for _, n in pairs], out_dir, ".png")
    check_output_folder(inputs, _with_extras(targets, save_probs, overlays), out_dir,
                        overwrite=overwrite, img_folder=img_folder)
    write_legend(predictor.meta, out_dir, values=values, foreground=foreground)
    done = predict_images(predictor, Images([p for p, _ in pairs], predictor.intensity),
                          batch_size=batch_size, num_workers=num_workers,
                          probs=torch.float16 if save_probs else None)
    bar = tqdm(total=len(pairs), desc="predict", unit="img", disable=not show_progress)
    with bar, ThreadPoolExecutor(max_workers=2) as writer:  # the bar ends its line on Ctrl-C
        pending = []
        for d in done:
            pending.append(writer.submit(_write_outputs, predictor, pairs[d.index][0], d.labels,
                                         d.probs, targets[d.index], overlays, lut))
            bar.update(1)
        for job in pending:
            job.result()  # re-raise the first write error, if any
    return targets


def _write_outputs(predictor: FineTunedSam, src: Path, labels: np.ndarray,
                   probs: np.ndarray | None, target: Path, overlay: bool,
                   lut: np.ndarray | None = None, prompts: Sequence[dict] = ()) -> None:
    """One image's files: the label PNG (class indices, or raw values through `lut`), its
    probabilities and its overlay (with the `prompts` drawn on it, when prompted)."""
    if lut is None:
        save_label_png(labels, target)
    else:
        save_raw_png(lut[labels], target)
    if probs is not None:
        np.save(target.with_suffix(".probs.npy"), probs)
    if overlay:
        _save_overlay(predictor, src, labels, target.with_suffix(".overlay.png"), prompts)


def draw_prompts(image: Image.Image, entries: Sequence[dict]) -> Image.Image:
    """Draw checked prompt entries (original image pixels) on an RGB overlay, each in its
    class's colour (legend.json `color`): a box as a rectangle, a positive point as a filled
    disc with a white rim, a negative point as a cross with a white rim."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    width = max(2, round(min(w, h) / 150))
    r = max(3, round(min(w, h) / 60))
    for entry in entries:
        colour = PALETTE[int(entry["label"]) % len(PALETTE)]
        if entry.get("box") is not None:
            x0, y0, x1, y1 = (round(float(v)) for v in entry["box"])
            draw.rectangle([x0, y0, min(x1, w - 1), min(y1, h - 1)], outline=colour, width=width)
        points = entry.get("points") or []
        for (x, y), positive in zip(points, entry.get("point_labels") or [1] * len(points),
                                    strict=True):
            x, y = float(x), float(y)
            if positive:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=PROMPT_RIM,
                             width=max(1, width // 2))
                continue
            strokes = [((x - r, y - r), (x + r, y + r)), ((x - r, y + r), (x + r, y - r))]
            for fill, stroke in ((PROMPT_RIM, width + 2), (colour, width)):
                for a, b in strokes:
                    draw.line([a, b], fill=fill, width=stroke)
    return image


def _save_overlay(predictor: FineTunedSam, src: Path, labels: np.ndarray, path: Path,
                  prompts: Sequence[dict] = ()) -> None:
    image = read_image(src, predictor.intensity).astype(np.uint8)
    colour = np.array([PALETTE[i % len(PALETTE)] for i in range(256)], dtype=np.uint8)[labels]
    alpha = (labels > 0)[..., None] * 0.45
    overlay = Image.fromarray((image * (1 - alpha) + colour * alpha).astype(np.uint8))
    draw_prompts(overlay, prompts).save(path)


# ---- prompted prediction of image files (`sam-medft predict --prompts/--box/--point`) ----


def _meta_of(model: FineTunedSam | str | Path, revision: str | None) -> AdapterMeta:
    if isinstance(model, str | Path):
        return AdapterMeta.read(find_adapter_folder(resolve_run(str(model), revision=revision)))
    return model.meta


def check_values(model: FineTunedSam | str | Path, values: str = "class",
                 foreground: int | None = None, *, revision: str | None = None) -> None:
    """--values/--foreground-value checked against the run's sam_medft.json, before the
    weights load (`sam-medft predict`)."""
    value_table(_meta_of(model, revision), values, foreground)


def plan_prompted(
    meta: AdapterMeta,
    inputs: Sequence[str | Path],
    *,
    prompts_file: str | Path | None = None,
    box: str | None = None,
    points: Sequence[str] = (),
) -> list[tuple[Path, Path, list[dict]]]:
    """Check the inputs and prompts without touching model weights -> (image, output name,
    entries) per prompted image. Images of a folder without prompts are skipped (logged)."""
    task_from_meta(meta).check_prediction(has_prompts=True)
    pairs = collect_inputs(inputs)
    if prompts_file is not None and (box is not None or points):
        raise SamMedftError("give either --prompts FILE or --box/--point, not both")
    if prompts_file is None and box is None and not points:
        raise SamMedftError("no prompts: pass --prompts prompts.json, or --box / --point")
    if prompts_file is not None:
        sizes = {rel.as_posix(): image_size(path) for path, rel in pairs}
        by_name = load_prompts_file(prompts_file, sizes, class_names=meta.class_names)
        plan = [
            (p, rel, by_name[rel.as_posix()]) for p, rel in pairs if by_name.get(rel.as_posix())
        ]
        skipped = len(pairs) - len(plan)
        if not plan:
            raise SamMedftError(f"{prompts_file} has no prompts for any input image")
        if skipped:
            log.warning(
                "%d input image(s) have no prompts in %s and are skipped", skipped, prompts_file
            )
        return plan
    if len(pairs) != 1:
        raise SamMedftError(
            f"--box/--point apply to one image, but {len(pairs)} were given; for several images "
            "write a prompts.json and pass --prompts"
        )
    path, rel = pairs[0]
    return [(path, rel, [cli_entry(box, points, image_size(path), meta.class_names)])]


def predict_paths_with_prompts(
    predictor: FineTunedSam | str | Path,
    inputs: Sequence[str | Path],
    out_dir: Path,
    *,
    prompts_file: str | Path | None = None,
    box: str | None = None,
    points: Sequence[str] = (),
    overwrite: bool = False,
    show_progress: bool = True,
    device: str | None = None,
    revision: str | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    overlays: bool = False,
    values: str = "class",
    foreground: int | None = None,
) -> list[Path]:
    """Prompted label maps (PNG + legend.json) for the prompted input images, through the
    prediction pipeline (`batch_size` images embedded at once, `num_workers` decoding).

    `predictor` may be a run folder / Hub id: then the prompts, image names and sizes are
    checked against its sam_medft.json BEFORE the weights load (a typo fails in a second).
    """
    meta = _meta_of(predictor, revision)
    plan = plan_prompted(meta, inputs, prompts_file=prompts_file, box=box, points=points)
    lut = value_table(meta, values, foreground)
    out_dir = Path(out_dir)
    targets = output_paths([rel for _, rel, _ in plan], out_dir, ".png")
    check_output_folder(inputs, _with_extras(targets, False, overlays), out_dir,
                        overwrite=overwrite)  # never the user's files
    if isinstance(predictor, str | Path):
        predictor = FineTunedSam.load(predictor, device=device, revision=revision)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_legend(predictor.meta, out_dir, values=values, foreground=foreground)
    done = predict_prompted(predictor, [src for src, _, _ in plan], [e for _, _, e in plan],
                            batch_size=batch_size, num_workers=num_workers)
    for d in tqdm(done, total=len(plan), desc="predict", unit="img", disable=not show_progress):
        src, _, entries = plan[d.index]
        _write_outputs(predictor, src, d.decoded, None, targets[d.index], overlays, lut, entries)
    return targets
