"""`sam-medft predict RUN scans/ --out preds/` on volumes: one NIfTI label volume per input.

Inputs are NIfTI files, DICOM series folders, or folders holding them. Each output is
`<out>/<case>.nii.gz` (nnU-Net's channel suffix `_0000` dropped, as nnU-Net names its
predictions), written in its source's geometry (affine, header, voxel order), so it overlays
the scan in 3D Slicer / ITK-SNAP. The folder rules are `predict`'s: --out is never an input
folder or inside one, a file there that `predict` did not write is never replaced (its
manifest lists the ones it did; --overwrite replaces only those), all checked before the
model loads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from sam_medft.data.volume_source import case_id_of, volumes_in
from sam_medft.data.volumes import is_dicom_series, is_nifti, read_volume, write_label_volume
from sam_medft.errors import SamMedftError
from sam_medft.files import read_manifest, write_manifest
from sam_medft.hub import resolve_run
from sam_medft.infer.predict import (
    LEGEND,
    MANIFEST,
    FineTunedSam,
    value_table,
    write_legend,
)
from sam_medft.infer.volume_inference import predict_volume
from sam_medft.runs import AdapterMeta, find_adapter_folder


def is_volume_input(path: str | Path) -> bool:
    p = Path(path)
    return (p.is_file() and is_nifti(p)) or is_dicom_series(p) or (
        p.is_dir() and bool(volumes_in(p)))


def has_volume_inputs(inputs: Sequence[str | Path]) -> bool:
    """Whether `predict` gets volumes (then every input must be one, or a folder of them)."""
    flags = [is_volume_input(p) for p in inputs]
    if any(flags) and not all(flags):
        other = next(p for p, f in zip(inputs, flags, strict=True) if not f)
        raise SamMedftError(f"{other} is not a volume (.nii, .nii.gz, a DICOM series folder or "
                            "a folder of them) but other inputs are: predict volumes and 2-D "
                            "images in separate runs")
    return bool(flags) and all(flags)


def collect_volumes(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(volume path, case id) for every input volume, in input order."""
    found: list[tuple[Path, str]] = []
    for raw in inputs:
        p = Path(raw)
        paths = [p] if (p.is_file() or is_dicom_series(p)) else volumes_in(p)
        found += [(v, case_id_of(v)[0]) for v in paths]
    seen: dict[str, Path] = {}
    for path, case in found:
        if case in seen:
            raise SamMedftError(f"{seen[case]} and {path} are both case {case!r} and would be "
                                f"written to the same {case}.nii.gz; predict them into "
                                "different --out folders")
        seen[case] = path
    return found


def check_volume_outputs(inputs: Sequence[str | Path], targets: Sequence[Path], out: Path, *,
                         overwrite: bool) -> None:
    """`predict`'s folder rules for volume outputs (see the module), nothing written yet."""
    if out.exists() and not out.is_dir():
        raise SamMedftError(f"--out {out} is a file: give a folder for the label volumes")
    out_r = out.resolve()
    for raw in inputs:
        p = Path(raw).resolve()
        if p.is_dir() and (out_r == p or out_r.is_relative_to(p)):
            raise SamMedftError(f"--out {out} is, or is inside, the input folder {raw}: the "
                                "label volumes would be written among your scans; choose an "
                                "--out outside it")
        if p.is_relative_to(out_r):
            raise SamMedftError(f"--out {out} holds the input {raw}; choose an --out that holds "
                                "none of the inputs")
    ours = read_manifest(out / MANIFEST, "predict", keep=lambda f: ".." not in Path(f).parts,
                         fix="choose another --out")
    existing = [t for t in [*targets, out / LEGEND] if t.exists() or t.is_symlink()]
    foreign = [t for t in existing if _rel(t, out) not in ours]
    if foreign:
        raise SamMedftError(f"{foreign[0]} exists and was not written by `sam-medft predict` "
                            f"(it is not listed in {out / MANIFEST}): nothing was written; move "
                            "it away, or choose another --out")
    replaced = [t for t in existing if t.name != LEGEND]
    if replaced and not overwrite:
        raise SamMedftError(f"{len(replaced)} prediction(s) already exist in {out} (e.g. "
                            f"{replaced[0]}), written by an earlier `sam-medft predict`: pass "
                            "--overwrite to replace them, or choose another --out")


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def predict_volume_paths(model: FineTunedSam | str | Path, inputs: Sequence[str | Path],
                         out_dir: str | Path, *, batch_size: int = 8, num_workers: int = 0,
                         largest_component: bool = False, fill_holes: bool = False,
                         values: str = "class", foreground: int | None = None,
                         overwrite: bool = False, device: str | None = None,
                         revision: str | None = None, show_progress: bool = True) -> list[Path]:
    """Predict every input volume into `<out>/<case>.nii.gz` (+ legend.json); the inputs,
    --out and --values are checked before the model's weights load."""
    out = Path(out_dir)
    volumes = collect_volumes(inputs)
    if not volumes:
        raise SamMedftError(f"no volumes found in {', '.join(map(str, inputs))}")
    targets = [out / f"{case}.nii.gz" for _, case in volumes]
    check_volume_outputs(inputs, targets, out, overwrite=overwrite)
    meta = model.meta if isinstance(model, FineTunedSam) else AdapterMeta.read(
        find_adapter_folder(resolve_run(str(model), revision=revision)))
    lut = value_table(meta, values, foreground)
    if isinstance(model, str | Path):
        model = FineTunedSam.load(model, device=device, revision=revision)
    model.task.check_prediction(has_prompts=False)
    out.mkdir(parents=True, exist_ok=True)
    ours = read_manifest(out / MANIFEST, "predict", keep=lambda f: ".." not in Path(f).parts,
                         fix="choose another --out")
    write_manifest(out / MANIFEST, "predict", ours | {_rel(t, out) for t in [*targets,
                                                                              out / LEGEND]})
    write_legend(model.meta, out, values=values, foreground=foreground)
    for (path, _), target in tqdm(list(zip(volumes, targets, strict=True)), desc="predict",
                                  unit="volume", disable=not show_progress):
        volume = read_volume(path)
        labels = predict_volume(model, volume, batch_size=batch_size, num_workers=num_workers,
                                largest_component=largest_component, fill_holes=fill_holes)
        write_label_volume(target, labels if lut is None else lut[labels], like=volume)
    return targets
