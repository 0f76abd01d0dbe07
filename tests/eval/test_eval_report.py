"""Overlays, case picking and the self-contained HTML report (checked in real Chromium)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_medft.errors import SamMedftError
from sam_medft.eval.metrics import case_metrics
from sam_medft.eval.report import (
    GT_COLOR,
    PRED_COLOR,
    overlay_path,
    pick_cases,
    render_overlay,
    write_report,
)
from sam_medft.eval.summary import summarize

NAMES = {1: "liver", 2: "tumour"}


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])


def _color_pixels(png: Path, hex_color: str, tol: int = 60) -> int:
    arr = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(arr - _rgb(hex_color)).sum(axis=2) < tol).sum())


@pytest.fixture(scope="module")
def dataset():
    """6 cases of 40x48 with varying errors; image intensity follows the reference."""
    rng = np.random.default_rng(0)
    data, rows = {}, []
    for i in range(6):
        gt = np.zeros((40, 48), dtype=np.int64)
        gt[8:28, 10:30] = 1
        pred = np.zeros_like(gt)
        pred[8 + i : 28 + i, 10 + i : 30] = 1
        if i % 2:
            gt[30:36, 36:44] = 2
            pred[31:37, 36:44] = 2
        gray = np.clip(gt * 70 + rng.normal(50, 15, gt.shape), 0, 255).astype(np.uint8)
        image = np.repeat(gray[..., None], 3, axis=2)
        case = f"patient{i}/slice {i}"
        data[case] = (image, gt, pred)
        rows += case_metrics(pred, gt, [1, 2], case=case, class_names=NAMES)
    return data, rows


def test_pick_cases_worst_and_best_per_class(dataset):
    _, rows = dataset
    picks = pick_cases(rows, k=2)
    c1 = [p for p in picks if p["class_id"] == 1]
    assert [p["pick"] for p in c1] == ["worst", "worst", "best", "best"]
    assert [p["case"] for p in c1] == [
        "patient5/slice 5",
        "patient4/slice 4",
        "patient0/slice 0",
        "patient1/slice 1",
    ]
    # class 2: 3 cases have a defined Dice (3 are both_empty, NaN): each appears once
    c2 = [p for p in picks if p["class_id"] == 2]
    assert len(c2) == 3 and len({p["case"] for p in c2}) == 3
    assert [p["pick"] for p in c2] == ["worst", "worst", "best"]
    assert "pick" not in rows[0]  # rows are not modified


def test_render_overlay_draws_both_contours(tmp_path, dataset):
    data, _ = dataset
    image, gt, pred = data["patient3/slice 3"]
    out = render_overlay(image, gt, pred, [1], tmp_path / "o.png", title="case 3")
    assert Image.open(out).format == "PNG"
    assert _color_pixels(out, GT_COLOR) > 50
    assert _color_pixels(out, PRED_COLOR) > 50
    # no prediction: the prediction colour only appears in the legend sample
    empty = render_overlay(image, gt, np.zeros_like(gt), [1], tmp_path / "e.png")
    assert _color_pixels(empty, PRED_COLOR) < _color_pixels(out, PRED_COLOR) / 3


def test_render_overlay_rejects_bad_image(tmp_path, dataset):
    data, _ = dataset
    image, gt, pred = data["patient0/slice 0"]
    with pytest.raises(SamMedftError, match="uint8 RGB"):
        render_overlay(image.astype(np.float32), gt, pred, [1], tmp_path / "x.png")
    with pytest.raises(SamMedftError, match="original resolution"):
        render_overlay(image, gt[:-1], pred, [1], tmp_path / "x.png")


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data") and value is not None:
                self.refs.append((tag, name, value))


@pytest.fixture(scope="module")
def report(tmp_path_factory, dataset) -> Path:
    data, rows = dataset
    eval_dir = tmp_path_factory.mktemp("eval")
    overlays = []
    for pick in pick_cases(rows, k=1):
        image, gt, pred = data[pick["case"]]
        overlays.append(
            render_overlay(image, gt, pred, [pick["class_id"]], overlay_path(eval_dir, pick))
        )
    summary = summarize(rows, NAMES, "exclude")
    return write_report(
        eval_dir,
        summary,
        rows,
        overlays,
        "Eval <tiny> & friends",
        extra={"recipe": "demo", "split": "test"},
    )


def test_report_is_self_contained(report):
    assert report.name == "report.html"
    text = report.read_text()
    parser = _Refs()
    parser.feed(text)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "@import" not in text and "url(" not in text
    images = [v for tag, _, v in parser.refs if tag == "img"]
    assert len(images) == 1 + 4  # box plot + worst/best of 2 classes
    assert all(v.startswith("data:image/png;base64,") for _, _, v in parser.refs)
    for uri in images:
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    assert "Eval &lt;tiny&gt; &amp; friends" in text
    assert "Empty-case policy: exclude" in text
    assert "worst · class 1 liver · case patient5/slice 5 · Dice" in text


def test_report_missing_overlay_is_a_clear_error(tmp_path, dataset):
    _, rows = dataset
    with pytest.raises(SamMedftError, match="render_overlay"):
        write_report(tmp_path, summarize(rows, NAMES), rows, [tmp_path / "gone.png"], "t")


PAGE_STATE = """({
  images: [...document.images].map(i => [i.complete, i.naturalWidth]),
  summaryRows: [...document.querySelectorAll('#summary tbody tr')].map(
      r => [...r.cells].map(c => c.textContent.trim())),
  emptyRows: document.querySelectorAll('#empty-cases tbody tr').length,
  title: document.title,
  height: document.documentElement.scrollHeight,
})"""


def test_report_renders_in_chromium(chromium_page, report, dataset):
    page = chromium_page(report, PAGE_STATE)
    assert page.errors() == []
    state = page.value
    assert state["title"] == "Eval <tiny> & friends"
    assert len(state["images"]) == 5
    assert all(complete and width > 0 for complete, width in state["images"])
    labels = [row[0] for row in state["summaryRows"]]
    assert labels == ["1 liver", "2 tumour", "mean over foreground classes"]
    expected = summarize(dataset[1], NAMES, "exclude")["per_class"]["1"]["dice"]["mean"]
    assert state["summaryRows"][0][1] == f"{expected:.4f}"
    assert 0.3 < expected < 0.95
    assert state["emptyRows"] == 3
    assert state["height"] > 800


def test_chromium_check_catches_a_broken_page(chromium_page, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><title>x</title><img src="missing.png">')
    page = chromium_page(bad, "[...document.images].map(i => i.naturalWidth)")
    assert page.value == [0]
    assert any("missing.png" in e for e in page.errors())


LONG_DIR = "hospital_A/ct_abdomen_2019_portal_venous_phase/" + "x" * 60


@pytest.fixture(scope="module")
def long_names_report(tmp_path_factory, dataset) -> Path:
    """Cases named by long paths with an image suffix, as a CSV split names them."""
    data, rows = dataset
    rename = {case: f"{LONG_DIR}/{case.replace(' ', '_')}.png" for case in data}
    rows = [dict(r, case=rename[r["case"]]) for r in rows]
    eval_dir = tmp_path_factory.mktemp("eval_long")
    overlays = []
    for pick in pick_cases(rows, k=2):
        image, gt, pred = data[next(c for c, n in rename.items() if n == pick["case"])]
        title = f"{pick['pick']} · class {pick['class_id']} · {pick['case']}"
        path = overlay_path(eval_dir, pick)
        overlays.append(render_overlay(image, gt, pred, [pick["class_id"]], path, title=title))
    summary = summarize(rows, NAMES, "exclude")
    return write_report(eval_dir, summary, rows, overlays, "Long case names",
                        extra={"model": "/very/long/" + "y" * 150})


def test_overlay_files_are_named_case_png(long_names_report):
    names = sorted(p.name for p in (long_names_report.parent / "overlays").iterdir())
    assert len(names) == 7  # class 1: 2 worst + 2 best; class 2: 3 scored cases
    assert not [n for n in names if n.endswith(".png.png")], names
    assert "worst_class1_" + LONG_DIR.replace("/", "_") + "_patient5_slice_5.png" in names
    # the caption still finds its row from the file name
    assert f"case {LONG_DIR}/patient5/slice_5.png · Dice" in long_names_report.read_text()


def test_render_overlay_title_is_above_the_image(tmp_path, dataset):
    """The title band sits on top of the picture; the image pixels are all still visible."""
    data, _ = dataset
    image, gt, pred = data["patient3/slice 3"]
    plain = np.asarray(Image.open(render_overlay(image, gt, pred, [1], tmp_path / "a.png")))
    titled = np.asarray(
        Image.open(render_overlay(image, gt, pred, [1], tmp_path / "b.png", title="T" * 30))
    )
    extra = titled.shape[0] - plain.shape[0]
    assert extra >= 20 and titled.shape[1] == plain.shape[1]
    assert np.array_equal(titled[extra:], plain)  # the image part is untouched by the title


LAYOUT = """(() => {
  const r = e => { const b = e.getBoundingClientRect();
                   return [b.left, b.top, b.right, b.bottom]; };
  return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    images: [...document.querySelectorAll('.overlays img')].map(
        i => [i.complete, i.naturalWidth, ...r(i)]),
    captions: [...document.querySelectorAll('.overlays figcaption')].map(r),
    sticky: [...document.querySelectorAll('body *')].filter(
        e => ['sticky', 'fixed'].includes(getComputedStyle(e).position)).length,
  };
})()"""


@pytest.mark.parametrize("width", [1280, 1920])
def test_report_layout_fits_the_viewport(chromium_page, long_names_report, tmp_path, width):
    shot = tmp_path / f"report_{width}.png"
    page = chromium_page(long_names_report, LAYOUT, width=width, screenshot=shot)
    assert page.errors() == []
    s = page.value
    assert s["innerWidth"] == width
    assert s["scrollWidth"] <= s["innerWidth"]  # no horizontal scrollbar
    assert len(s["images"]) == 7
    for complete, natural, left, _, right, _ in s["images"]:
        assert complete and natural > 0
        assert 0 <= left < right <= width  # every overlay fully inside the viewport
    boxes = s["captions"]
    for i, a in enumerate(boxes):
        assert a[2] <= width
        for b in boxes[i + 1 :]:
            overlap_x = min(a[2], b[2]) - max(a[0], b[0])
            overlap_y = min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_x <= 0 or overlap_y <= 0, (a, b)
    assert s["sticky"] == 0  # nothing pinned over the images
    assert width - 20 <= Image.open(shot).size[0] <= width  # less a vertical scrollbar
