"""Image/mask pairs from the study's CSV/TSV lists or from an images/ + masks/ folder.

The study's lists are `image_rel_path,mask_rel_path` per line, no header, joined onto
`img_folder`/`mask_folder`; its own demo lists write mask paths with a leading `/`, which
its loader stripped. We accept that (with one warning), tabs as well as commas, an optional
header row and comments, and report every missing file at once instead of failing on the
first one in the middle of an epoch.
"""

from __future__ import annotations

import csv
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from sam_medft.data.io import IMAGE_EXTENSIONS
from sam_medft.errors import SamMedftError

_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ \-]*$")  # no dot, no slash: not a path
_SHOW = 5  # how many offending lines/files an error lists


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


class LeadingSlashWarning(UserWarning):
    """Paths written with a leading `/` that only exist under the data root."""


def read_pair_list(
    list_path: str | Path,
    img_folder: str | Path | None = None,
    mask_folder: str | Path | None = None,
    must_exist: bool = True,
) -> list[Pair]:
    """Parse a CSV/TSV pair list. Relative paths are joined onto `img_folder`/`mask_folder`
    (default: the list's own folder). `must_exist=False` skips the existence check (the
    dataset checker reports missing files itself)."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise SamMedftError(
            f"pair list {list_path} not found; check data.train_list/val_list/test_list"
        )
    img_root = Path(img_folder) if img_folder is not None else list_path.parent
    mask_root = Path(mask_folder) if mask_folder is not None else list_path.parent

    rows = _rows(list_path)
    if rows and _is_header(rows[0][1], img_root, mask_root):
        rows = rows[1:]
    if not rows:
        raise SamMedftError(
            f"pair list {list_path} has no image/mask rows; add lines like "
            "`images/case1.png,masks/case1.png`"
        )
    stripped = 0
    pairs: list[Pair] = []
    missing: list[str] = []
    for lineno, fields in rows:
        img, s1 = _resolve(fields[0], img_root)
        mask, s2 = _resolve(fields[1], mask_root)
        stripped += s1 + s2
        pairs.append(Pair(img, mask))
        if must_exist:
            for kind, p in (("image", img), ("mask", mask)):
                if not p.is_file():
                    missing.append(f"line {lineno}: {kind} {p}")
    if stripped:
        warnings.warn(
            f"{list_path}: {stripped} path(s) start with '/' but exist only under the data "
            f"folder ({img_root}, {mask_root}); reading them relative to it (as the study's "
            "loader did). Drop the leading '/' to silence this.",
            LeadingSlashWarning,
            stacklevel=2,
        )
    if missing:
        raise SamMedftError(
            f"{list_path}: {len(missing)} listed file(s) do not exist, e.g.\n  "
            + "\n  ".join(missing[:_SHOW])
            + f"\nPaths in the list are relative to data.img_folder ({img_root}) and "
            f"data.mask_folder ({mask_root}); fix those folders or the list"
        )
    return pairs


def _rows(list_path: Path) -> list[tuple[int, list[str]]]:
    """(line number, [image, mask, ...]) for each non-blank, non-comment line."""
    try:
        lines = list_path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise SamMedftError(f"pair list {list_path} is not a UTF-8 text file") from None
    numbered = [
        (i, ln) for i, ln in enumerate(lines, 1) if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not numbered:
        return []
    delimiter = "\t" if "\t" in numbered[0][1] else ","
    out: list[tuple[int, list[str]]] = []
    for (lineno, _), fields in zip(
        numbered, csv.reader([ln for _, ln in numbered], delimiter=delimiter), strict=True
    ):
        fields = [f.strip() for f in fields if f.strip()]
        if len(fields) < 2:
            sep = "a tab" if delimiter == "\t" else "a comma"
            raise SamMedftError(
                f"{list_path} line {lineno}: expected `image_path{delimiter}mask_path` "
                f"(two paths separated by {sep}), got {lines[lineno - 1]!r}"
            )
        out.append((lineno, fields))
    return out


def _is_header(fields: list[str], img_root: Path, mask_root: Path) -> bool:
    img, mask = fields[0], fields[1]
    if (img_root / img).exists() or (mask_root / mask).exists():
        return False
    return bool(_COLUMN_NAME.match(img) and _COLUMN_NAME.match(mask))


def _resolve(text: str, root: Path) -> tuple[Path, int]:
    """Path as written (absolute) or under `root`; returns (path, 1 if a leading '/' was
    stripped to find it)."""
    p = Path(text)
    if not p.is_absolute():
        return root / p, 0
    if p.exists():
        return p, 0
    rel = root / text.lstrip("/\\")
    if rel.exists():
        return rel, 1
    return p, 0


# ---- folder layout ---------------------------------------------------------------------------


def folder_pairs(
    folder: str | Path, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[Pair]]:
    """`<folder>/images/*` + `<folder>/masks/*` matched by file stem (extensions may differ),
    split by a seeded shuffle. Splits with fraction 0 are absent."""
    folder = Path(folder)
    img_dir, mask_dir = folder / "images", folder / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise SamMedftError(
                f"{d} not found; data.source=folder expects {folder}/images/ and {folder}/masks/ "
                "with one mask per image (same file name, any image extension)"
            )
    images, masks = _by_stem(img_dir), _by_stem(mask_dir)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(
                f"{len(no_mask)} image(s) without a mask, e.g. "
                + ", ".join(images[s].name for s in no_mask[:_SHOW])
            )
        if no_image:
            parts.append(
                f"{len(no_image)} mask(s) without an image, e.g. "
                + ", ".join(masks[s].name for s in no_image[:_SHOW])
            )
        raise SamMedftError(
            f"{folder}: "
            + "; ".join(parts)
            + ". Each mask must have its image's file name (the extension may differ)"
        )
    if not images:
        raise SamMedftError(f"{img_dir} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    stems = sorted(images)
    random.Random(seed).shuffle(stems)
    n = len(stems)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise SamMedftError(
            f"{folder}: {n} image(s) are too few for val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}; add images or lower the fractions"
        )
    chunks = {
        "val": stems[:n_val],
        "test": stems[n_val : n_val + n_test],
        "train": stems[n_val + n_test :],
    }
    return {
        split: [Pair(images[s], masks[s]) for s in sorted(chosen)]
        for split, chosen in (
            ("train", chunks["train"]),
            ("val", chunks["val"]),
            ("test", chunks["test"]),
        )
        if chosen
    }


def _by_stem(d: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.stem in out:
            raise SamMedftError(
                f"{d}: {out[p.stem].name} and {p.name} share the name {p.stem!r}; keep one file "
                "per name so images and masks pair unambiguously"
            )
        out[p.stem] = p
    return out
