"""A self-contained HTML evaluation report: summary table, Dice box plot, overlays.

One file, images embedded as data URIs and no scripts, so it can be mailed, attached to
a model card or opened offline. Figures use matplotlib's object API (``Figure``) so the
user's pyplot backend and state are never touched.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image as PILImage

from sam_medft.errors import SamMedftError
from sam_medft.eval.metrics import HD95_DEFINITION, NSD_DEFINITION
from sam_medft.eval.summary import metrics_scope, resolved_value

GT_COLOR = "#00e676"  # green, solid: reference
PRED_COLOR = "#ff1fd2"  # magenta, dashed: prediction
_PICK_RE = re.compile(r"^(worst|best)_class(\d+)_(.+)$")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "case"


_IMAGE_SUFFIX_RE = re.compile(
    r"\.(png|jpe?g|tiff?|bmp|npy|npz|nii(\.gz)?|nrrd|mha|mhd|dcm)$", re.IGNORECASE
)


def _case_stem(case: str) -> str:
    """The case name for a file name: path separators to ``_``, an image suffix dropped
    (case ``ct/a.png`` gives ``ct_a``, so its overlay is ``..._ct_a.png``, not ``.png.png``)."""
    return _safe(_IMAGE_SUFFIX_RE.sub("", str(case)))


def overlay_path(eval_dir: str | Path, pick: dict) -> Path:
    """Where the overlay of a ``pick_cases`` row goes: ``overlays/<pick>_class<id>_<case>.png``;
    ``write_report`` captions it by name."""
    return (
        Path(eval_dir)
        / "overlays"
        / f"{pick['pick']}_class{pick['class_id']}_{_case_stem(pick['case'])}.png"
    )


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise SamMedftError(
            f"overlay image has shape {img.shape} and dtype {img.dtype}; it needs an (H, W, 3) "
            "uint8 RGB image: window/normalise the slice to 0..255 and stack it to 3 channels."
        )
    return img


def render_overlay(
    image: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    class_ids: Sequence[int],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Save the image with reference (solid green) and predicted (dashed magenta) contours."""
    img = _as_rgb(image)
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != img.shape[:2] or pred.shape != img.shape[:2]:
        raise SamMedftError(
            f"overlay shapes differ: image {img.shape[:2]}, reference {gt.shape}, prediction "
            f"{pred.shape}: pass all three at the original resolution."
        )
    h, w = img.shape[:2]
    scale = 5.12 / max(h, w)  # long side 512 px at dpi 100
    band = 0.28 if title else 0.0  # inches: the title goes above the image, never over it
    fig_h = h * scale + band
    fig = Figure(figsize=(w * scale, fig_h), dpi=100)
    ax = fig.add_axes((0, 0, 1, h * scale / fig_h))
    ax.imshow(img, interpolation="nearest")
    for c in class_ids:
        for mask, color, style in ((gt == c, GT_COLOR, "solid"), (pred == c, PRED_COLOR, "dashed")):
            if mask.any():
                m = np.pad(mask.astype(np.float32), 1)  # closes contours touching the border
                ax.contour(
                    np.arange(-1, w + 1),
                    np.arange(-1, h + 1),
                    m,
                    levels=[0.5],
                    colors=color,
                    linewidths=1.8,
                    linestyles=style,
                )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    handles = [
        Line2D([], [], color=GT_COLOR, lw=2, ls="solid", label="reference"),
        Line2D([], [], color=PRED_COLOR, lw=2, ls="dashed", label="prediction"),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.75)
    if title:
        fig.text(0.01, 1 - 0.5 * band / fig_h, title, va="center", ha="left", fontsize=9,
                 color="#1f2933")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


STRIP_SLICES = 5  # slices per volume overlay strip


