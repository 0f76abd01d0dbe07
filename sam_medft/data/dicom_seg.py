"""DICOM-SEG label files, read by highdicom onto their image series' voxel grid.

Why its own module: a DICOM-SEG is one file holding binary frames for some slices only
(empty frames are usually left out), each segment named by its SegmentLabel; its pixels mean
nothing without the image grid they were drawn on. highdicom builds the segment volume from
the frames' positions and matches it (axis permutation, flips, padding the left-out slices
with background; never resampling) to the image's grid, so a SEG label becomes the same
int64 label volume a NIfTI label gives. Voxel values are segment numbers; the class names
come from the segment labels (`segment_labels`). Nothing here parses DICOM itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam_medft.errors import SamMedftError

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_seg(path: str | Path) -> bool:
    """A DICOM file whose SOP class is Segmentation Storage (read from the header alone)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:  # DICOM Part 10: "DICM" at byte 128 (cheap for NIfTI files)
            fh.seek(128)
            if fh.read(4) != b"DICM":
                return False
    except OSError:  # a folder (DICOM series), a missing file
        return False
    import pydicom  # noqa: PLC0415  (pydicom imports in ~0.2 s; only DICOM users pay it)

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # not DICOM at all: pydicom raises InvalidDicomError, OSError, ...
        return False
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS_UID


def segment_labels(path: str | Path) -> dict[int, str]:
    """Segment number -> SegmentLabel of a DICOM-SEG file (header only)."""
    import pydicom  # noqa: PLC0415

    p = Path(path)
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        return {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    except Exception as e:
        raise SamMedftError(f"{p} cannot be read as a DICOM-SEG file ({e.__class__.__name__}: "
                            f"{str(e)[:120]}): re-export the segmentation") from None


def read_seg_on_grid(path: str | Path, ras_affine: np.ndarray, shape: tuple[int, int, int],
                     image: str | Path) -> np.ndarray:
    """The SEG's segments as an int64 volume (value = segment number, 0 = none) on the grid
    `ras_affine` (voxel index -> RAS+ mm) and `shape` of its image `image`."""
    import highdicom as hd  # noqa: PLC0415  (imports pydicom plugins; only SEG users pay it)

    p = Path(path)
    try:
        seg = hd.seg.segread(p)
        volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.int64)
    except Exception as e:
        raise SamMedftError(
            f"{p} cannot be read as a DICOM-SEG volume ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''}): its frames must be planes of "
            "one regularly spaced 3-D grid, with no overlapping segments; re-export it") from None
    grid = hd.VolumeGeometry(_LPS_FROM_RAS @ np.asarray(ras_affine, dtype=np.float64),
                             tuple(int(s) for s in shape), coordinate_system="PATIENT")
    try:
        matched = volume.match_geometry(grid)
    except (RuntimeError, ValueError) as e:
        raise SamMedftError(
            f"{p} does not lie on the voxel grid of its image {image} ({str(e)[:160]}): the "
            "segmentation must be drawn on that image series (same slices and pixel grid); "
            "pair it with the series it was made from") from None
    return np.ascontiguousarray(matched.array, dtype=np.int64)
