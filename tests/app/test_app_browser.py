"""`sam-medft app` end to end: the real command serving on loopback, driven in real headless
Chromium. The downloaded label map must equal `sam_medft.load(run).predict(...)` for the
prompts the app shows; a bad file must give the app's error; the page must fetch nothing
from outside the app's own address."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sam_medft
from sam_medft.data.io import read_mask
from sam_medft.data.synthetic import write_synthetic
from sam_medft.data.synthetic_volumes import write_dicom_series
from sam_medft.data.volumes import read_volume

pytestmark = pytest.mark.slow

# coloured (overlay or marker) pixels of the shown image: grey pixels have r == g == b
COLOURED_JS = """(sel) => {
  const img = document.querySelector(sel);
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const out = [];
  for (let i = 0; i < d.length; i += 4) {
    const mx = Math.max(d[i], d[i+1], d[i+2]), mn = Math.min(d[i], d[i+1], d[i+2]);
    out.push(mx - mn > 40 ? 1 : 0);
  }
  return {w: c.width, h: c.height, coloured: out};
}"""


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> Path:
    """Synthetic slices like the demo's training data (test_001 is 128 x 96, landscape)."""
    out = tmp_path_factory.mktemp("slices")
    write_synthetic(out, n_train=1, n_val=1, n_test=4)
    return out


