"""Pictures for the app: the slice with its label map as a coloured overlay (an opacity per
class), the prompts drawn on it, and the class legend. Colours are `predict`'s palette, so
the app, the overlays `predict --overlays` writes and legend.json agree."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from sam_medft.infer.predict import PALETTE, draw_prompts

DEFAULT_OPACITY = 0.5
DISPLAY_SIDE = 512  # px: small slices are enlarged by a whole factor up to about this


def class_colour(class_id: int) -> tuple[int, int, int]:
    return PALETTE[class_id % len(PALETTE)]


def hex_colour(class_id: int) -> str:
    r, g, b = class_colour(class_id)
    return f"#{r:02x}{g:02x}{b:02x}"


def overlay(image: np.ndarray, labels: np.ndarray, opacity: Sequence[float]) -> np.ndarray:
    """HxWx3 uint8 image + HxW class map -> HxWx3 uint8; class c blended with opacity[c-1]
    (background, class 0, is never coloured)."""
    colours = np.array([class_colour(c) for c in range(256)], dtype=np.float32)
    alpha = np.zeros(256, dtype=np.float32)
    for c, a in enumerate(opacity, start=1):
        alpha[c] = float(np.clip(a, 0.0, 1.0))
    lab = labels.astype(np.intp)
    a = alpha[lab][..., None]
    out = image.astype(np.float32) * (1 - a) + colours[lab] * a
    return np.round(out).astype(np.uint8)


def display_factor(shape: tuple[int, int]) -> int:
    """How many times a slice is enlarged on screen (whole pixels, nearest): small scans
    would be a thumbnail, and the browser does not enlarge a picture (Gradio maps a click
    back to pixels only for pictures shown at most at their own size)."""
    return max(1, DISPLAY_SIDE // max(shape))


def enlarge(picture: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return picture
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


def _scaled(value: float, factor: int) -> float:
    return value * factor + factor / 2 - 0.5  # the centre of the enlarged pixel


def with_prompts(picture: np.ndarray, entries: Sequence[dict],
                 corner: tuple[float, float] | None = None, factor: int = 1) -> np.ndarray:
    """Draw prompt entries (boxes, positive discs, negative crosses; `predict --overlays`'
    markers) and a pending box corner (a small square) on an RGB picture enlarged `factor`
    times (the prompts are in the slice's own pixels)."""
    img = Image.fromarray(picture)
    full = [{"label": e["label"],
             "box": None if e.get("box") is None else [_scaled(v, factor) for v in e["box"]],
             "points": [[_scaled(v, factor) for v in p] for p in e.get("points") or []],
             "point_labels": e.get("point_labels") or []} for e in entries]
    draw_prompts(img, full)
    if corner is not None:
        x, y = (_scaled(v, factor) for v in corner)
        r = max(2, round(min(img.size) / 80))
        ImageDraw.Draw(img).rectangle([x - r, y - r, x + r, y + r], outline=(255, 255, 255),
                                      width=max(1, r // 2))
    return np.asarray(img)


def legend_html(class_names: Sequence[str], counts: Sequence[int] | None = None) -> str:
    """The class legend: a colour swatch, id and name per foreground class (and its pixels)."""
    rows = []
    for c, name in enumerate(class_names):
        if c == 0:
            continue
        r, g, b = class_colour(c)
        n = "" if counts is None else f" <small>({int(counts[c])} px)</small>"
        rows.append(f'<span class="legend-item" data-class="{c}">'
                    f'<span style="display:inline-block;width:1em;height:1em;'
                    f'background:rgb({r},{g},{b});vertical-align:middle"></span> '
                    f"{c} {html.escape(name)}{n}</span>")
    return '<div class="legend">' + " &nbsp; ".join(rows) + "</div>"


__all__ = ["DEFAULT_OPACITY", "DISPLAY_SIDE", "class_colour", "display_factor", "enlarge",
           "hex_colour", "legend_html", "overlay", "with_prompts"]
