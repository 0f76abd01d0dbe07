"""Aggregate per-case rows into a publishable summary (modelled on nnU-Net's summary.json).

The empty-case policy is applied here, once, and written into the summary, so a reader
knows whether empty/empty slices were counted as perfect or left out.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from sam_medft.errors import SamMedftError
from sam_medft.eval.metrics import EMPTY_CASES, ROW_KEYS

EMPTY_POLICIES = ("exclude", "count")
OVERLAP_METRICS = ("dice", "iou", "nsd")
METRICS = ("dice", "iou", "hd95", "nsd")

POLICY_TEXT = {
    "exclude": (
        "both_empty rows (class absent from reference and prediction) are left out of the "
        "Dice/IoU/NSD means; false positives and misses count as 0; HD95 is averaged over "
        "cases where both sides are non-empty."
    ),
    "count": (
        "both_empty rows count as Dice/IoU/NSD 1; false positives and misses count as 0; "
        "HD95 is averaged over cases where both sides are non-empty."
    ),
}


def _check_policy(empty_policy: str) -> str:
    if empty_policy not in EMPTY_POLICIES:
        raise SamMedftError(
            f"empty_policy={empty_policy!r} is not known: use 'exclude' (leave empty/empty "
            "slices out of the means) or 'count' (score them as 1)."
        )
    return empty_policy


def resolved_value(row: dict, metric: str, empty_policy: str) -> float | None:
    """The value a row contributes to the mean of ``metric`` under the policy, or None.

    Raw rows keep NaN for undefined values; this is the single place that turns them
    into the numbers that are averaged (and box-plotted in the report).
    """
    kind = row["empty_case"]
    if metric == "hd95":
        value = row["hd95"]
        return None if kind != "normal" or _isnan(value) else float(value)
    if kind == "both_empty":
        return 1.0 if empty_policy == "count" else None
    if kind in ("false_positive", "miss"):
        return 0.0
    value = row[metric]
    return None if _isnan(value) else float(value)


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _stats(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "median": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "median": float(np.median(arr)),
        "n": int(arr.size),
    }


def _class_names(rows: Sequence[dict], class_names: dict[int, str]) -> dict[int, str]:
    names = {int(k): str(v) for k, v in class_names.items()}
    unknown = sorted({int(r["class_id"]) for r in rows} - set(names))
    if unknown:
        raise SamMedftError(
            f"rows contain class ids {unknown} that are not in class_names {names}: add a name "
            "for every scored class (e.g. {1: 'liver'})."
        )
    return names


def summarize(
    rows: Sequence[dict], class_names: dict[int, str], empty_policy: str = "exclude"
) -> dict:
    """Per-class and foreground-mean statistics of the rows under ``empty_policy``.

    ``foreground_mean`` is nnU-Net's "mean over foreground classes": its mean/std/median
    are taken over the per-class means (classes without a defined mean are skipped).
    Undefined statistics are None so the dict is valid JSON as is.
    """
    _check_policy(empty_policy)
    names = _class_names(rows, class_names)
    per_class: dict[str, dict] = {}
    for cid in sorted(names):
        crow = [r for r in rows if int(r["class_id"]) == cid]
        entry: dict[str, Any] = {"name": names[cid], "n_rows": len(crow)}
        for metric in METRICS:
            vals = [v for r in crow if (v := resolved_value(r, metric, empty_policy)) is not None]
            entry[metric] = _stats(vals)
        entry["hd95"]["n_undefined"] = len(crow) - entry["hd95"]["n"]
        entry["empty_cases"] = {k: sum(r["empty_case"] == k for r in crow) for k in EMPTY_CASES}
        ec = entry["empty_cases"]
        # a case predicts the class unless its prediction is empty (both_empty, miss)
        entry["predicted_cases"] = len(crow) - ec["both_empty"] - ec["miss"]
        entry["reference_cases"] = ec["normal"] + ec["miss"]
        entry["never_predicted"] = bool(crow) and entry["predicted_cases"] == 0
        per_class[str(cid)] = entry

    fg: dict[str, Any] = {"n_classes": len(per_class)}
    for metric in METRICS:
        means = [e[metric]["mean"] for e in per_class.values() if e[metric]["mean"] is not None]
        fg[metric] = _stats(means)
    fg["hd95"]["n_undefined"] = sum(e["hd95"]["n_undefined"] for e in per_class.values())
    fg["empty_cases"] = {
        k: sum(e["empty_cases"][k] for e in per_class.values()) for k in EMPTY_CASES
    }
    return {
        "empty_policy": empty_policy,
        "policy_description": POLICY_TEXT[empty_policy],
        "n_cases": len({r["case"] for r in rows}),
        "class_names": {str(k): v for k, v in sorted(names.items())},
        "per_class": per_class,
        "foreground_mean": fg,
        # classes the model predicted on no case at all: their Dice of 0 (or undefined) is
        # no segmentation, not a poor one
        "never_predicted": [
            {"class_id": int(cid), "name": e["name"], "reference_cases": e["reference_cases"]}
            for cid, e in per_class.items()
            if e["never_predicted"]
        ],
    }


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def write_per_case_csv(rows: Iterable[dict], path: str | Path) -> Path:
    """One line per image and class; undefined values are empty cells (not 'nan')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ROW_KEYS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k, "")) for k in ROW_KEYS})
    return path


