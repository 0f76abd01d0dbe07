"""The web page (Gradio Blocks) and its handlers: thin glue between widgets and `Session`.

Why Gradio: it is the maintained Python web-UI library the Hugging Face stack already uses,
it serves the page itself from the installed package (no CDN, analytics off, bound to
loopback), and its image widget reports click positions in the image's own pixels, which is
what SAM's prompts are. Boxes are drawn as two corner clicks (Gradio has no drag-a-box
widget); corrections are painted with Gradio's image editor. A DICOM series is opened as
its folder (Gradio's `file_count="directory"`: the browser's folder picker), as its files
selected together, or as a .zip (`app.uploads`); no typed server path, so the page reads
nothing on the server that the person did not upload.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from sam_medft.app import render  # noqa: E402
from sam_medft.app.export import FORMATS, save_nifti, save_png  # noqa: E402
from sam_medft.app.scan import WINDOWS  # noqa: E402
from sam_medft.app.session import (  # noqa: E402
    CLICK_MODES,
    NO_CORRECTION,
    Engine,
    Session,
    is_prompted,
)
from sam_medft.app.uploads import staged_upload  # noqa: E402
from sam_medft.errors import SamMedftError  # noqa: E402

#: no web fonts: the page must not fetch anything from the network
THEME_FONTS = {"font": ["system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}
VIEW_HEIGHT = 520  # px on screen; the image keeps its own pixels for clicks and downloads
PAINT_ALPHA = 128
CACHE_CLEANUP = (600, 3600)  # s: every 10 minutes, delete uploads older than an hour
  # a painted pixel counts where the stroke's alpha reaches this


def _user_errors(fn: Callable) -> Callable:
    """A user mistake becomes the app's error popup (one message), not a traceback."""

    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SamMedftError as err:
            raise gr.Error(str(err), print_exception=False) from None

    return run


def painted_classes(layer: np.ndarray, n_classes: int) -> np.ndarray:
    """An RGBA paint layer -> HxW class ids where painted (the nearest class colour; black
    is background, i.e. erase) and NO_CORRECTION elsewhere."""
    layer = np.asarray(layer)
    if layer.ndim != 3 or layer.shape[2] < 4:
        return np.full(layer.shape[:2], NO_CORRECTION, np.int16)
    colours = np.array([render.class_colour(c) for c in range(n_classes)], dtype=np.int32)
    rgb = layer[..., :3].astype(np.int32)
    dist = ((rgb[..., None, :] - colours[None, None]) ** 2).sum(-1)
    ids = dist.argmin(-1).astype(np.int16)
    return np.where(layer[..., 3] >= PAINT_ALPHA, ids, NO_CORRECTION).astype(np.int16)


