"""`sam-medft predict RUN scans/ --out preds/` on volumes: one NIfTI label volume per input.

Inputs are NIfTI files, DICOM series folders, folders holding them, or lists (.csv/.txt)
whose image column names them (read against the run's data.img_folder, as 2-D lists are).
Each output is `<out>/<case>.nii.gz` (nnU-Net's channel suffix `_0000` dropped, as nnU-Net
names its predictions), written in its source's geometry (affine, header, voxel order), so it
overlays the scan in 3D Slicer / ITK-SNAP. The folder rules are `predict`'s (its
`check_output_folder`, one rule for images and volumes): --out is never an input folder or
inside one, nor holds an input; a file there that `predict` did not write is never replaced
(its manifest lists the ones it did; --overwrite replaces only those), all checked before the
model loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from sam_medft.data.lists import list_images
from sam_medft.data.volume_source import case_id_of, volumes_in
from sam_medft.data.volumes import is_dicom_series, is_nifti, read_volume, write_label_volume
from sam_medft.errors import SamMedftError
from sam_medft.hub import resolve_run
from sam_medft.infer.predict import (
    LIST_SUFFIXES,
    FineTunedSam,
    check_output_folder,
    value_table,
    write_legend,
)
from sam_medft.infer.volume_inference import predict_volume
from sam_medft.runs import AdapterMeta, find_adapter_folder


def is_volume_input(path: str | Path, img_folder: str | Path | None = None) -> bool:
    """A volume, a folder of volumes, or a list (.csv/.txt/.tsv) whose first row names one."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        try:
            rows = list_images(p, img_folder, folders_ok=True)
        except SamMedftError:
            return False  # the 2-D reader reports what is wrong with the list
        return bool(rows) and _is_volume_file(rows[0][0])
    return _is_volume_file(p) or (p.is_dir() and bool(volumes_in(p)))


def _is_volume_file(p: Path) -> bool:
    return (p.is_file() and is_nifti(p)) or is_dicom_series(p)


def has_volume_inputs(inputs: Sequence[str | Path], img_folder: str | Path | None = None) -> bool:
    """Whether `predict` gets volumes (then every input must be one, or a folder or list of
    them). A list's relative paths are read against `img_folder` (the run's data.img_folder),
    else the list's folder, as for 2-D lists."""
    flags = [is_volume_input(p, img_folder) for p in inputs]
    if any(flags) and not all(flags):
        other = next(p for p, f in zip(inputs, flags, strict=True) if not f)
        raise SamMedftError(f"{other} is not a volume (.nii, .nii.gz, a DICOM series folder, a "
                            "folder or list of them) but other inputs are: predict volumes and "
                            "2-D images in separate runs")
    return bool(flags) and all(flags)


def collect_volumes(inputs: Sequence[str | Path], img_folder: str | Path | None = None
                    ) -> list[tuple[Path, str]]:
    """(volume path, case id) for every input volume, in input order."""
    found: list[tuple[Path, str]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            paths = [f for f, _ in list_images(p, img_folder, folders_ok=True)]
            other = next((f for f in paths if not _is_volume_file(f)), None)
            if other is not None:
                raise SamMedftError(f"{p} lists {other}, which is not a volume (.nii, .nii.gz or "
                                    "a DICOM series folder), among volumes: list volumes only")
        else:
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


def predict_volume_paths(model: FineTunedSam | str | Path, inputs: Sequence[str | Path],
                         out_dir: str | Path, *, batch_size: int = 8, num_workers: int = 0,
                         largest_component: bool = False, fill_holes: bool = False,
                         values: str = "class", foreground: int | None = None,
                         overwrite: bool = False, device: str | None = None,
                         revision: str | None = None, show_progress: bool = True,
                         img_folder: str | Path | None = None) -> list[Path]:
    """Predict every input volume into `<out>/<case>.nii.gz` (+ legend.json); the inputs,
    --out and --values are checked before the model's weights load. Lists are read against
    `img_folder` (the run's data.img_folder), else their own folder."""
    out = Path(out_dir)
    volumes = collect_volumes(inputs, img_folder)
    if not volumes:
        raise SamMedftError(f"no volumes found in {', '.join(map(str, inputs))}")
    targets = [out / f"{case}.nii.gz" for _, case in volumes]
    def claim_out(claim: bool) -> None:  # checked before the model loads, claimed after
        check_output_folder(inputs, targets, out, overwrite=overwrite, claim=claim,
                            img_folder=img_folder, input_files=[v for v, _ in volumes])

    claim_out(False)
    meta = model.meta if isinstance(model, FineTunedSam) else AdapterMeta.read(
        find_adapter_folder(resolve_run(str(model), revision=revision)))
    lut = value_table(meta, values, foreground)
    if isinstance(model, str | Path):
        model = FineTunedSam.load(model, device=device, revision=revision)
    model.task.check_prediction(has_prompts=False)
    claim_out(True)
    write_legend(model.meta, out, values=values, foreground=foreground)
    for (path, _), target in tqdm(list(zip(volumes, targets, strict=True)), desc="predict",
                                  unit="volume", disable=not show_progress):
        volume = read_volume(path)
        labels = predict_volume(model, volume, batch_size=batch_size, num_workers=num_workers,
                                largest_component=largest_component, fill_holes=fill_holes)
        write_label_volume(target, labels if lut is None else lut[labels], like=volume)
    return targets
