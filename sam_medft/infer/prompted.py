"""Prompted prediction: boxes and points (no ground truth) -> a label map at the original size.

A prompt-mode model segments one object per prompt. Every prompt is decoded on its own
(objects ride on the batch axis, so each one can also carry its own previous mask for
iterative refinement), the mask with the highest predicted IoU is kept (as SAM does), its
low-res logits are resized back to the original image, and the objects are painted into
one label map: a pixel takes the class of the prompt whose mask logit there is highest
among the prompts that cover it (> 0). So overlapping prompts never depend on their order:
the more confident mask wins.

Images reach the model through the one prediction pipeline (`sam_medft.infer.pipeline`):
decoded and preprocessed in loader workers, embedded a batch at a time (one encoder call),
then each image's prompts are decoded against its embeddings here. Evaluation
(`sam_medft.eval.prompt_eval`) decodes its simulated prompts with the same functions on the
same pipeline's embeddings, so evaluated and deployed predictions cannot drift apart.

Automatic-mode runs raise: their decoder has one mask token per class and was never
trained to read prompt tokens, so a box would be a silent no-op or noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sam_medft.data.prompts import (
    PromptSet,
    check_entry,
    parse_box,
    parse_point,
    prompt_sets_from_entries,
    to_model_frame,
)
from sam_medft.errors import SamMedftError
from sam_medft.infer.pipeline import Images, Predictor, predict_images, to_image
from sam_medft.models.forward import embedding_kwargs
from sam_medft.tasks.prompted import select_masks

CHUNK = 16  # objects decoded per forward pass (bounds memory on images with many objects)


# ---- decoding ---------------------------------------------------------------------------------
@dataclass
class Decoded:
    """Per object: `logits` (N,H,W) at the original size, `lowres` (N,M,M) on the model's
    low-res grid (fed back as `input_masks` when refining), `iou` (N,) predicted IoU."""

    logits: torch.Tensor
    lowres: torch.Tensor
    iou: torch.Tensor


def embed_image(predictor: Predictor, array: np.ndarray) -> tuple[Any, tuple]:
    """One HxWx3 [0, 255] image -> its image embeddings and (H, W), by the pipeline's path
    (for a single image; batches are embedded by `pipeline.predict_images`). SAM: a
    (1,C,E,E) tensor; SAM-HQ: a tuple (embeddings, intermediate ViT embeddings)."""
    pixels, originals = predictor.pixel_batch([array])
    return predictor.embed_pixels(pixels), originals[0]


def _repeat(embeddings: Any, n: int) -> dict[str, Any]:
    """Model kwargs with one image's embeddings repeated for `n` objects (views, no copies)."""
    if isinstance(embeddings, tuple):
        main, inter = embeddings
        inter = [t.expand(n, *t.shape[1:]) for t in inter]
        return embedding_kwargs((main.expand(n, -1, -1, -1), inter))
    return embedding_kwargs(embeddings.expand(n, -1, -1, -1))


@torch.no_grad()
def decode(
    predictor: Predictor,
    embeddings: Any,
    prompt_set: PromptSet,
    original: tuple[int, int],
    input_masks: torch.Tensor | None = None,
) -> Decoded:
    """Decode an original-frame PromptSet of one image, one object per batch row.

    `input_masks` (N,M,M): previous low-res logits per object (iterative refinement; the
    prompt encoder adds ONE dense mask embedding per batch row, which is why the objects
    ride on the batch axis and not on SAM's point_batch axis).
    """
    n = len(prompt_set)
    h, w = original
    m = predictor.geometry.mask_size
    if n == 0:
        empty = torch.zeros((0, h, w))
        return Decoded(empty, torch.zeros((0, m, m)), torch.zeros(0))
    ps = to_model_frame(prompt_set, predictor.geometry, original)
    device = predictor.device
    dtype = (embeddings[0] if isinstance(embeddings, tuple) else embeddings).dtype
    logits, lowres, ious = [], [], []
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        kwargs: dict[str, Any] = {}
        if ps.points.shape[1] > 0:
            kwargs["input_points"] = ps.points[s:e, None].to(device)
            kwargs["input_labels"] = ps.point_labels[s:e, None].to(device)
        if ps.boxes is not None:
            kwargs["input_boxes"] = ps.boxes[s:e, None].float().to(device)
        if input_masks is not None:
            kwargs["input_masks"] = input_masks[s:e, None].to(device, dtype)
        with predictor.autocast:
            out = predictor.model(
                **_repeat(embeddings, e - s), multimask_output=predictor.multimask, **kwargs
            )
        low = select_masks(out.pred_masks, out.iou_scores)[:, 0].float()  # (n, M, M)
        lowres.append(low.cpu())
        ious.append(out.iou_scores[:, 0].float().max(-1).values.cpu())
        logits.append(predictor.geometry.logits_to_original(low, original).cpu())
    return Decoded(torch.cat(logits), torch.cat(lowres), torch.cat(ious))


def paint_labels(
    logits: torch.Tensor, class_ids: Sequence[int] | torch.Tensor, original: tuple[int, int]
) -> np.ndarray:
    """(N,H,W) object logits -> HxW int64 label map: each pixel takes the class of the
    object with the highest logit there, if that logit is > 0 (else background 0)."""
    if logits.shape[0] == 0:
        return np.zeros(original, dtype=np.int64)
    ids = torch.as_tensor(np.asarray(class_ids), dtype=torch.int64)
    best, idx = logits.max(0)
    labels = ids[idx]
    labels[best <= 0] = 0
    return labels.numpy()


