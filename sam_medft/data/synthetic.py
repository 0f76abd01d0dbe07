"""The built-in demo data set: MRI/CT-like 2-D slices with two organ classes.

Used by the offline demo and the tests, so nothing has to be downloaded. Each image is a
body ellipse with a smooth bias field and Rician-like noise; two "organs" (a bright,
granular ellipse and a moderately bright, smooth, lobed blob) are placed at random inside
it. Their mean intensity and texture differ from the surroundings so a tiny SAM learns them
in about a minute. Both organs are brighter than the body: a dark organ (between the dark
outside and the body) was not learned at all by the tiny SAM in the demo's step budget. The layout (CSV lists with `images/x.png,masks/x.png`, 8-bit label maps with raw
values 0/128/255) is the study's, so the demo also exercises the label mapping.
Everything is a pure function of the seed: two runs write byte-identical files.

The user's files are never replaced: the folder must be new or empty, or hold a data set this
module wrote (its `sam_medft_synth.json` lists the files; `overwrite=True` replaces those).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from sam_medft.errors import SamMedftError
from sam_medft.files import read_manifest, write_manifest

SYNTHETIC_LABELS: dict[int, str] = {0: "background", 128: "organ_a", 255: "organ_b"}
SYNTHETIC_VERSION = 2  # bump when the images change (part of the cache key)

# layout schedule by global index (deterministic, so every split gets its share)
_EMPTY = {5}  # i % 10 in _EMPTY: no foreground (about 10%)
_ONLY_A, _ONLY_B = {2}, {8}  # one class only (about 20%)


MANIFEST = "sam_medft_synth.json"  # the files `write_synthetic` wrote in a folder
MIN_SIZE = 16  # below this the organs (radius 0.12-0.22 x size) are a pixel or two
MAX_SIZE = 4096  # a typo such as 12800 would need tens of GB before the first file
_OURS = re.compile(r"(images|masks)/(train|val|test)_\d{3,}\.png|(train|val|test)\.csv|dataset\.json")


def check_synthetic_settings(n_train: int, n_val: int, n_test: int, size: int, seed: int) -> None:
    """One SamMedftError for a count or size the generator cannot honour, before any file."""
    for name, value, low in (("n_train", n_train, 1), ("n_val", n_val, 0), ("n_test", n_test, 0),
                             ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SamMedftError(
                f"synthetic data: {name} {value!r} is not allowed; use a whole number >= {low} "
                f"(`data synth --{name.replace('_', '-')}`, data.synthetic.{name} in a recipe)")
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise SamMedftError(
            f"synthetic data: size {size!r} is not allowed; use {MIN_SIZE} to {MAX_SIZE} pixels "
            f"(below {MIN_SIZE} the organs are a pixel or two) (`data synth --size`, "
            f"data.synthetic.size in a recipe)")


def synthetic_files(n_train: int, n_val: int, n_test: int) -> list[str]:
    """The relative paths `write_synthetic` writes for these counts (the manifest excluded)."""
    files = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        files += [f"{sub}/{split}_{k:03d}.png" for k in range(n) for sub in ("images", "masks")]
        files.append(f"{split}.csv")
    return files + ["dataset.json"]


def write_synthetic(
    out_dir: str | Path,
    n_train: int = 48,
    n_val: int = 12,
    n_test: int = 12,
    size: int = 128,
    seed: int = 0,
    non_square: bool = True,
    *,
    overwrite: bool = False,
    notes: list[str] | None = None,
) -> dict:
    """Write images/, masks/, train.csv, val.csv, test.csv and dataset.json into `out_dir`;
    returns the dataset.json content. `non_square`: every 4th image is 0.75*size high (and
    every 8th, counting from the 8th, 0.75*size wide) so aspect-ratio handling gets tested.

    The folder must be new or empty. `overwrite=True` replaces only the files an earlier call
    wrote there (listed in its `sam_medft_synth.json`) and leaves every other file alone (a
    line about them is appended to `notes`); a foreign file where one of ours would go stops
    the call before anything is written."""
    check_synthetic_settings(n_train, n_val, n_test, size, seed)
    out = Path(out_dir)
    planned = synthetic_files(n_train, n_val, n_test)
    previous = _prepare_folder(out, planned, overwrite, notes)
    # the manifest lists every file of ours before the first is written: an interrupted call
    # leaves a folder that `--overwrite` can still clean up
    write_manifest(out / MANIFEST, "data synth", sorted(set(planned) | previous))
    for rel in sorted(previous - set(planned)):  # a larger earlier set: drop its extra slices
        (out / rel).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    gidx = 0
    stats = {"empty": 0, "organ_a": 0, "organ_b": 0}
    for split, n in counts.items():
        rows = []
        for k in range(n):
            name = f"{split}_{k:03d}.png"
            shape = _shape(gidx, size, non_square)
            image, mask = _make_slice(np.random.default_rng([seed, gidx]), shape, gidx)
            Image.fromarray(image).save(out / "images" / name)
            Image.fromarray(mask).save(out / "masks" / name)
            rows.append(f"images/{name},masks/{name}\n")
            stats["empty"] += int(not mask.any())
            stats["organ_a"] += int((mask == 128).any())
            stats["organ_b"] += int((mask == 255).any())
            gidx += 1
        (out / f"{split}.csv").write_text("".join(rows))
    info = {
        "name": "sam_medft synthetic",
        "version": SYNTHETIC_VERSION,
        "classes": list(SYNTHETIC_LABELS.values()),
        "labels": {str(k): v for k, v in SYNTHETIC_LABELS.items()},
        "counts": counts,
        "images_with": stats,
        "size": size,
        "non_square": non_square,
        "seed": seed,
        "lists": {split: f"{split}.csv" for split in counts},
    }
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    write_manifest(out / MANIFEST, "data synth", planned)
    return info


def _prepare_folder(out: Path, planned: list[str], overwrite: bool,
                    notes: list[str] | None) -> set[str]:
    """Check `out` may receive the files; returns the files an earlier call wrote there."""
    if out.exists() and not out.is_dir():
        raise SamMedftError(f"{out} is a file: give `data synth` a new or empty folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return set()
    previous = read_manifest(out / MANIFEST, "data synth", keep=_OURS.fullmatch,
                             fix="give `data synth` a new or empty folder")
    if not overwrite:
        more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
        fix = (f", or pass --overwrite to replace the data set an earlier `data synth` wrote "
               f"there (listed in {MANIFEST}; other files are left alone)" if previous else "")
        raise SamMedftError(
            f"{out} is not empty (it holds {entries[0].name}{more}): nothing was written; give "
            f"`data synth` a new or empty folder{fix}")
    clashes = [d for d in ("images", "masks") if (out / d).exists() and not (out / d).is_dir()]
    clashes += [rel for rel in [*planned, MANIFEST] if (out / rel).is_dir()
                or ((out / rel).exists() and rel not in previous | {MANIFEST})]
    if clashes:
        raise SamMedftError(
            f"{out / clashes[0]} was not written by `data synth` (it is not listed in "
            f"{out / MANIFEST}), and the data set would replace it: nothing was written; move "
            f"it away or give `data synth` a new or empty folder")
    mine = previous | set(planned) | {MANIFEST}
    foreign = [p for p in sorted(out.rglob("*"))
               if p.is_file() and p.relative_to(out).as_posix() not in mine]
    if foreign and notes is not None:
        notes.append(f"{out} holds {len(foreign)} file(s) `data synth` did not write (e.g. "
                     f"{foreign[0].relative_to(out).as_posix()}); they were left as they are")
    return previous


def _shape(i: int, size: int, non_square: bool) -> tuple[int, int]:
    short = round(size * 0.75)
    if non_square and i % 8 == 3:
        return short, size  # landscape
    if non_square and i % 8 == 7:
        return size, short  # portrait
    return size, size


def _make_slice(
    rng: np.random.Generator, shape: tuple[int, int], i: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # body: a large ellipse near the centre
    cy, cx = h / 2 + rng.uniform(-0.05, 0.05) * h, w / 2 + rng.uniform(-0.05, 0.05) * w
    body = (
        _ellipse(
            yy,
            xx,
            cy,
            cx,
            rng.uniform(0.40, 0.46) * h,
            rng.uniform(0.40, 0.46) * w,
            rng.uniform(-0.3, 0.3),
        )
        < 1.0
    )
    smooth = _noise(rng, shape, sigma=max(h, w) / 12)
    signal = np.full(shape, 12.0, np.float32)
    signal[body] = (80.0 + 12.0 * smooth)[body]

    mask = np.zeros(shape, np.uint8)
    m = i % 10
    want_a = m not in _EMPTY and m not in _ONLY_B
    want_b = m not in _EMPTY and m not in _ONLY_A
    s = min(h, w)
    placed: list[tuple[float, float, float]] = []
    if want_a:  # organ_a: very bright, granular ellipse
        ay, ax, ra = _place(rng, body, placed, s, (0.12, 0.2))
        d = _ellipse(yy, xx, ay, ax, ra, ra * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
        region = (d < 1.0) & body
        grain = _noise(rng, shape, sigma=0.8)
        signal[region] = (195.0 + 16.0 * grain)[region]
        mask[region] = 128
    if want_b:  # organ_b: moderately bright, smooth, lobed blob
        by, bx, rb = _place(rng, body, placed, s, (0.13, 0.22))
        d = _ellipse(yy, xx, by, bx, rb, rb * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
        theta = np.arctan2(yy - by, xx - bx)
        lobes = (
            1.0
            + 0.12 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))
            + 0.06 * np.sin(5 * theta + rng.uniform(0, 2 * np.pi))
        )
        region = (d < lobes) & body & (mask == 0)
        signal[region] = (135.0 + 6.0 * _noise(rng, shape, sigma=3.0))[region]
        mask[region] = 255

    # partial-volume blur, smooth multiplicative bias field, per-image gain, Rician noise
    signal = gaussian_filter(signal, 0.7)
    gy, gx = rng.uniform(-0.2, 0.2, size=2)
    bias = 1.0 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5)
    signal = signal * bias * rng.uniform(0.92, 1.08)
    sigma = 7.0
    n1 = rng.normal(0.0, sigma, shape)
    n2 = rng.normal(0.0, sigma, shape)
    image = np.sqrt((signal + n1) ** 2 + n2**2)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def _ellipse(yy, xx, cy, cx, ry, rx, angle) -> np.ndarray:
    """Normalised elliptic radius (< 1 inside)."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    return np.sqrt(u * u + v * v)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def _place(
    rng: np.random.Generator,
    body: np.ndarray,
    placed: list[tuple[float, float, float]],
    s: int,
    radius: tuple[float, float],
) -> tuple[float, float, float]:
    """A centre inside the body, away from organs already placed (best of a few tries)."""
    ys, xs = np.nonzero(body)
    best = None
    for _ in range(12):
        r = rng.uniform(*radius) * s
        j = rng.integers(len(ys))
        y, x = float(ys[j]), float(xs[j])
        margin = min(
            [((y - py) ** 2 + (x - px) ** 2) ** 0.5 - (r + pr) for py, px, pr in placed],
            default=np.inf,
        )
        # keep the organ mostly inside the body: distance to the body's edge
        inside = _inside_depth(body, y, x)
        score = min(margin, inside - 0.6 * r)
        if best is None or score > best[0]:
            best = (score, y, x, r)
        if score > 0:
            break
    _, y, x, r = best
    placed.append((y, x, r))
    return y, x, r


def _inside_depth(body: np.ndarray, y: float, x: float) -> float:
    """Distance from (y, x) to the nearest background pixel along 8 directions (cheap)."""
    h, w = body.shape
    best = np.inf
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        step = 0
        yy, xx = int(y), int(x)
        while 0 <= yy < h and 0 <= xx < w and body[yy, xx]:
            yy, xx, step = yy + dy, xx + dx, step + 1
        best = min(best, step * (1.414 if dy and dx else 1.0))
    return best
