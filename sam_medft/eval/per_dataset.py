"""Scoring a Setup 2 mixture: each data set on the classes it labels, and the whole.

A case from a data set that does not label a class says nothing about that class (its
"background" there may be the class), so those rows are dropped before any summary; then
each data set gets its own summary next to the overall one.
"""

from __future__ import annotations

from collections.abc import Sequence

from sam_medft.data.mixture import ConcatSource
from sam_medft.eval.summary import summarize


def labelled_rows(source: ConcatSource, rows: Sequence[dict]) -> list[dict]:
    """The rows of classes their case's data set labels."""
    valid = source.valid_classes()
    part = {n: k for k, n in enumerate(source.part_names)}
    return [r for r in rows if valid[part[str(r["case"]).split("/", 1)[0]], int(r["class_id"])]]


def per_dataset_summaries(source: ConcatSource, rows: Sequence[dict], class_names: dict[int, str],
                          policy: str) -> dict[str, dict]:
    """{data set name: summary of its cases over the classes it labels}."""
    valid = source.valid_classes()
    out = {}
    for k, name in enumerate(source.part_names):
        mine = [r for r in rows if str(r["case"]).startswith(f"{name}/")]
        if mine:
            names = {c: n for c, n in class_names.items() if valid[k, c]}
            out[name] = summarize(mine, names, policy)
    return out