def class_masks(
    logits: torch.Tensor, object_classes: Sequence[int] | torch.Tensor, class_ids: Sequence[int]
) -> np.ndarray:
    """(N,H,W) object logits -> (K,H,W) bool: per class of `class_ids`, the union of its
    objects' masks (logit > 0). Classes may overlap; evaluation scores each on its own."""
    objs = np.asarray(object_classes)
    fg = logits.numpy() > 0 if logits.shape[0] else np.zeros((0, *logits.shape[1:]), bool)
    return np.stack(
        [
            fg[objs == c].any(0) if (objs == c).any() else np.zeros(fg.shape[1:], bool)
            for c in class_ids
        ]
    )


# ---- user prompts -----------------------------------------------------------------------------
def check_prompts(
    prompts: Any, size: tuple[int, int], class_names: Sequence[str], where: str = "prompts"
) -> list[dict]:
    """Python-API prompts (a list of dicts as `load_prompts_file` returns them, or as written
    in prompts.json) -> checked entries with class ids, with the file format's messages."""
    if not isinstance(prompts, list | tuple) or not prompts:
        raise SamMedftError(
            f"{where} must be a non-empty list of dicts like "
            f'{{"label": 1, "box": [x0, y0, x1, y1]}}, got {prompts!r}'
        )
    out = []
    for j, entry in enumerate(prompts):
        if isinstance(entry, dict):  # loaded entries carry box=None / points=[]: drop those
            entry = {k: v for k, v in entry.items() if v is not None and not _is_empty(v)}
        out.append(check_entry(entry, f"{where}[{j}]", size, list(class_names)))
    return out


def _is_empty(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) == 0


def paint_prompts(predictor: Predictor, embeddings: Any, original: tuple[int, int],
                  entries: list[dict]) -> np.ndarray:
    """One image's checked prompt entries, decoded against its embeddings -> HxW uint8
    class-index map at the original size; overlaps go to the highest mask logit."""
    h, w = original
    logits = torch.zeros((len(entries), h, w))
    class_ids = np.zeros(len(entries), dtype=np.int64)
    for idx, ps in prompt_sets_from_entries(entries):
        logits[idx] = decode(predictor, embeddings, ps, original).logits
        class_ids[idx] = np.asarray(ps.class_ids)
    return paint_labels(logits, class_ids, original).astype(np.uint8)


def predict_prompted(predictor: Predictor, images: Sequence, entries: Sequence[list[dict]],
                     *, batch_size: int = 8, num_workers: int = 0, scaled: bool = False):
    """Images (paths or arrays) and each one's checked prompt entries -> a `Predicted` per
    image, in order, its label map in `.decoded` (the pipeline embeds a batch at once)."""
    return predict_images(
        predictor, Images(images, predictor.intensity, scaled=scaled), batch_size=batch_size,
        num_workers=num_workers,
        decode_image=lambda emb, original, k, _: paint_prompts(predictor, emb, original,
                                                               entries[k]))


def predict_with_prompts(predictor: Predictor, image: Any, prompts: list[dict]) -> np.ndarray:
    """One image (path or array) and its prompts (original pixel coordinates) -> HxW uint8
    class-index map at the original size; overlaps go to the highest mask logit."""
    predictor.task.check_prediction(has_prompts=True)
    array = to_image(image, predictor.intensity)
    entries = check_prompts(prompts, tuple(array.shape[:2]), predictor.class_names)
    return next(predict_prompted(predictor, [array], [entries], scaled=True)).decoded


def _split_label(text: str, flag: str) -> tuple[int | str | None, str]:
    """`"organ_a:10,10,50,50"` -> ("organ_a", "10,10,50,50"); `"2:5,5"` -> (2, "5,5")."""
    if ":" not in text:
        return None, text
    label, rest = text.split(":", 1)
    label = label.strip()
    if not label:
        raise SamMedftError(f"{flag} {text!r}: nothing before ':'; write LABEL:coordinates")
    # a class id is decimal digits (not '²', which isdigit() accepts and int() refuses);
    # anything else is a class name, checked against the model's classes later
    if label.isdecimal() and len(label) < 19:
        return int(label), rest
    return label, rest


def cli_entry(
    box: str | None, points: Sequence[str], size: tuple[int, int], class_names: Sequence[str]
) -> dict:
    """`--box [LABEL:]x0,y0,x1,y1` and `--point [LABEL:]x,y` (repeatable) -> one checked
    prompt entry: all flags describe ONE object. LABEL (class id or name) may be left out
    when the model has a single foreground class."""
    labels: list[int | str] = []
    entry: dict[str, Any] = {}
    if box is not None:
        label, rest = _split_label(box, "--box")
        labels += [label] if label is not None else []
        entry["box"] = parse_box(rest, size)
    if points:
        entry["points"] = []
        for text in points:
            label, rest = _split_label(text, "--point")
            labels += [label] if label is not None else []
            entry["points"].append(parse_point(rest, size))
    if len({str(v) for v in labels}) > 1:
        raise SamMedftError(
            f"--box/--point give different labels {labels}: they describe one object; for "
            "several objects write a prompts.json and pass --prompts"
        )
    if labels:
        entry["label"] = labels[0]
    elif len(class_names) == 2:
        entry["label"] = 1
    else:
        known = ", ".join(f"{i} {n}" for i, n in enumerate(class_names) if i)
        raise SamMedftError(
            f"the model has several classes ({known}): say which one the prompt marks, e.g. "
            f"--box {class_names[1]}:x0,y0,x1,y1 or --point 1:x,y"
        )
    return check_prompts([entry], size, class_names, where="--box/--point")[0]


__all__ = [
    "Decoded",
    "check_prompts",
    "class_masks",
    "cli_entry",
    "decode",
    "embed_image",
    "paint_labels",
    "paint_prompts",
    "predict_prompted",
    "predict_with_prompts",
]
