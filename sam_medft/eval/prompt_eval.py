"""Evaluation of prompt-mode runs: Dice per prompt setting, in one table.

A prompt model's score depends on the prompt more than on anything else, so one number
hides what matters. Each setting (box, 1 point, 3 points, hybrid, and 1 point followed by
N corrective clicks) is scored on the same images with the same metrics. The prompts are
simulated per object from the ORIGINAL-resolution reference mask (seeded, no box jitter),
i.e. they are GT-derived and say how well the model follows a good prompt, not how well
it finds the object on its own; every table and JSON says so.

Each image is encoded once, by the prediction pipeline (`sam_medft.infer.pipeline`: a batch
of images per encoder call, as in prompted prediction; `evaluate.iter_cases` runs it); each
object is decoded with `sam_medft.infer.prompted.decode` (the same code as prompted
prediction), the mask with the highest predicted IoU is kept and resized back to the
original size, and the objects are painted into a class map (union per class; where classes
overlap the higher logit wins). Corrective clicks follow SAM/RITM: a click at the most
interior pixel of the largest error region of each object's current mask
(`corrective_click`), and the previous low-res logits go back in as `input_masks`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from sam_medft.config import PromptConfig
from sam_medft.data.prompts import (
    PAD_LABEL,
    PromptSet,
    PromptSettings,
    corrective_click,
    simulate_prompts,
)
from sam_medft.eval.summary import json_clean
from sam_medft.infer.predict import FineTunedSam
from sam_medft.infer.prompted import class_masks, decode

GT_NOTE = (
    "GT-derived prompts: boxes and points are simulated per object from the reference mask "
    "(tight boxes, interior points, seeded), so these scores assume a good prompt."
)
DEFAULT_CLICKS = 3


@dataclass(frozen=True)
class PromptSetting:
    """One row of the table: `key` (stable id), `label` (as printed), the simulation settings
    and `clicks` corrective clicks after them (0: none)."""

    key: str
    label: str
    settings: PromptSettings
    clicks: int = 0


def table_settings(
    prompt: PromptConfig, clicks: int | None = None
) -> tuple[str, list[PromptSetting]]:
    """The settings to score for a run trained with `prompt`, and the key of the main one
    (the run's own mode, written to per_case.csv/summary.json).

    Points are placed as in training (`interior_fraction`), boxes are tight (no jitter), all
    objects of an image are prompted. `clicks` defaults to `prompt.refine_clicks`, else 3.
    """
    base = PromptSettings(
        mode="box",
        interior_fraction=prompt.interior_fraction,
        box_jitter=0.0,
        max_objects_per_image=None,
    )
    rows = [
        PromptSetting("box", "box", base),
        PromptSetting("point1", "1 point", replace(base, mode="point", n_points=1)),
        PromptSetting("point3", "3 points", replace(base, mode="point", n_points=3)),
        PromptSetting("hybrid", "hybrid (box + 1 point)", replace(base, mode="hybrid", n_points=1)),
    ]
    n_clicks = clicks if clicks is not None else (prompt.refine_clicks or DEFAULT_CLICKS)
    rows += [
        PromptSetting(
            f"clicks{k}",
            f"1 point + {k} corrective click{'s' if k > 1 else ''}",
            rows[1].settings,
            clicks=k,
        )
        for k in range(1, n_clicks + 1)
    ]
    own = replace(base, mode=prompt.mode, n_points=prompt.n_points, n_negative=prompt.n_negative)
    main = next((r.key for r in rows if r.settings == own and r.clicks == 0), None)
    if main is None:  # e.g. 2 points + 1 negative: score the run's own setting too
        neg = f" + {prompt.n_negative} negative" if prompt.n_negative else ""
        what = "box + points" if own.uses_box else "points"
        rows.insert(0, PromptSetting("recipe", f"{prompt.n_points} {what}{neg} (as trained)", own))
        main = "recipe"
    return main, rows


def _rng(seed: int, index: int, key: str) -> np.random.Generator:
    """One stream per (seed, image, setting): rows never share or shift each other's draws."""
    return np.random.default_rng([seed, index, zlib.crc32(key.encode())])


def predict_settings(
    predictor: FineTunedSam,
    embeddings: Any,
    original: tuple[int, int],
    reference: np.ndarray,
    class_ids: Sequence[int],
    settings: Sequence[PromptSetting],
    *,
    index: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per setting (keyed by `PromptSetting.key`), the (K,H,W) bool class masks of one image
    at its original size: for each of the K `class_ids`, the union of its objects' masks.
    `embeddings`: the image's, from the prediction pipeline (`pipeline.predict_images`, or
    `infer.prompted.embed_image` for one image); `reference` is the original-resolution
    class map the prompts come from; the click chain starts from the "1 point" prompts of
    the same seed."""
    emb = embeddings
    out: dict[str, np.ndarray] = {}
    start: tuple[PromptSet, Any] | None = None
    for s in settings:
        if s.clicks:
            continue
        ps = simulate_prompts(reference, s.settings, _rng(seed, index, s.key), class_ids=class_ids)
        dec = decode(predictor, emb, ps, original)
        out[s.key] = class_masks(dec.logits, ps.class_ids, class_ids)
        if s.key == "point1":
            start = (ps, dec)
    chain = sorted((s for s in settings if s.clicks), key=lambda s: s.clicks)
    if chain:
        if start is None:
            ps = simulate_prompts(
                reference, chain[0].settings, _rng(seed, index, "point1"), class_ids=class_ids
            )
            start = (ps, decode(predictor, emb, ps, original))
        out.update(
            _click_chain(
                predictor, emb, original, *start, chain, class_ids, _rng(seed, index, "clicks")
            )
        )
    return out


def _click_chain(
    predictor,
    emb,
    original,
    ps: PromptSet,
    dec,
    chain: Sequence[PromptSetting],
    class_ids: Sequence[int],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Add one corrective click per object and round, feeding the previous logits back."""
    out: dict[str, np.ndarray] = {}
    points, labels = np.asarray(ps.points), np.asarray(ps.point_labels)
    targets = np.asarray(ps.targets)
    wanted = {s.clicks: s.key for s in chain}
    for r in range(1, max(wanted) + 1):
        new_pts = np.zeros((len(ps), 1, 2), np.float32)
        new_lab = np.full((len(ps), 1), PAD_LABEL, np.int64)  # a perfect object gets no click
        for i in range(len(ps)):
            click = corrective_click(dec.logits[i].numpy() > 0, targets[i], rng)
            if click is not None:
                new_pts[i, 0], new_lab[i, 0] = click[:2], click[2]
        points = np.concatenate([points, new_pts], axis=1)
        labels = np.concatenate([labels, new_lab], axis=1)
        step = PromptSet(points, labels, None, None, ps.class_ids)
        dec = decode(predictor, emb, step, original, input_masks=dec.lowres)
        if r in wanted:
            out[wanted[r]] = class_masks(dec.logits, ps.class_ids, class_ids)
    return out


# ---- the table --------------------------------------------------------------------------------
def _dice(summary: dict) -> dict[str, Any]:
    return {
        "per_class": {c: e["dice"]["mean"] for c, e in summary["per_class"].items()},
        "foreground_mean": summary["foreground_mean"]["dice"]["mean"],
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def build_prompt_table(
    settings: Sequence[PromptSetting],
    summaries: dict[str, dict],
    main_key: str,
    *,
    seed: int,
    baseline: dict[str, dict] | None = None,
) -> dict:
    """The per-setting Dice (and baseline Dice and delta when given) as a JSON-ready dict."""
    first = summaries[settings[0].key]
    rows = []
    for s in settings:
        row: dict[str, Any] = {
            "key": s.key,
            "setting": s.label,
            "gt_derived_prompts": True,
            "corrective_clicks": s.clicks,
            "main": s.key == main_key,
            "dice": _dice(summaries[s.key]),
            "summary": summaries[s.key],
        }
        if baseline is not None:
            b = _dice(baseline[s.key])
            row["baseline_dice"] = b
            row["delta_dice"] = {
                "per_class": {
                    c: _minus(v, b["per_class"][c]) for c, v in row["dice"]["per_class"].items()
                },
                "foreground_mean": _minus(row["dice"]["foreground_mean"], b["foreground_mean"]),
            }
        rows.append(row)
    return {
        "note": GT_NOTE,
        "seed": seed,
        "empty_policy": first["empty_policy"],
        "n_cases": first["n_cases"],
        "class_names": first["class_names"],
        "main_setting": main_key,
        "rows": rows,
    }


def format_prompt_table(table: dict) -> Table:
    """The prompt table as a rich table: Dice per class and foreground mean per setting."""
    t = Table(
        title=f"Dice per prompt setting ({table['n_cases']} cases, GT-derived prompts, "
        f"empty policy: {table['empty_policy']})",
        caption=table["note"],
    )
    t.add_column("setting", justify="left")
    t.add_column("prompts", justify="left")
    names = table["class_names"]
    for cid, name in names.items():
        t.add_column(f"Dice {cid} {name}", justify="right")
    t.add_column("Dice fg mean", justify="right")
    has_base = any("baseline_dice" in r for r in table["rows"])
    if has_base:
        t.add_column("baseline fg", justify="right")
        t.add_column("Δ fg", justify="right")

    def cell(v: float | None, signed: bool = False) -> str:
        return "-" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")

    for r in table["rows"]:
        cells = [r["setting"] + (" *" if r["main"] else ""), "GT-derived"]
        cells += [cell(r["dice"]["per_class"].get(c)) for c in names]
        cells.append(cell(r["dice"]["foreground_mean"]))
        if has_base:
            cells += [
                cell(r["baseline_dice"]["foreground_mean"]),
                cell(r["delta_dice"]["foreground_mean"], signed=True),
            ]
        t.add_row(*cells, style="bold" if r["main"] else None)
    return t


def write_prompt_table(table: dict, path: str | Path) -> Path:
    """prompt_table.json (undefined values as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_clean(table), indent=2, allow_nan=False) + "\n")
    return path


__all__ = [
    "GT_NOTE",
    "PromptSetting",
    "build_prompt_table",
    "format_prompt_table",
    "predict_settings",
    "table_settings",
    "write_prompt_table",
]