class AppPage:
    """One app: its engine, its output folder and the Blocks page."""

    def __init__(self, engine: Engine, out_dir: Path | None = None):
        self.engine = engine
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="sam_medft_app_"))
        self.classes = engine.main.class_names
        self.prompted = is_prompted(engine.main)

    # ---- handlers -------------------------------------------------------------------------
    def picture(self, session: Session, m: int, window: str, opacity: list[float],
                labels: np.ndarray | None = None) -> np.ndarray:
        """Model m's view of the current slice: the overlay, enlarged, with the prompts."""
        scan = session.require_scan()
        image = scan.display_image(session.slice, self.engine.predictors[m].intensity, window)
        if labels is None:
            labels = self.engine.labels(session) if m == 0 else \
                self.engine.model_labels(m, session)
        f = render.display_factor(scan.shape)
        pic = render.enlarge(render.overlay(image, labels, opacity), f)
        if is_prompted(self.engine.predictors[m]):
            pic = render.with_prompts(pic, session.entries(), session.state().corner, f)
        return pic

    def compared(self, session: Session, window: str, opacity: list[float]):
        """The second run's view, or (None, why not) when the prompts do not fit it (its
        classes differ): the main view still works."""
        if len(self.engine.predictors) < 2:
            return None, ""
        try:
            return self.picture(session, 1, window, opacity), ""
        except SamMedftError as err:
            return None, f" The compared run cannot show these prompts: {err}"

    def refresh(self, session: Session | None, window: str, *opacity: float):
        """Everything that shows the current slice: views, legend, prompts, status."""
        if session is None or session.scan is None:
            return (None, None, render.legend_html(self.classes), "[]", "Open a scan to start.")
        labels = self.engine.labels(session)  # decoded once for the view and the counts
        main = self.picture(session, 0, window, list(opacity), labels)
        other, note = self.compared(session, window, list(opacity))
        counts = np.bincount(labels.ravel(), minlength=len(self.classes))
        scan = session.scan
        across = f" ({scan.slicing.axis}, RAS)" if scan.volume is not None else ""
        status = (f"{scan.name}: slice {session.slice + 1} of {len(scan)}{across}, "
                  f"{scan.shape[1]}x{scan.shape[0]} px; "
                  f"{sum(int(counts[c] > 0) for c in range(1, len(self.classes)))} class(es) "
                  f"shown.{note}")
        prompts = json.dumps(session.entries()) if self.prompted else "[]"
        return main, other, render.legend_html(self.classes, counts), prompts, status

    def open_file(self, upload, session: Session | None, *, folder: bool = False):
        """Open what an upload button sent: one file, the files of a DICOM series, a .zip of
        one, or (`folder`) a folder's files."""
        if not upload:
            raise SamMedftError("no file was received; choose a file to open")
        items = upload if isinstance(upload, list) else [upload]
        paths = [Path(u if isinstance(u, str) else u.name) for u in items]
        session = session or Session()
        fresh = Session()
        with staged_upload(paths, folder=folder) as (path, name):
            # an unreadable file leaves `session` as it was
            fresh.open(path, name=name, slicing=self.engine.slicing)
        session.scan, session.scan_key, session.slice, session.slices = (
            fresh.scan, fresh.scan_key, 0, {})
        n = len(session.scan)
        slider = gr.Slider(minimum=0, maximum=max(n - 1, 1), value=0, step=1,
                           visible=n > 1, interactive=n > 1)
        return session, slider

    def open_folder(self, upload, session: Session | None):
        return self.open_file(upload, session, folder=True)

    def go_to(self, session: Session | None, k: float):
        if session is not None and session.scan is not None:
            session.go_to(int(k))
        return session

    def click(self, session: Session | None, mode: str, class_name: str, evt: gr.SelectData):
        if session is None or session.scan is None:
            raise SamMedftError("open an image first, then click on it")
        if not self.prompted:
            raise SamMedftError(f"{self.engine.names[0]} is an automatic-mode run: it segments "
                                f"without prompts, so clicks do nothing; open a prompt-mode "
                                f"run to click")
        f = render.display_factor(session.scan.shape)  # shown enlarged f times
        x, y = (float(v // f) for v in evt.index[:2])
        session.click(x, y, mode, self.classes.index(class_name))
        try:
            self.engine.model_labels(0, session)  # a bad prompt fails here, shown as the error
        except SamMedftError:
            session.undo()
            raise
        return session

    def undo(self, session: Session | None):
        if session is not None and session.scan is not None and not session.undo():
            gr.Info("nothing to undo on this slice")
        return session

    def clear(self, session: Session | None):
        if session is not None and session.scan is not None:
            session.clear()
        return session

    def start_painting(self, session: Session | None, window: str, *opacity: float):
        if session is None or session.scan is None:
            raise SamMedftError("open an image first, then paint corrections on its mask")
        pic = self.picture(session, 0, window, list(opacity))
        return {"background": pic, "layers": [], "composite": pic}

    def apply_paint(self, session: Session | None, edited: dict | None):
        if session is None or session.scan is None:
            raise SamMedftError("open an image first, then paint corrections on its mask")
        layers = (edited or {}).get("layers") or []
        if not layers:
            raise SamMedftError("nothing painted: press 'Paint on this mask', paint with a "
                                "class colour (black erases to background), then apply")
        painted = np.full(session.scan.shape, NO_CORRECTION, np.int16)
        f = render.display_factor(session.scan.shape)
        for layer in layers:
            layer = np.asarray(layer)[f // 2::f, f // 2::f]  # painted on the enlarged view
            ids = painted_classes(layer, len(self.classes))
            if ids.shape != painted.shape:
                raise SamMedftError("the painting does not match the slice's size; press "
                                    "'Paint on this mask' again and repaint")
            painted = np.where(ids != NO_CORRECTION, ids, painted)
        session.correct(painted)
        return session

    def save(self, session: Session | None, fmt: str) -> str:
        if session is None or session.scan is None:
            raise SamMedftError("open an image first, then download its label map")
        if fmt not in FORMATS:
            raise SamMedftError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        scan = session.scan
        if fmt == "PNG":
            return str(save_png(self.engine.labels(session), scan, session.slice, self.out_dir))
        slices = [self.engine.labels(session, k) for k in range(len(scan))]
        return str(save_nifti(slices, scan, self.out_dir))

    # ---- page -----------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        names = self.engine.names
        mode = f"prompt mode ({self.engine.main.meta.prompt_mode})" if self.prompted else \
            "automatic mode"
        # uploads (patients' scans) are copied into Gradio's cache: drop them after an hour
        with gr.Blocks(title="sam-medft app", delete_cache=CACHE_CLEANUP,
                       analytics_enabled=False) as page:
            session = gr.State(None)
            gr.Markdown(f"### sam-medft: {names[0]} ({mode}, classes: "
                        f"{', '.join(self.classes[1:])})")
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    # any file is accepted: the app's own message names what it can open
                    upload = gr.UploadButton(
                        "Open a scan (PNG, TIFF, DICOM, NIfTI, series .zip)",
                        file_count="multiple", elem_id="upload", variant="primary")
                    upload_folder = gr.UploadButton("Open a DICOM series folder",
                                                    file_count="directory",
                                                    elem_id="upload_folder")
                    slider = gr.Slider(0, 1, value=0, step=1, label="slice", visible=False,
                                       elem_id="slice")
                    window = gr.Dropdown(list(WINDOWS), value=next(iter(WINDOWS)),
                                         label="window / level", elem_id="window")
                    if self.prompted:
                        klass = gr.Dropdown(self.classes[1:], value=self.classes[1],
                                            label="class of the object", elem_id="klass")
                        click_mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0],
                                              label="a click on the image adds",
                                              elem_id="click_mode")
                        with gr.Row():
                            undo = gr.Button("Undo", elem_id="undo")
                            clear = gr.Button("Clear", elem_id="clear")
                    with gr.Accordion("opacity per class", open=False):
                        opacity = [gr.Slider(0, 1, value=render.DEFAULT_OPACITY, step=0.05,
                                             label=f"{c} {name}", elem_id=f"opacity{c}")
                                   for c, name in enumerate(self.classes) if c > 0]
                    fmt = gr.Radio(list(FORMATS), value=FORMATS[0], label="label map format",
                                   elem_id="format")
                    save = gr.Button("Save label map", elem_id="save")
                    saved = gr.File(label="label map (click to download)", elem_id="saved",
                                    interactive=False)
                    prompts = gr.Code(label="prompts (for sam-medft predict --prompts)",
                                      language="json", interactive=False, elem_id="prompts",
                                      visible=self.prompted)
                with gr.Column(scale=2):
                    status = gr.Markdown("Open a scan to start.", elem_id="status")
                    with gr.Row():
                        view = gr.Image(label=names[0], interactive=False, elem_id="view",
                                        type="numpy", format="png", height=VIEW_HEIGHT)
                        other = gr.Image(label=names[1] if len(names) > 1 else "",
                                         interactive=False, elem_id="compare", type="numpy",
                                         format="png", visible=len(names) > 1,
                                         height=VIEW_HEIGHT)
                    legend = gr.HTML(render.legend_html(self.classes), elem_id="legend")
                    with gr.Accordion("paint corrections", open=False):
                        gr.Markdown("Paint with a class colour; black sets background (erase).")
                        editor = gr.ImageEditor(
                            elem_id="paint", sources=(), transforms=(), layers=False,
                            type="numpy", format="png", label="corrections",
                            brush=gr.Brush(colors=[render.hex_colour(c) for c in  # 0 last
                                                   [*range(1, len(self.classes)), 0]],
                                           color_mode="fixed"))
                        with gr.Row():
                            paint = gr.Button("Paint on this mask", elem_id="paint_start")
                            apply = gr.Button("Apply corrections", elem_id="paint_apply")

            shown = [view, other, legend, prompts, status]
            refresh = dict(fn=_user_errors(self.refresh), inputs=[session, window, *opacity],
                           outputs=shown)
            upload.upload(_user_errors(self.open_file), [upload, session],
                          [session, slider]).success(**refresh)
            upload_folder.upload(_user_errors(self.open_folder), [upload_folder, session],
                                 [session, slider]).success(**refresh)
            slider.change(_user_errors(self.go_to), [session, slider], session) \
                .success(**refresh)
            for control in [window, *opacity]:
                control.change(**refresh)
            if self.prompted:
                view.select(_user_errors(self.click), [session, click_mode, klass], session) \
                    .then(**refresh)
                undo.click(_user_errors(self.undo), session, session).then(**refresh)
                clear.click(_user_errors(self.clear), session, session).then(**refresh)
            paint.click(_user_errors(self.start_painting), [session, window, *opacity], editor)
            apply.click(_user_errors(self.apply_paint), [session, editor], session) \
                .success(**refresh)
            save.click(_user_errors(self.save), [session, fmt], saved)
        return page


__all__ = ["AppPage", "THEME_FONTS", "painted_classes"]
