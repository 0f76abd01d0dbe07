"""Summary policies, CSV/JSON files, the rich table and baseline deltas."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from rich.console import Console

from sam_medft.errors import SamMedftError
from sam_medft.eval.metrics import ROW_KEYS, case_metrics
from sam_medft.eval.summary import (
    compare,
    format_comparison,
    format_table,
    load_summary_json,
    read_per_case_csv,
    summarize,
    write_per_case_csv,
    write_summary_json,
)

NAMES = {1: "liver", 2: "tumour"}


def mask(*boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    m = np.zeros((24, 24), dtype=np.int64)
    for label, r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = label
    return m


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """4 cases: class 1 always present; class 2 gives one of each empty category."""
    cases = {
        # name: (pred, gt)
        "a": (mask((1, 2, 12, 2, 12)), mask((1, 2, 12, 4, 14))),  # c1 Dice 0.8, c2 both_empty
        "b": (mask((1, 2, 12, 2, 12), (2, 15, 20, 15, 20)), mask((1, 2, 12, 2, 12))),  # c2 FP
        "c": (mask((1, 2, 12, 2, 12)), mask((1, 2, 12, 2, 12), (2, 15, 20, 15, 20))),  # c2 miss
        "d": (
            mask((1, 2, 12, 2, 12), (2, 15, 20, 15, 20)),
            mask((1, 2, 12, 2, 12), (2, 15, 20, 16, 21)),
        ),  # c2 normal: 5x4 overlap of two 5x5 -> Dice 0.8
    }
    out = []
    for name, (pred, gt) in cases.items():
        out += case_metrics(pred, gt, [1, 2], case=name, class_names=NAMES)
    return out


def test_exclude_policy(rows):
    s = summarize(rows, NAMES, "exclude")
    assert s["empty_policy"] == "exclude" and "left out" in s["policy_description"]
    c1, c2 = s["per_class"]["1"], s["per_class"]["2"]
    assert c1["dice"]["mean"] == pytest.approx((0.8 + 1 + 1 + 1) / 4) and c1["dice"]["n"] == 4
    # c2: both_empty left out; FP and miss count 0; normal 0.8
    assert c2["dice"]["n"] == 3
    assert c2["dice"]["mean"] == pytest.approx(0.8 / 3)
    assert c2["dice"]["median"] == pytest.approx(0.0)
    assert c2["dice"]["std"] == pytest.approx(np.std([0.0, 0.0, 0.8]))
    assert c2["nsd"]["n"] == 3
    assert c2["empty_cases"] == {"normal": 1, "both_empty": 1, "false_positive": 1, "miss": 1}
    # HD95 only where both sides are non-empty
    assert c2["hd95"]["n"] == 1 and c2["hd95"]["n_undefined"] == 3
    assert c1["hd95"]["n_undefined"] == 0
    fg = s["foreground_mean"]
    assert fg["dice"]["mean"] == pytest.approx((c1["dice"]["mean"] + c2["dice"]["mean"]) / 2)
    assert fg["dice"]["n"] == 2 and fg["n_classes"] == 2
    assert fg["empty_cases"]["both_empty"] == 1 and fg["hd95"]["n_undefined"] == 3
    assert s["n_cases"] == 4


def test_count_policy(rows):
    s = summarize(rows, NAMES, "count")
    c2 = s["per_class"]["2"]
    assert s["empty_policy"] == "count"
    assert c2["dice"]["n"] == 4
    assert c2["dice"]["mean"] == pytest.approx((1.0 + 0.0 + 0.0 + 0.8) / 4)
    assert c2["iou"]["mean"] == pytest.approx((1.0 + 0.0 + 0.0 + 20 / 30) / 4)
    row_d = next(r for r in rows if r["case"] == "d" and r["class_id"] == 2)
    assert c2["nsd"]["mean"] == pytest.approx((1.0 + 0.0 + 0.0 + row_d["nsd"]) / 4)
    assert c2["hd95"]["n"] == 1  # HD95 does not depend on the policy


def test_all_both_empty_class_has_no_mean_under_exclude():
    empty = np.zeros((8, 8), dtype=np.int64)
    rows = case_metrics(empty, empty, [1], case="x")
    s = summarize(rows, {1: "a"}, "exclude")
    assert s["per_class"]["1"]["dice"] == {"mean": None, "std": None, "median": None, "n": 0}
    assert s["foreground_mean"]["dice"]["mean"] is None
    assert summarize(rows, {1: "a"}, "count")["per_class"]["1"]["dice"]["mean"] == 1.0


def _resolved(value: str, kind: str, policy: str) -> float | None:
    if kind == "both_empty":
        return 1.0 if policy == "count" else None
    if kind in ("false_positive", "miss"):
        return 0.0
    return float(value)


@pytest.mark.parametrize("policy", ["exclude", "count"])
def test_summary_means_equal_csv_means(rows, tmp_path, policy):
    path = write_per_case_csv(rows, tmp_path / "per_case.csv")
    with path.open(newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert list(lines[0]) == list(ROW_KEYS)
    assert len(lines) == 8
    both = next(r for r in lines if r["empty_case"] == "both_empty")
    assert both["dice"] == "" and both["hd95"] == ""  # undefined -> empty cell, not "nan"
    s = summarize(rows, NAMES, policy)
    for cid in ("1", "2"):
        mine = [r for r in lines if r["class_id"] == cid]
        for metric in ("dice", "iou", "nsd"):
            vals = [_resolved(r[metric], r["empty_case"], policy) for r in mine]
            vals = [v for v in vals if v is not None]
            assert s["per_class"][cid][metric]["mean"] == pytest.approx(np.mean(vals))
        hd = [float(r["hd95"]) for r in mine if r["hd95"] != ""]
        assert s["per_class"][cid]["hd95"]["mean"] == pytest.approx(np.mean(hd))
    back = read_per_case_csv(path)
    assert summarize(back, NAMES, policy) == s


def test_summary_json_round_trip(rows, tmp_path):
    s = summarize(rows, NAMES, "exclude")
    extra = {"recipe": "demo", "model": "tiny", "split": "test", "prompt_mode": "auto"}
    path = write_summary_json(s, tmp_path / "eval" / "summary.json", extra)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["run"] == extra
    assert data["empty_policy"] == "exclude"
    assert data["per_class"]["2"]["empty_cases"]["miss"] == 1
    loaded = load_summary_json(path)
    assert {k: v for k, v in loaded.items() if k != "run"} == s


def test_load_summary_json_errors(tmp_path):
    with pytest.raises(SamMedftError, match="does not exist"):
        load_summary_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(SamMedftError, match="not a sam_medft summary"):
        load_summary_json(bad)


def test_format_table_lists_classes_and_policy(rows):
    table = format_table(summarize(rows, NAMES, "exclude"))
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "1 liver" in text and "2 tumour" in text and "foreground mean" in text
    assert "empty policy: exclude" in text
    assert "0.9500" in text  # class 1 mean Dice (0.8 + 1 + 1 + 1) / 4
    assert "(3 undef.)" in text


def test_compare_gives_finetuned_minus_baseline(rows):
    s = summarize(rows, NAMES, "exclude")
    perfect = [dict(r) for r in rows]
    for r in perfect:
        if r["empty_case"] == "normal":
            r["dice"] = 1.0
    base = summarize(perfect, NAMES, "exclude")
    delta = compare(s, base)
    assert delta["per_class"]["1"]["dice"] == pytest.approx(0.95 - 1.0)
    assert delta["per_class"]["2"]["dice"] == pytest.approx(0.8 / 3 - 1 / 3)
    assert delta["per_class"]["1"]["hd95"] == pytest.approx(0.0)
    assert delta["foreground_mean"]["dice"] == pytest.approx(
        s["foreground_mean"]["dice"]["mean"] - base["foreground_mean"]["dice"]["mean"]
    )
    console = Console(width=200, record=True)
    console.print(format_comparison(delta))
    assert "-0.0500" in console.export_text()


def test_compare_refuses_different_policy_or_classes(rows):
    s = summarize(rows, NAMES, "exclude")
    with pytest.raises(SamMedftError, match="same policy"):
        compare(s, summarize(rows, NAMES, "count"))
    only1 = summarize([r for r in rows if r["class_id"] == 1], {1: "liver"}, "exclude")
    with pytest.raises(SamMedftError, match="same label set"):
        compare(s, only1)


def test_summarize_user_errors(rows):
    with pytest.raises(SamMedftError, match="'exclude'"):
        summarize(rows, NAMES, "ignore")
    with pytest.raises(SamMedftError, match=r"class ids \[2\]"):
        summarize(rows, {1: "liver"})


def test_nan_is_only_in_raw_rows(rows):
    assert any(math.isnan(r["dice"]) for r in rows)
    s = summarize(rows, NAMES, "exclude")
    assert "nan" not in json.dumps(s).lower()


def test_never_predicted_class_is_named_in_summary_and_table(rows, tmp_path):
    """Issue 14: a class the model predicts on no case is said so (summary.json + table)."""
    s = summarize(rows, NAMES, "exclude")
    assert s["never_predicted"] == []  # tumour is predicted in cases b and d
    assert s["per_class"]["2"]["predicted_cases"] == 2
    missed = _tumour_never_predicted()
    s = summarize(missed, NAMES, "exclude")
    tumour = s["per_class"]["2"]
    assert tumour["never_predicted"] is True and s["per_class"]["1"]["never_predicted"] is False
    assert tumour["predicted_cases"] == 0 and tumour["reference_cases"] == 1
    assert s["never_predicted"] == [{"class_id": 2, "name": "tumour", "reference_cases": 1}]
    path = write_summary_json(s, tmp_path / "summary.json")
    assert load_summary_json(path)["never_predicted"][0]["name"] == "tumour"
    console = Console(width=200, record=True)
    console.print(format_table(s))
    text = console.export_text()
    assert "2 tumour (never predicted)" in text and "never predicted: 2 tumour" in text
    assert "tumour was never predicted on any of the 2 cases" in text
    assert "per image at its original size (2 cases" in text


def test_table_title_says_volumes_are_scored_in_3d_in_mm(rows):
    """A 3-D score per volume is never titled as a per-image one (and the other way round)."""
    s = summarize(rows, NAMES, "exclude")
    for volumes, says, never in ((True, "per volume in 3-D (HD95 and NSD in mm", "image"),
                                 (False, "per image at its original size", "volume")):
        title = format_table(s, volumes=volumes).title
        assert says in title and never not in title
    assert format_table(s, volumes=True).title.endswith(f"({s['n_cases']} volumes, empty "
                                                        "policy: exclude)")


def test_never_predicted_class_is_named_in_the_html_report(tmp_path):
    """The report page says it too, above the metrics (and says nothing when all are found)."""
    from sam_medft.eval.report import write_report

    missed = _tumour_never_predicted()
    page = write_report(tmp_path / "r1", summarize(missed, NAMES, "exclude"), missed, [], "t")
    text = page.read_text()
    assert 'id="never-predicted"' in text
    assert "<strong>tumour</strong> was never predicted on any of the 2 cases" in text
    found = [r for r in missed if r["class_id"] == 1]
    page = write_report(tmp_path / "r2", summarize(found, NAMES, "exclude"), found, [], "t")
    assert "never-predicted" not in page.read_text()


def _tumour_never_predicted() -> list[dict]:
    """Two cases: liver found in both, the tumour (in case a's reference) predicted in none."""
    rows = []
    for name, (pred, gt) in {
        "a": (mask((1, 2, 12, 2, 12)), mask((1, 2, 12, 2, 12), (2, 15, 20, 15, 20))),
        "b": (mask((1, 2, 12, 2, 12)), mask((1, 2, 12, 2, 12))),
    }.items():
        rows += case_metrics(pred, gt, [1, 2], case=name, class_names=NAMES)
    return rows