def read_per_case_csv(path: str | Path) -> list[dict]:
    """Rows written by ``write_per_case_csv``, with numbers parsed back (empty cell -> NaN)."""
    path = Path(path)
    if not path.is_file():
        raise SamMedftError(f"per-case CSV {path} does not exist: run `sam-medft eval` first.")
    floats = ("dice", "iou", "hd95", "nsd")
    ints = ("class_id", "tp", "fp", "fn", "gt_pixels", "pred_pixels")
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = dict(raw)
            for k in floats:
                row[k] = float(raw[k]) if raw[k] != "" else math.nan
            for k in ints:
                row[k] = int(raw[k])
            rows.append(row)
    return rows


def json_clean(obj: Any) -> Any:
    """`obj` as plain JSON values: NaN/inf -> null, numpy scalars -> numbers, paths -> text."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return json_clean(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_summary_json(summary: dict, path: str | Path, extra: dict | None = None) -> Path:
    """Write the summary with ``extra`` (recipe, model ids, split, prompt mode) under "run"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"run": json_clean(extra or {}), **json_clean(summary)}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def load_summary_json(path: str | Path) -> dict:
    """Read a summary.json (e.g. the ``--baseline`` one) and check it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise SamMedftError(
            f"summary file {path} does not exist: pass the summary.json written by "
            "`sam-medft eval` (runs/<name>/eval/summary.json)."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SamMedftError(f"summary file {path} is not valid JSON ({exc}): re-run eval.") from exc
    if not isinstance(data, dict) or not {"per_class", "foreground_mean", "empty_policy"} <= set(
        data
    ):
        raise SamMedftError(
            f"{path} is not a sam_medft summary (no per_class/foreground_mean/empty_policy): "
            "pass the summary.json written by `sam-medft eval`."
        )
    return data


def _fmt(stats: dict, digits: int = 4) -> str:
    if stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def metrics_scope(volumes: bool) -> str:
    """What one case's numbers measure, for titles and reports: a 3-D score per volume (the
    distances in mm) must never read as a per-image one, and the other way round."""
    if volumes:
        return "per volume in 3-D (HD95 and NSD in mm, from the voxel spacing)"
    return "per image at its original size"


def format_table(summary: dict, *, volumes: bool = False) -> Table:
    """The summary as a rich table (one line per class, then the foreground mean); `volumes`:
    the cases are volumes scored in 3-D (the title says so)."""
    cases = "volumes" if volumes else "cases"
    table = Table(
        title=f"Segmentation metrics {metrics_scope(volumes)} ({summary['n_cases']} {cases}, "
        f"empty policy: {summary['empty_policy']})",
        caption=summary["policy_description"],
    )
    for col in ("class", "Dice", "IoU", "HD95", "NSD", "n", "both empty", "false pos.", "miss"):
        table.add_column(col, justify="left" if col == "class" else "right")

    def line(label: str, entry: dict, n: str) -> list[str]:
        hd = _fmt(entry["hd95"], 2)
        if entry["hd95"].get("n_undefined"):
            hd += f" ({entry['hd95']['n_undefined']} undef.)"
        ec = entry["empty_cases"]
        return [
            label,
            _fmt(entry["dice"]),
            _fmt(entry["iou"]),
            hd,
            _fmt(entry["nsd"]),
            n,
            str(ec["both_empty"]),
            str(ec["false_positive"]),
            str(ec["miss"]),
        ]

    for cid, entry in summary["per_class"].items():
        label = f"{cid} {entry['name']}"
        if entry.get("never_predicted"):
            label += " (never predicted)"
        table.add_row(*line(label, entry, str(entry["dice"]["n"])))
    fg = summary["foreground_mean"]
    table.add_row(*line("foreground mean", fg, f"{fg['n_classes']} cl."), style="bold")
    for never in summary.get("never_predicted") or []:
        table.add_row(f"never predicted: {never['class_id']} {never['name']}", *[""] * 8,
                      style="bold red")
        table.caption = (
            f"{table.caption} {never['name']} was never predicted on any of the "
            f"{summary['n_cases']} cases (it is in the reference of {never['reference_cases']}): "
            "its Dice scores no segmentation at all, not a poor one."
        )
    return table


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def compare(summary: dict, baseline_summary: dict) -> dict:
    """Per-class and foreground-mean deltas of the means (fine-tuned minus baseline).

    Both summaries must share the empty policy and the classes: a delta across different
    policies or label sets would compare different quantities.
    """
    if summary["empty_policy"] != baseline_summary["empty_policy"]:
        raise SamMedftError(
            f"the baseline summary uses empty_policy={baseline_summary['empty_policy']!r} but "
            f"this one uses {summary['empty_policy']!r}: evaluate both with the same policy."
        )
    mine, base = set(summary["per_class"]), set(baseline_summary["per_class"])
    if mine != base:
        raise SamMedftError(
            f"the baseline summary has classes {sorted(base)} but this one has {sorted(mine)}: "
            "evaluate both on the same label set."
        )
    per_class = {}
    for cid, entry in summary["per_class"].items():
        other = baseline_summary["per_class"][cid]
        per_class[cid] = {"name": entry["name"]} | {
            m: _delta(entry[m]["mean"], other[m]["mean"]) for m in METRICS
        }
    fg, bfg = summary["foreground_mean"], baseline_summary["foreground_mean"]
    return {
        "empty_policy": summary["empty_policy"],
        "per_class": per_class,
        "foreground_mean": {m: _delta(fg[m]["mean"], bfg[m]["mean"]) for m in METRICS},
    }


def format_comparison(delta: dict, caption: str | None = None) -> Table:
    """The ``compare`` result as a rich table (positive Dice delta = fine-tuned is better);
    ``caption`` says what the baseline is (e.g. zero-shot with freshly initialised heads)."""
    table = Table(
        title=f"Fine-tuned minus baseline (empty policy: {delta['empty_policy']})",
        caption=caption,
    )
    for col in ("class", "Δ Dice", "Δ IoU", "Δ HD95", "Δ NSD"):
        table.add_column(col, justify="left" if col == "class" else "right")

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:+.4f}"

    for cid, entry in delta["per_class"].items():
        table.add_row(f"{cid} {entry['name']}", *(cell(entry[m]) for m in METRICS))
    fg = delta["foreground_mean"]
    table.add_row("foreground mean", *(cell(fg[m]) for m in METRICS), style="bold")
    return table
