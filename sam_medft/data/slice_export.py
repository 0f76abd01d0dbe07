"""`sam-medft data slice`: a volume recipe's splits written out in the study's 2-D layout.

Training reads volumes directly (`data.volume_source`); this is for users who want the
files: `images/<case>_<slice>.png` (8-bit grey, or RGB for 2.5-D: what the model sees),
`masks/<case>_<slice>.png` (the raw label values, 8- or 16-bit single channel), and one list
per split (`train.csv`, `val.csv`, `test.csv`) with a header naming the columns `image`,
`mask`, `case_id`, `slice` and `spacing` (row x column mm), which `data.source: lists` reads
(the extra columns are ignored there). Splits are the recipe's, by case; the training split
holds the slices training samples (data.volumes.empty_fraction; 1 keeps every slice).
The folder must be new or hold only an earlier export (its manifest lists the files).
"""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sam_medft.config import DataConfig
from sam_medft.data.volume_source import VolumeSliceSource, volume_splits
from sam_medft.errors import SamMedftError
from sam_medft.files import disk_errors, read_manifest, write_manifest, write_text_atomic

MANIFEST = "sam_medft_slices.json"


def export_slices(data: DataConfig, out_dir: str | Path, *, overwrite: bool = False,
                  show_progress: bool = True) -> dict[str, int]:
    """Write every split's slices and lists into `out_dir`; returns slices per split."""
    splits = volume_splits(data)
    if splits is None:
        raise SamMedftError("data slice exports volumes, but this recipe's data are 2-D "
                            "images (use data.source: nnunet, or a folder or lists of "
                            ".nii/.nii.gz volumes or DICOM series)")
    out = Path(out_dir)
    ours = read_manifest(out / MANIFEST, "data slice", keep=lambda f: ".." not in Path(f).parts,
                         fix="remove it, or choose another output folder")
    existing = ({p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
                - {MANIFEST}) if out.exists() else set()
    foreign = sorted(existing - ours)
    if foreign:
        raise SamMedftError(f"{out} holds files `data slice` did not write (e.g. {foreign[0]}): "
                            "export into a new or empty folder")
    if existing and not overwrite:
        raise SamMedftError(f"{out} holds an earlier export ({len(existing)} files): pass "
                            "--overwrite to replace it, or choose another folder")
    planned = [f"{split}.csv" for split in splits]
    for src in splits.values():
        planned += [f"{kind}/{name}.png" for name in src.names for kind in ("images", "masks")]
    write_manifest(out / MANIFEST, "data slice", sorted(ours | set(planned)))
    for rel in sorted(ours - set(planned)):
        (out / rel).unlink(missing_ok=True)
    write_manifest(out / MANIFEST, "data slice", planned)
    counts = {}
    with disk_errors(out, "the exported slices"):
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        for split, src in splits.items():
            counts[split] = _export_split(src, split, out, show_progress)
    return counts


def _export_split(src: VolumeSliceSource, split: str, out: Path, show_progress: bool) -> int:
    rows = [["image", "mask", "case_id", "slice", "spacing"]]
    for i in tqdm(range(len(src)), desc=f"slice {split}", unit="slice",
                  disable=not show_progress):
        sample = src.load(i)
        image = np.rint(sample.image).astype(np.uint8)
        if src.settings.channels == "2d":
            image = image[..., 0]
        Image.fromarray(image).save(out / "images" / f"{sample.name}.png")
        _mask_image(sample.raw_mask, src.mask_path(i)).save(out / "masks" / f"{sample.name}.png")
        sy, sx = sample.spacing or (1.0, 1.0)
        rows.append([f"images/{sample.name}.png", f"masks/{sample.name}.png", sample.case or "",
                     str(sample.slice_index), f"{sy:g}x{sx:g}"])
    buf = _io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_text_atomic(out / f"{split}.csv", buf.getvalue())
    return len(rows) - 1


def _mask_image(mask: np.ndarray, where: str) -> Image.Image:
    """Raw label values in a single-channel PNG (8-bit up to 255, else 16-bit)."""
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi > 65535:
        raise SamMedftError(f"{where}: label values {lo}..{hi} do not fit a PNG (0..65535)")
    return Image.fromarray(mask.astype(np.uint8 if hi <= 255 else np.uint16))
