"""`sam-medft data check` for volumes: one row per case (shape, spacing, orientation, label
values) and every geometry problem at once, each naming the image and its label file.

Slice-level checks (label values against the label map, empty masks, sizes) stay with
`data.check`, which reads the sliced splits; this adds what only the volume knows: voxel
grid, spacing in mm, the stored orientation, and whether the label volume lies on its
image's grid (a label resampled elsewhere or paired with the wrong scan).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.table import Table

from sam_medft.config import DataConfig
from sam_medft.data.sources import hf_volume_cases
from sam_medft.data.volume_source import volume_cases
from sam_medft.data.volumes import check_same_geometry, read_geometry, read_labels
from sam_medft.errors import SamMedftError

_SHOW_VALUES = 8


@dataclass
class CaseRow:
    split: str
    case_id: str
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str = ""
    label_values: list[int] = field(default_factory=list)
    problem: str = ""


@dataclass
class VolumeReport:
    rows: list[CaseRow]
    errors: list[str]

    def table(self) -> Table:
        t = Table(title="volumes (shape and spacing in RAS order: x, y, z)")
        for col in ("split", "case", "shape", "spacing (mm)", "stored as", "label values",
                    "problem"):
            t.add_column(col)
        for r in self.rows:
            values = ", ".join(map(str, r.label_values[:_SHOW_VALUES]))
            if len(r.label_values) > _SHOW_VALUES:
                values += f", ... ({len(r.label_values)})"
            t.add_row(r.split, r.case_id, "x".join(map(str, r.shape)) if r.shape else "-",
                      "x".join(f"{s:.3g}" for s in r.spacing) if r.spacing else "-",
                      r.orientation or "-", values or "-",
                      f"[red]{r.problem}[/red]" if r.problem else "[green]none[/green]")
        return t

    def raise_for_errors(self) -> None:
        if self.errors:
            raise SamMedftError(f"the volume check found {len(self.errors)} problem(s):\n- "
                                + "\n- ".join(self.errors))


def check_volumes(data: DataConfig) -> VolumeReport | None:
    """Every case of a volume recipe (None: the data are 2-D); never raises for data problems."""
    try:
        splits = volume_cases(data)
        if splits is None and data.source == "hf":  # a `datasets` column of volume paths
            splits = hf_volume_cases(data)
    except SamMedftError as e:
        return VolumeReport([], [str(e)])
    if splits is None:
        return None
    rows, errors = [], []
    for split, cases in splits.items():
        for case in cases:
            row = CaseRow(split, case.case_id)
            rows.append(row)
            try:
                image = read_geometry(case.image)
                row.shape, row.spacing = image.shape, image.spacing
                row.orientation = image.orientation
                if case.label is None:
                    continue
                labels = read_labels(case.label, image)
                row.label_values = np.unique(labels.array).tolist()
            except SamMedftError as e:
                row.problem = "cannot be read"
                errors.append(f"{split} case {case.case_id}: {e}")
                continue
            try:
                check_same_geometry(image, labels)
            except SamMedftError as e:
                row.problem = "label/image geometry differ"
                errors.append(f"{split} case {case.case_id}: {e}")
    return VolumeReport(rows, errors)
