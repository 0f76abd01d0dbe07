"""Image/mask pairs from the study's CSV/TSV lists or from an images/ + masks/ folder.

The study's lists are `image_rel_path,mask_rel_path` per line, no header, joined onto
`img_folder`/`mask_folder`; its own demo lists write mask paths with a leading `/`, which
its loader stripped. We accept that (with one warning), tabs as well as commas, comments,
and report every missing file at once instead of failing on the first one in the middle of
an epoch.

Columns: a list without a header has exactly two (image, mask). A third column used to be
dropped silently (a stray comma in a path, or a spacing column the user expected to be
read), so more columns are an error unless a header row names them: the header picks the
image and mask columns by name (`image`/`mask` and the aliases below, in any order) and
every other named column (`case_id`, `spacing`, ...) is allowed and ignored.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

from sam_medft.config import load_recipe
from sam_medft.data.io import IMAGE_EXTENSIONS
from sam_medft.errors import SamMedftError

_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ \-]*$")  # no dot, no slash: not a path
_SHOW = 5  # how many offending lines/files an error lists
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what editors count as lines (not str.splitlines)
log = logging.getLogger("sam_medft.data")
_WARNED_SLASH: set[Path] = set()  # lists whose leading-'/' paths were reported (once per process)

# header names (lower case, spaces/hyphens as underscores) that mark the two path columns
IMAGE_COLUMNS = (
    "image",
    "image_path",
    "img",
    "img_path",
    "image_file",
    "file_name",
    "image_rel_path",
    "img_rel_path",
)
MASK_COLUMNS = (
    "mask",
    "mask_path",
    "label",
    "label_path",
    "mask_file",
    "mask_file_name",
    "mask_rel_path",
    "seg",
    "segmentation",
    "gt",
)


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


def read_pair_list(
    list_path: str | Path,
    img_folder: str | Path | None = None,
    mask_folder: str | Path | None = None,
    must_exist: bool = True,
    folders_ok: bool = False,
) -> list[Pair]:
    """Parse a CSV/TSV pair list. Relative paths are joined onto `img_folder`/`mask_folder`
    (default: the list's own folder). `must_exist=False` skips the existence check (the
    dataset checker reports missing files itself); `folders_ok`: a listed folder (a DICOM
    series) counts as present."""
    list_path = Path(list_path)
    if not _is_file(list_path):
        raise SamMedftError(
            f"pair list {list_path} not found; check data.train_list/val_list/test_list"
        )
    img_root = Path(img_folder) if img_folder is not None else list_path.parent
    mask_root = Path(mask_folder) if mask_folder is not None else list_path.parent

    rows, delimiter = _rows(list_path)
    columns = (0, 1)
    width = None  # the most fields a row may have: the header's column count, else 2
    if rows and _is_header(rows[0][1], img_root, mask_root):
        lineno, header = rows[0]
        columns, width = _header_columns(list_path, lineno, header, delimiter), len(header)
        rows = rows[1:]
    if not rows:
        raise SamMedftError(
            f"pair list {list_path} has no image/mask rows; add lines like "
            "`images/case1.png,masks/case1.png`"
        )
    _check_widths(list_path, rows, width, delimiter)
    stripped = 0
    pairs: list[Pair] = []
    missing: list[str] = []
    for lineno, fields in rows:
        texts = [fields[c] if c < len(fields) else "" for c in columns]
        for kind, text in zip(("image", "mask"), texts, strict=True):
            if not text:
                raise SamMedftError(
                    f"{list_path} line {lineno}: the {kind} path is empty; give both paths "
                    f"(`image_path{delimiter}mask_path`) or delete the line"
                )
        img, s1 = _resolve(texts[0], img_root)
        mask, s2 = _resolve(texts[1], mask_root)
        stripped += s1 + s2
        pairs.append(Pair(img, mask))
        if must_exist:
            for kind, p in (("image", img), ("mask", mask)):
                if not (_is_file(p) or (folders_ok and p.is_dir())):
                    missing.append(f"line {lineno}: {kind} {p}")
    if stripped:
        _warn_leading_slash(list_path, stripped, f"{img_root}, {mask_root}")
    if missing:
        raise SamMedftError(
            f"{list_path}: {len(missing)} listed file(s) do not exist, e.g.\n  "
            + "\n  ".join(missing[:_SHOW])
            + f"\nPaths in the list are relative to data.img_folder ({img_root}) and "
            f"data.mask_folder ({mask_root}); fix those folders or the list"
        )
    return pairs


def _warn_leading_slash(list_path: Path, count: int, roots: str) -> None:
    """One log line per list file per process: a command reads a list several times (data
    check, the splits, eval), and the same notice each time is noise."""
    key = _absolute(list_path)
    if key in _WARNED_SLASH:
        return
    _WARNED_SLASH.add(key)
    log.warning(
        "%s: %d path(s) start with '/' but exist only under the data folder (%s); reading "
        "them relative to it (as the study's loader did). Drop the leading '/' to silence this.",
        list_path, count, roots,
    )


def _absolute(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return p.absolute()


def list_images(list_path: str | Path, img_folder: str | Path | None = None, *,
                folders_ok: bool = False) -> list[tuple[Path, Path]]:
    """The images of a pair (or image-only) list, as (file, name to write its output under).

    The one rule every command uses for lists: paths are relative to `img_folder` when given
    (a run's recipe data.img_folder), else to the list's own folder; a leading '/' that
    exists only under that root is read relative to it (one warning per list), as
    `read_pair_list` does. A header row (image/mask column names) is skipped. Missing images
    stop with one message listing them; `folders_ok`: a listed folder (a DICOM series) counts
    as present."""
    list_path = Path(list_path)
    if not _is_file(list_path):
        raise SamMedftError(f"image list {list_path} not found; give an existing .csv/.txt list")
    root = Path(img_folder) if img_folder is not None else list_path.parent
    text = list_path.read_text(encoding="utf-8-sig")
    lines = [ln for ln in _LINE_BREAK.split(text) if ln.strip() and not ln.lstrip().startswith("#")]
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    column, out, missing, stripped = 0, [], [], 0
    for i, line in enumerate(lines):
        (fields,) = csv.reader([line], delimiter=delimiter)
        fields = [f.strip() for f in fields]
        if i == 0 and len(fields) >= 2 and _is_header(fields, root, root):
            keys = [_column_key(f) for f in fields]
            column = next((k for k, name in enumerate(keys) if name in IMAGE_COLUMNS), 0)
            continue
        if i == 0 and len(fields) == 1 and _column_key(fields[0]) in IMAGE_COLUMNS:
            continue
        text_path = fields[column] if column < len(fields) else ""
        if not text_path:
            continue
        path, s = _resolve(text_path, root)
        stripped += s
        if not (_is_file(path) or (folders_ok and path.is_dir())):
            missing.append(str(path))
        out.append((path, Path(text_path.lstrip("/\\"))))
    if stripped:
        _warn_leading_slash(list_path, stripped, str(root))
    if missing:
        raise SamMedftError(
            f"{list_path}: {len(missing)} listed image(s) not found, e.g. "
            + ", ".join(missing[:_SHOW])
            + f". Paths in the list are relative to {root} (the run's data.img_folder, else the "
            "list's folder); fix the list or the run's recipe.yaml data.img_folder"
        )
    return out


def recipe_img_folder(recipe_file: str | Path | None) -> Path | None:
    """A run's recipe.yaml data.img_folder (None without a recipe or the key): the root its
    lists were read against, so `predict RUN list.csv` resolves a list as training did."""
    if recipe_file is None or not _is_file(Path(recipe_file)):
        return None
    return load_recipe(recipe_file).data.img_folder


def _rows(list_path: Path) -> tuple[list[tuple[int, list[str]]], str]:
    """(line number, fields) for each non-blank, non-comment line, and the delimiter (a tab
    if the first such line has one, else a comma). Fields are stripped; empty fields at the
    end of a line (a trailing delimiter) are dropped."""
    try:
        text = list_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SamMedftError(
            f"pair list {list_path} is not a UTF-8 text file; save it as UTF-8 CSV"
        ) from None
    except OSError as e:
        raise SamMedftError(f"pair list {list_path} cannot be read ({e.strerror})") from None
    lines = _LINE_BREAK.split(text)
    numbered = [
        (i, ln.lstrip("\ufeff"))  # a BOM mid-file: lists concatenated from Excel exports
        for i, ln in enumerate(lines, 1)
    ]
    numbered = [(i, ln) for i, ln in numbered if ln.strip() and not ln.lstrip().startswith("#")]
    if not numbered:
        return [], ","
    delimiter = "\t" if "\t" in numbered[0][1] else ","
    out: list[tuple[int, list[str]]] = []
    for lineno, line in numbered:
        if "\x00" in line:
            raise SamMedftError(
                f"{list_path} line {lineno} contains a NUL byte: this is not a text list; "
                "give a CSV/TSV file of image_path,mask_path lines"
            )
        try:
            (fields,) = csv.reader([line], delimiter=delimiter, strict=True)
        except csv.Error:
            raise SamMedftError(
                f"{list_path} line {lineno}: unbalanced or misplaced quote in {line!r}; quote "
                'a whole path that contains a comma ("a,b.png") and double a quote inside '
                'quotes (""), or remove the quotes'
            ) from None
        fields = [f.strip() for f in fields]
        while fields and not fields[-1]:
            fields.pop()
        if len(fields) < 2:
            sep = "a tab" if delimiter == "\t" else "a comma"
            raise SamMedftError(
                f"{list_path} line {lineno}: expected `image_path{delimiter}mask_path` "
                f"(two paths separated by {sep}), got {line!r}"
            )
        out.append((lineno, fields))
    return out, delimiter


def _is_header(fields: list[str], img_root: Path, mask_root: Path) -> bool:
    img, mask = fields[0], fields[1]
    if _exists(img_root / img) or _exists(mask_root / mask):
        return False
    return bool(_COLUMN_NAME.match(img) and _COLUMN_NAME.match(mask))


def _column_key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _header_columns(
    list_path: Path, lineno: int, header: list[str], delimiter: str
) -> tuple[int, int]:
    """(image index, mask index) named by a header row. Two columns with other names keep
    the study's order (image first); with more, the image and mask must be named."""
    keys = [_column_key(h) for h in header]
    where = f"{list_path} line {lineno} (the header {delimiter.join(header)!r})"
    empty = [i + 1 for i, k in enumerate(keys) if not k]
    if empty:
        raise SamMedftError(
            f"{where}: column {empty[0]} has no name; name every column (e.g. "
            f"`image{delimiter}mask{delimiter}case_id`) or remove the empty one"
        )
    dupes = sorted({h for h, k in zip(header, keys, strict=True) if keys.count(k) > 1})
    if dupes:
        raise SamMedftError(f"{where}: column name(s) {dupes} appear twice; name each once")
    found = {}
    for role, aliases in (("image", IMAGE_COLUMNS), ("mask", MASK_COLUMNS)):
        hits = [i for i, k in enumerate(keys) if k in aliases]
        if len(hits) > 1:
            names = ", ".join(header[i] for i in hits)
            raise SamMedftError(f"{where}: {names} all name the {role} column; keep one of them")
        found[role] = hits[0] if hits else None
    img, mask = found["image"], found["mask"]
    if len(keys) == 2:
        if img is None and mask is None:
            return 0, 1  # any two names: the study's order
        if img is None:
            img = 1 - mask
        if mask is None:
            mask = 1 - img
        return img, mask
    if img is None or mask is None:
        role = "image" if img is None else "mask"
        aliases = ", ".join(IMAGE_COLUMNS if img is None else MASK_COLUMNS)
        raise SamMedftError(
            f"{where}: with {len(keys)} columns the header must say which one is the {role}; "
            f"name it one of: {aliases} (other columns, e.g. case_id or spacing, are "
            "allowed and ignored)"
        )
    return img, mask


def _check_widths(
    list_path: Path, rows: list[tuple[int, list[str]]], width: int | None, delimiter: str
) -> None:
    """More fields than the header declares (`width`; None: no header, 2) is an error: a
    stray delimiter or an undeclared column, never silently dropped."""
    wide = [(lineno, fields) for lineno, fields in rows if len(fields) > (width or 2)]
    if not wide:
        return
    lineno, fields = wide[0]
    more = f" (and {len(wide) - 1} more line(s))" if len(wide) > 1 else ""
    sep = "tab" if delimiter == "\t" else "comma"
    shown = delimiter.join(fields)
    if width is None:
        raise SamMedftError(
            f"{list_path} line {lineno}{more}: {len(fields)} columns ({shown!r}) but a list "
            f"without a header has two, image_path{delimiter}mask_path. If the extra columns "
            f"are meant (e.g. case_id, spacing), add a header row naming every column, e.g. "
            f"`image{delimiter}mask{delimiter}case_id` (other columns are then ignored); if a "
            f'path contains a {sep}, quote it ("a{delimiter}b.png")'
        )
    raise SamMedftError(
        f"{list_path} line {lineno}{more}: {len(fields)} columns ({shown!r}) but the header "
        f"names {width}; name the extra column(s) in the header, or remove the stray "
        f"{sep}(s) (quote a path that contains a {sep})"
    )


def _resolve(text: str, root: Path) -> tuple[Path, int]:
    """Path as written (absolute) or under `root`; returns (path, 1 if a leading '/' was
    stripped to find it)."""
    p = Path(text)
    if not p.is_absolute():
        return root / p, 0
    if _exists(p):
        return p, 0
    rel = root / text.lstrip("/\\")
    if _exists(rel):
        return rel, 1
    return p, 0


def _exists(p: Path) -> bool:
    """`Path.exists` that says False (not OSError) for names the OS cannot even look up
    (too long, NUL bytes): such a path is simply not there."""
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


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