def strip_slices(
    gt: np.ndarray, pred: np.ndarray, class_id: int, n: int = STRIP_SLICES
) -> list[int]:
    """Up to ``n`` slice indices evenly spread over the extent of the class in reference or
    prediction (both ends included), so a strip shows where the two agree and differ."""
    present = np.flatnonzero(((gt == class_id) | (pred == class_id)).any(axis=(1, 2)))
    if present.size == 0:
        return [gt.shape[0] // 2]
    picks = np.linspace(present[0], present[-1], num=min(n, present[-1] - present[0] + 1))
    return sorted({int(round(k)) for k in picks})


def render_volume_strip(
    gt: np.ndarray,
    pred: np.ndarray,
    class_id: int,
    path: str | Path,
    *,
    spacing: Sequence[float] | None = None,
    image: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """A strip of slices of a (slice, row, column) volume with reference (solid green) and
    predicted (dashed magenta) contours, each panel drawn at its true aspect (``spacing``
    in mm); ``image`` is the (slice, row, column) grey volume in 0..255 under them; without
    one the reference is shaded so the panels are not blank."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise SamMedftError(
            f"a volume strip needs reference and prediction volumes of one shape (slice, row, "
            f"column); got {gt.shape} and {pred.shape}"
        )
    ks = strip_slices(gt, pred, class_id)
    _, h, w = gt.shape
    aspect = float(spacing[1]) / float(spacing[2]) if spacing is not None else 1.0
    panel_w, panel_h = 2.6, 2.6 * min(3.0, max(0.33, h * aspect / w))
    band = 0.28 if title else 0.0
    fig = Figure(figsize=(panel_w * len(ks), panel_h + band + 0.22), dpi=100)
    for i, k in enumerate(ks):
        ax = fig.add_axes(
            (i / len(ks), 0.22 / fig.get_figheight(), 1 / len(ks) - 0.004,
             panel_h / fig.get_figheight())
        )
        if image is not None:
            ax.imshow(image[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest",
                      aspect=aspect)
        else:
            ax.imshow((gt[k] == class_id) * 0.35, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest", aspect=aspect)
        for mask, color, style in ((gt[k] == class_id, GT_COLOR, "solid"),
                                   (pred[k] == class_id, PRED_COLOR, "dashed")):
            if mask.any():
                m = np.pad(mask.astype(np.float32), 1)
                ax.contour(np.arange(-1, w + 1), np.arange(-1, h + 1), m, levels=[0.5],
                           colors=color, linewidths=1.5, linestyles=style)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_axis_off()
        fig.text((i + 0.5) / len(ks), 0.11 / fig.get_figheight(), f"slice {k}", ha="center",
                 va="center", fontsize=8, color="#52606d")
    if title:
        fig.text(0.005, 1 - 0.5 * band / fig.get_figheight(), title, va="center", ha="left",
                 fontsize=9, color="#1f2933")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def pick_cases(rows: Sequence[dict], k: int = 2) -> list[dict]:
    """Per class, the ``k`` lowest- and ``k`` highest-Dice cases (defined Dice only).

    Each returned row is a copy with ``pick`` set to "worst" or "best"; a class with fewer
    than 2k scored cases gives each case once (worst first).
    """
    picks: list[dict] = []
    for cid in sorted({int(r["class_id"]) for r in rows}):
        scored = [r for r in rows if int(r["class_id"]) == cid and not math.isnan(float(r["dice"]))]
        scored.sort(key=lambda r: (float(r["dice"]), str(r["case"])))
        worst = scored[:k]
        best = [r for r in reversed(scored[k:])][:k]
        picks += [dict(r, pick="worst") for r in worst] + [dict(r, pick="best") for r in best]
    return picks


def _png_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        path.suffix.lower()
    )
    if mime is None or not path.is_file():
        raise SamMedftError(
            f"overlay {path} is missing or not a PNG/JPEG: write it with render_overlay "
            "into eval_dir/overlays/ before calling write_report."
        )
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def dice_boxplot(summary: dict, rows: Sequence[dict]) -> str:
    """Per-class box plot of per-case Dice (values as averaged under the summary's policy)."""
    policy = summary["empty_policy"]
    labels, data = [], []
    for cid, entry in summary["per_class"].items():
        vals = [
            v
            for r in rows
            if str(r["class_id"]) == cid and (v := resolved_value(r, "dice", policy)) is not None
        ]
        labels.append(f"{cid} {entry['name']}\n(n={len(vals)})")
        data.append(vals)
    fig = Figure(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 3.6), dpi=100)
    ax = fig.add_subplot()
    positions = [i + 1 for i, d in enumerate(data) if d]
    if positions:
        ax.boxplot(
            [d for d in data if d],
            positions=positions,
            widths=0.5,
            showfliers=False,
            medianprops={"color": "#d81b60", "lw": 2},
        )
    rng = np.random.default_rng(0)  # fixed jitter: the same report every run
    for pos, vals in zip(positions, [d for d in data if d], strict=True):
        ax.scatter(pos + rng.uniform(-0.12, 0.12, len(vals)), vals, s=10, alpha=0.6, c="#1e88e5")
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_xlim(0.4, len(labels) + 0.6)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("Dice")
    ax.set_title(f"Per-case Dice per class (empty policy: {policy})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png_data_uri(fig)


def _num(stats: dict, key: str, digits: int = 4) -> str:
    v = stats.get(key)
    return "&ndash;" if v is None else f"{v:.{digits}f}"


def _never_predicted_notice(summary: dict) -> str:
    """A class the model predicted on no case: its Dice of 0 is no segmentation at all."""
    items = "".join(
        f"<li><strong>{html.escape(str(e['name']))}</strong> was never predicted on any of the "
        f"{summary['n_cases']} cases (it is in the reference of {e['reference_cases']}): its "
        f"Dice of 0 means no segmentation at all, not a poor one. Retrain with "
        f"<code>loss.class_weights</code> or a longer <code>train.max_steps</code>.</li>"
        for e in summary.get("never_predicted") or [])
    return f'<div class="never" id="never-predicted"><ul>{items}</ul></div>' if items else ""


def _summary_table(summary: dict, table_id: str = "summary") -> str:
    head = (
        "<tr><th>class</th><th>Dice mean</th><th>Dice std</th><th>Dice median</th><th>n</th>"
        "<th>IoU mean</th><th>NSD mean</th><th>HD95 mean</th><th>HD95 undefined</th></tr>"
    )

    def line(label: str, e: dict, n: str, cls: str = "") -> str:
        return (
            f"<tr{cls}><td>{html.escape(label)}</td><td>{_num(e['dice'], 'mean')}</td>"
            f"<td>{_num(e['dice'], 'std')}</td><td>{_num(e['dice'], 'median')}</td>"
            f"<td>{n}</td><td>{_num(e['iou'], 'mean')}</td><td>{_num(e['nsd'], 'mean')}</td>"
            f"<td>{_num(e['hd95'], 'mean', 2)}</td><td>{e['hd95'].get('n_undefined', 0)}</td></tr>"
        )

    body = [
        line(f"{cid} {e['name']}", e, str(e["dice"]["n"]))
        for cid, e in summary["per_class"].items()
    ]
    fg = summary["foreground_mean"]
    body.append(
        line("mean over foreground classes", fg, f"{fg['n_classes']} classes", ' class="fg"')
    )
    return f'<table id="{table_id}"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _empty_table(summary: dict) -> str:
    cols = ("normal", "both_empty", "false_positive", "miss")
    head = "<tr><th>class</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    body = []
    for cid, e in list(summary["per_class"].items()) + [("all", summary["foreground_mean"])]:
        label = "all classes" if cid == "all" else f"{cid} {e['name']}"
        cells = "".join(f"<td>{e['empty_cases'][c]}</td>" for c in cols)
        body.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    return f'<table id="empty-cases"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _strip_class(path: Path) -> str:
    """A strip of volume slices (much wider than tall) takes a whole row of the grid."""
    try:
        with PILImage.open(path) as img:
            w, h = img.size
    except OSError:
        return ""  # _file_data_uri names the problem
    return ' class="strip"' if w > 2 * h else ""


def _caption(path: Path, rows: Sequence[dict]) -> str:
    match = _PICK_RE.match(path.stem)
    if match:
        kind, cid, case = match.group(1), int(match.group(2)), match.group(3)
        for r in rows:
            if int(r["class_id"]) == cid and _case_stem(r["case"]) == case:
                hd = "undefined" if math.isnan(float(r["hd95"])) else f"{float(r['hd95']):.2f}"
                return (
                    f"{kind} · class {cid} {r['class_name']} · case {r['case']} · "
                    f"Dice {float(r['dice']):.3f} · HD95 {hd} · {r['empty_case']}"
                )
    return path.name


_CSS = """
*,*::before,*::after{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1f2933;line-height:1.45;overflow-wrap:anywhere}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #d9e2ec;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.92rem;margin:.5rem 0;display:block;max-width:100%;
overflow-x:auto}
th,td{border:1px solid #d9e2ec;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f0f4f8}
tr.fg td{font-weight:600;background:#fffbea}
.policy{background:#f0f4f8;border-left:4px solid #486581;padding:.5rem .8rem}
.never{background:#fdecea;border-left:4px solid #c0392b;padding:.3rem .8rem}
.meta td{text-align:left}
.overlays{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(300px,100%),1fr));
gap:1rem}
figure{margin:0;min-width:0}
figure.strip{grid-column:1/-1}
figure img{display:block;width:100%;max-width:100%;height:auto;border:1px solid #d9e2ec}
figcaption{font-size:.85rem;color:#52606d;overflow-wrap:anywhere;word-break:break-word}
img.plot{max-width:100%;height:auto}
"""


def _slice_section(slice_summary: dict | None) -> str:
    if slice_summary is None:
        return ""
    return (
        "<h2>Per-slice numbers</h2>\n<p>The same metrics on each 2-D slice along the slice "
        f"axis ({slice_summary['n_cases']} slices with a scored class in the reference or the "
        "prediction; in-plane spacing), as 2-D methods report them.</p>\n"
        + _summary_table(slice_summary, "slice-summary")
    )


def _signed(v: float | None, digits: int = 4) -> str:
    return "&ndash;" if v is None else f"{v:+.{digits}f}"


def _delta_section(delta: dict | None, note: str) -> str:
    """The ``summary.compare`` result (fine-tuned minus baseline) as a table with its caveat."""
    if delta is None:
        return ""
    head = (
        "<tr><th>class</th><th>&Delta; Dice</th><th>&Delta; IoU</th><th>&Delta; HD95</th>"
        "<th>&Delta; NSD</th></tr>"
    )

    def line(label: str, e: dict, cls: str = "") -> str:
        cells = "".join(
            f"<td>{_signed(e[m], 2 if m == 'hd95' else 4)}</td>"
            for m in ("dice", "iou", "hd95", "nsd")
        )
        return f"<tr{cls}><td>{html.escape(label)}</td>{cells}</tr>"

    body = [line(f"{cid} {e['name']}", e) for cid, e in delta["per_class"].items()]
    body.append(line("mean over foreground classes", delta["foreground_mean"], ' class="fg"'))
    return (
        "<h2>Fine-tuned minus baseline</h2>\n<p>Positive Dice/IoU/NSD and negative HD95 "
        "deltas mean the fine-tuned model is better.</p>\n"
        f'<p class="policy">{html.escape(note)}</p>\n'
        f'<table id="delta"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
    )


def _prompt_section(table: dict | None) -> str:
    """``prompt_eval.build_prompt_table``: Dice per prompt setting, GT-derived prompts."""
    if table is None:
        return ""
    names = table["class_names"]
    has_base = any("baseline_dice" in r for r in table["rows"])
    lead, _, rest = table["note"].partition(": ")  # "GT-derived prompts: ..." -> bold lead
    head = (
        "<tr><th>setting</th><th>prompts</th>"
        + "".join(f"<th>Dice {html.escape(f'{c} {n}')}</th>" for c, n in names.items())
        + "<th>Dice foreground mean</th>"
    )
    head += "<th>baseline foreground</th><th>&Delta; foreground</th></tr>" if has_base else "</tr>"
    body = []
    for r in table["rows"]:
        d = r["dice"]
        cells = "".join(f"<td>{_num({'mean': d['per_class'].get(c)}, 'mean')}</td>" for c in names)
        extra = ""
        if has_base:
            extra = (
                f"<td>{_num({'mean': r['baseline_dice']['foreground_mean']}, 'mean')}</td>"
                f"<td>{_signed(r['delta_dice']['foreground_mean'])}</td>"
            )
        cls = ' class="fg"' if r["main"] else ""
        label = r["setting"] + (" (main)" if r["main"] else "")
        body.append(
            f"<tr{cls}><td>{html.escape(label)}</td><td>GT-derived</td>{cells}"
            f"<td>{_num({'mean': d['foreground_mean']}, 'mean')}</td>{extra}</tr>"
        )
    return (
        "<h2>Dice per prompt setting</h2>\n"
        f'<p class="policy"><strong>{html.escape(lead)}:</strong> {html.escape(rest)} '
        f"Seed {table['seed']}; the main setting is the one in the summary above.</p>\n"
        f'<table id="prompt-table"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
    )


def write_report(
    eval_dir: str | Path,
    summary: dict,
    rows: Sequence[dict],
    overlays: Sequence[Path],
    title: str,
    extra: dict | None = None,
    *,
    delta: dict | None = None,
    delta_note: str = "",
    prompt_table: dict | None = None,
    slice_summary: dict | None = None,
) -> Path:
    """Write ``eval_dir/report.html``: one self-contained page (no scripts, no links out).

    ``slice_summary`` (volumes) adds the same metrics per 2-D slice beside the 3-D ones.

    ``delta`` (``summary.compare``) adds the baseline comparison with ``delta_note`` saying
    what the baseline is; ``prompt_table`` adds the per-prompt-setting Dice table.
    """
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    volumes = str((extra or {}).get("cases", "")).startswith("3-D")  # both runners say so
    units = "" if volumes else (
        "; HD95 is in the units of the pixel spacing (mm when the spacing is given in mm)")
    meta = ""
    if extra:
        cells = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in extra.items()
        )
        meta = f'<table class="meta" id="run">{cells}</table>'
    figures = "".join(
        f'<figure{_strip_class(Path(p))}><img src="{_file_data_uri(Path(p))}" '
        f'alt="{html.escape(Path(p).name)}">'
        f"<figcaption>{html.escape(_caption(Path(p), rows))}</figcaption></figure>"
        for p in overlays
    )
    overlay_section = (
        f'<div class="overlays">{figures}</div>' if figures else "<p>No overlays were rendered.</p>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>{summary["n_cases"]} cases, {len(summary["per_class"])} foreground classes.
Metrics {metrics_scope(volumes)} (Dice, IoU, HD95, normalised surface Dice){units}.</p>
<p class="policy" id="definitions">{html.escape(HD95_DEFINITION)}.<br>
{html.escape(NSD_DEFINITION)}.</p>
{meta}
<p class="policy"><strong>Empty-case policy: {html.escape(summary["empty_policy"])}.</strong>
{html.escape(summary["policy_description"])}</p>
{_never_predicted_notice(summary)}
<h2>Summary</h2>
{_summary_table(summary)}
{_slice_section(slice_summary)}
{_delta_section(delta, delta_note)}
{_prompt_section(prompt_table)}
<h2>Per-class Dice</h2>
<img class="plot" id="dice-boxplot" src="{dice_boxplot(summary, rows)}"
 alt="Box plot of per-case Dice per class">
<h2>Empty cases</h2>
<p>both_empty: class absent from reference and prediction; false_positive: predicted but
absent from the reference; miss: in the reference but not predicted.</p>
{_empty_table(summary)}
<h2>Worst and best cases</h2>
<p>Reference contours solid green, predicted contours dashed magenta.</p>
{overlay_section}
</body>
</html>
"""
    out = eval_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