def _coloured(page, selector: str, size: tuple[int, int]) -> np.ndarray:
    """Which pixels of the (H, W) slice are shown coloured (the view enlarges the slice by
    a whole factor: one sample per slice pixel)."""
    page.wait_for_function(f"document.querySelector('{selector}')?.naturalWidth > 0")
    got = page.evaluate(COLOURED_JS, selector)
    shown = np.array(got["coloured"], dtype=bool).reshape(got["h"], got["w"])
    f = got["w"] // size[1]
    assert (got["h"], got["w"]) == (size[0] * f, size[1] * f), (got["h"], got["w"], size)
    return shown[f // 2::f, f // 2::f]


def _open(page, path: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(str(path))


def _click_pixel(page, x: int, y: int, size: tuple[int, int]) -> None:
    """Click the shown slice at its pixel (x, y) (size: (H, W)), where Gradio's click
    mapping (a centred picture, never enlarged by the browser) puts it."""
    img = page.locator("#view img")
    box = img.bounding_box()
    nat_w, nat_h = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    f = nat_w // size[1]
    r = min(box["width"] / nat_w, box["height"] / nat_h, 1)
    left = (box["width"] - nat_w * r) / 2
    top = (box["height"] - nat_h * r) / 2
    img.click(position={"x": left + (x * f + f / 2) * r, "y": top + (y * f + f / 2) * r})


def _prompts(page) -> list[dict]:
    text = page.locator("#prompts .cm-content").inner_text()
    return json.loads(text or "[]")


def _wait_prompts(page, check, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = _prompts(page)
            if check(got):
                return got
        except ValueError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"prompts never became as expected; last: {_prompts(page)}")
        time.sleep(0.2)


def _download(page, tmp_path: Path) -> Path:
    """Save the label map and download it (waits for the new file's link)."""
    links = "#saved a[download]"
    old = page.evaluate(f"document.querySelector('{links}')?.href ?? ''")
    page.click("#save")
    page.wait_for_function(
        f"(document.querySelector('{links}')?.href ?? '{old}') !== '{old}'", timeout=30000)
    link = page.locator(links).first
    with page.expect_download() as dl:
        link.click()
    target = tmp_path / dl.value.suggested_filename
    dl.value.save_as(target)
    return target


def _idle(page) -> None:
    """Wait until no Gradio event is running (before a screenshot a person will look at)."""
    page.wait_for_function("!document.querySelector('.pending, .generating') && "
                           "[...document.querySelectorAll('[data-testid=status-tracker]')]"
                           ".every(e => e.classList.contains('hide'))", timeout=30000)
    page.wait_for_timeout(300)  # the last picture is decoded and drawn


def _toast(page) -> str:
    page.wait_for_selector(".toast-body", timeout=30000)
    return "\n".join(page.locator(".toast-body").all_inner_texts())


def test_prompted_app_box_click_undo_download(box_run, browser, app_server, slices, tmp_path,
                                              screenshots):
    image = slices / "images" / "test_001.png"
    organ = read_mask(slices / "masks" / "test_001.png") == 128
    size = organ.shape
    ys, xs = np.nonzero(organ)
    corners = [(int(max(xs.min() - 3, 0)), int(max(ys.min() - 3, 0))),
               (int(min(xs.max() + 3, size[1] - 1)), int(min(ys.max() + 3, size[0] - 1)))]
    app = app_server([str(box_run)])
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(app.url)
    page.wait_for_selector("#upload")

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    _open(page, bad)
    message = _toast(page)
    page.screenshot(path=screenshots / "prompted_0_bad_file.png")
    assert "broken.png" in message and "cannot read this image" in message, message
    page.locator(".toast-body button, .toast-close").first.click()

    _open(page, image)
    page.wait_for_function("document.querySelector('#view img')?.naturalWidth > 0")
    assert page.locator("#status").inner_text().startswith("test_001.png")
    assert not _coloured(page, "#view img", size).any()  # no prompt yet: no mask, no marker

    page.get_by_label("box (two corners)").check()
    for x, y in corners:
        _click_pixel(page, x, y, size)
        time.sleep(0.5)  # the first corner's round trip, before the second click
    prompts = _wait_prompts(page, lambda p: bool(p) and "box" in p[0])
    x0, y0, x1, y1 = prompts[0]["box"]
    assert prompts[0]["label"] == 1
    # the click landed on the intended pixels (the image is shown ~4x enlarged)
    assert abs(x0 - corners[0][0]) <= 1 and abs(y0 - corners[0][1]) <= 1, prompts
    assert abs(x1 - corners[1][0]) <= 1 and abs(y1 - corners[1][1]) <= 1, prompts
    page.wait_for_function("document.querySelector('#status').innerText.includes('1 class')")
    coloured = _coloured(page, "#view img", size)
    inner = coloured[int(y0) + 3:int(y1) - 2, int(x0) + 3:int(x1) - 2]  # box outline off
    _idle(page)
    page.screenshot(path=screenshots / "prompted_1_box.png")
    assert inner.sum() > 0.3 * organ.sum(), (inner.sum(), organ.sum())

    page.get_by_label("positive point").check()
    cy, cx = (int(v) for v in np.median(np.nonzero(organ), axis=1))
    _click_pixel(page, cx, cy, size)
    refined = _wait_prompts(page, lambda p: bool(p and p[0].get("points")))
    assert refined[0]["point_labels"] == [1] and refined[0]["box"] == prompts[0]["box"]
    _idle(page)
    page.screenshot(path=screenshots / "prompted_2_point.png")
    page.click("#undo")
    assert _wait_prompts(page, lambda p: bool(p) and not p[0].get("points")) == prompts

    target = _download(page, tmp_path)
    page.screenshot(path=screenshots / "prompted_3_saved.png")
    assert target.name == "test_001_labels.png"
    saved = np.asarray(Image.open(target))
    expected = sam_medft.load(box_run).predict(image, prompts)
    assert saved.shape == expected.shape == size
    assert np.array_equal(saved, expected)
    assert (saved == 1).sum() > 0
    # paint a correction stroke with the first class's brush, apply: organ_a grows
    before = int((saved == 1).sum())
    page.get_by_text("paint corrections").click()
    page.click("#paint_start")
    canvas = page.locator("#paint canvas").first
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)  # the editor draws the picture
    area = canvas.bounding_box()
    cx, cy = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
    page.mouse.move(cx - 100, cy - 60)
    page.mouse.down()
    for i in range(21):
        page.mouse.move(cx - 100 + 10 * i, cy - 60)
    page.mouse.up()
    page.click("#paint_apply")
    page.wait_for_function(
        f"/organ_a \\((\\d+) px\\)/.exec(document.querySelector('#legend').innerText)"
        f"?.[1] > {before}")
    _idle(page)
    page.screenshot(path=screenshots / "prompted_4_corrected.png", full_page=True)
    corrected = np.asarray(Image.open(_download(page, tmp_path)))
    assert (corrected == 1).sum() > before and (corrected[expected == 1] == 1).all()

    outside = [u for u in requests if not u.startswith((app.url, "data:", "blob:"))]
    assert not outside, f"the page fetched from outside the app: {outside[:5]}"
    served = app.connections()  # the app's own process: only the loopback (AF_UNIX aside)
    assert not [c for c in served if c.startswith("(") and not c.startswith("('127.0.0.1'")]
    assert served, "the audit hook recorded nothing: the check above would be blind"


def test_automatic_app_compares_two_runs(demo_run, untrained_run, browser, app_server, slices,
                                         tmp_path, screenshots):
    image = slices / "images" / "test_002.png"
    other = untrained_run("none")
    app = app_server([str(demo_run), "--compare", str(other)])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app.url)
    page.wait_for_selector("#upload")
    assert "automatic mode" in page.inner_text("body")
    _open(page, image)
    expected = sam_medft.load(demo_run).predict(image)
    main = _coloured(page, "#view img", expected.shape)
    compared = _coloured(page, "#compare img", expected.shape)
    legend = page.inner_text("#legend")
    _idle(page)
    page.screenshot(path=screenshots / "automatic_compare.png")
    assert "organ_a" in legend and "organ_b" in legend
    assert main.shape == compared.shape == expected.shape
    assert main.sum() > 0 and (main == (expected > 0)).mean() > 0.99
    assert (compared != main).any()  # the untrained run's map is another
    target = _download(page, tmp_path)
    assert np.array_equal(np.asarray(Image.open(target)), expected)

    # a NIfTI volume: the slice slider appears; slice 3 is shown and saved in the volume
    nib = pytest.importorskip("nibabel")
    stack = np.stack([np.asarray(Image.open(slices / "images" / f"test_00{k}.png").convert("L"))
                      for k in (0, 2, 2)], axis=2)  # three 128 x 128 slices, rows = y
    volume = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(stack.transpose(1, 0, 2).astype(np.int16), np.diag([2, 2, 3, 1])),
             volume)
    _open(page, volume)
    page.wait_for_function("document.querySelector('#status').innerText.includes('of 3')")
    number = page.locator("#slice input[type=number]")
    number.fill("2")
    number.press("Enter")
    page.wait_for_function("document.querySelector('#status').innerText.includes('slice 3')")
    _idle(page)
    page.screenshot(path=screenshots / "automatic_volume.png")
    page.get_by_label("NIfTI").check()
    target = _download(page, tmp_path)
    saved = nib.load(target)
    assert saved.shape == (128, 128, 3) and np.allclose(saved.affine, np.diag([2, 2, 3, 1]))
    labels = np.asarray(saved.dataobj)
    assert np.array_equal(labels[:, :, 1], labels[:, :, 2]) and labels[:, :, 2].any()
    model = sam_medft.load(demo_run)
    assert np.array_equal(read_volume(target, label=True).array, model.predict_volume(volume))

    # a DICOM series through the folder picker: saved in its geometry, equal to predict_volume
    series = write_dicom_series(tmp_path / "series", stack.transpose(1, 0, 2), (0.7, 0.8, 3.0),
                                (-10.0, 20.0, -30.0))
    with page.expect_file_chooser() as chooser:
        page.click("#upload_folder")
    chooser.value.set_files(str(series))
    page.wait_for_function("document.querySelector('#status').innerText.includes('dicom_series')")
    _idle(page)
    page.screenshot(path=screenshots / "automatic_dicom_series.png")
    target = _download(page, tmp_path)
    assert target.name == "dicom_series_labels.nii.gz"
    assert np.allclose(nib.load(target).affine, read_volume(series).source_affine)
    assert np.array_equal(read_volume(target, label=True).array, model.predict_volume(series))

    page.get_by_text("opacity per class").click()  # organ_a hidden: only organ_b coloured
    opacity = page.locator("#opacity1 input[type=number]")
    opacity.fill("0")
    opacity.press("Enter")
    deadline = time.monotonic() + 30
    _open(page, image)
    page.wait_for_function("document.querySelector('#status').innerText.includes('of 1')")
    while not np.array_equal(shown := _coloured(page, "#view img", expected.shape),
                             expected == 2):
        assert time.monotonic() < deadline, (shown.sum(), (expected == 2).sum())
        time.sleep(0.3)
