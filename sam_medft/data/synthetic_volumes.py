"""Synthetic CT-like volumes (ellipsoid organs) in the nnU-Net raw layout, and DICOM series.

The volume demo and the tests need volumes with what real scans have and a naive reader gets
wrong: anisotropic voxels (thick axial slices), a stored orientation that is not RAS (LPS,
as DICOM-converted NIfTI files are) and an origin away from zero. Each case is a body
ellipsoid (soft tissue, ~40 HU) holding two organ ellipsoids (label 1 `organ_a`, bright
~160 HU; label 2 `organ_b`, ~100 HU, granular), in Hounsfield units so the CT window
presets apply. A few top/bottom slices hold no organ, as in real scans.
Everything is a pure function of the seed.

`write_dicom_series` writes a volume as a CT DICOM series with pydicom (one file per slice),
for the tests and for users who want to try the DICOM path.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from sam_medft.errors import SamMedftError
from sam_medft.files import read_manifest, write_manifest, write_text_atomic

VOLUME_LABELS: dict[int, str] = {0: "background", 1: "organ_a", 2: "organ_b"}
DEFAULT_SHAPE = (64, 64, 20)  # stored voxel counts (x, y, z)
DEFAULT_SPACING = (0.8, 0.8, 2.5)  # mm: thick axial slices
MANIFEST = "sam_medft_synth_volumes.json"
DATASET_NAME = "Dataset001_SynthOrgans"


def lps_affine(spacing: tuple[float, float, float], origin=(90.0, 70.0, -40.0)) -> np.ndarray:
    """A stored-LPS affine (x grows to the patient's Left, y to Posterior), as DICOM-converted
    NIfTI files have: RAS+ world, first two axes flipped, anisotropic voxels."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = origin
    return aff


def ellipsoid_case(seed: int, shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(image in HU float32, labels uint8) on the stored grid `shape`; sizes in mm, so the
    organs stay round in space whatever the voxel size."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing,
                                                                           strict=True)],
                        indexing="ij")
    x, y, z = grids
    half = [(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)]

    def inside(c, r) -> np.ndarray:
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1

    body = inside((0, 0, 0), (half[0] * 0.92, half[1] * 0.8, half[2] * 3))
    ra = np.array([half[0] * rng.uniform(0.22, 0.3), half[1] * rng.uniform(0.25, 0.32),
                   half[2] * rng.uniform(0.45, 0.6)])
    ca = np.array([-half[0] * rng.uniform(0.25, 0.35), half[1] * rng.uniform(-0.15, 0.15),
                   half[2] * rng.uniform(-0.1, 0.1)])
    rb = np.array([half[0] * rng.uniform(0.18, 0.24), half[1] * rng.uniform(0.18, 0.24),
                   half[2] * rng.uniform(0.35, 0.5)])
    cb = np.array([half[0] * rng.uniform(0.25, 0.35), half[1] * rng.uniform(-0.2, 0.2),
                   half[2] * rng.uniform(-0.15, 0.15)])
    labels = np.zeros(shape, np.uint8)
    labels[inside(ca, ra)] = 1
    labels[inside(cb, rb)] = 2
    image = np.full(shape, -1000.0, np.float32)
    image[body] = 40.0
    image[labels == 1] = 160.0
    texture = gaussian_filter(rng.normal(0, 1, shape), 1.0) * 120
    image[labels == 2] = 100.0 + texture[labels == 2]
    image += rng.normal(0, 12, shape).astype(np.float32)
    return image.astype(np.float32), labels


def volume_files(n_train: int, n_test: int) -> list[str]:
    files = [f"{DATASET_NAME}/dataset.json"]
    for i in range(n_train):
        files += [f"{DATASET_NAME}/imagesTr/case_{i:03d}_0000.nii.gz",
                  f"{DATASET_NAME}/labelsTr/case_{i:03d}.nii.gz"]
    for i in range(n_train, n_train + n_test):
        files += [f"{DATASET_NAME}/imagesTs/case_{i:03d}_0000.nii.gz",
                  f"{DATASET_NAME}/labelsTs/case_{i:03d}.nii.gz"]
    return files


def write_synthetic_volumes(out_dir: str | Path, n_train: int = 8, n_test: int = 2,
                            size: int = DEFAULT_SHAPE[0], n_slices: int = DEFAULT_SHAPE[2],
                            spacing=DEFAULT_SPACING, seed: int = 0,
                            overwrite: bool = False) -> Path:
    """Write an nnU-Net raw data set (`Dataset001_SynthOrgans/{imagesTr,labelsTr,imagesTs,
    labelsTs}` + dataset.json) of ellipsoid volumes of size x size x n_slices voxels;
    returns the data set folder."""
    if n_train < 1 or n_test < 0:
        raise SamMedftError(f"synthetic volumes: n_train {n_train} must be >= 1 and n_test "
                            f"{n_test} >= 0 (`data synth --volumes --n-train/--n-test`)")
    if not 8 <= size <= 1024 or not 8 <= n_slices <= 1024:
        raise SamMedftError(f"synthetic volumes: size {size} and n_slices {n_slices} must be "
                            "8 to 1024 voxels (`data synth --volumes --size`)")
    shape = (size, size, n_slices)
    out = Path(out_dir)
    ours = read_manifest(out / MANIFEST, "data synth --volumes", keep=lambda f: True,
                         fix=f"remove {out / MANIFEST} and the files it listed")
    existing = sorted((p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST),
                      key=str) if out.exists() else []
    foreign = [p for p in existing if p.relative_to(out).as_posix() not in ours | {MANIFEST}]
    if foreign or (existing and not overwrite):
        raise SamMedftError(
            f"{out} is not empty ({len(existing)} files, e.g. {existing[0]}): write synthetic "
            "volumes into a new or empty folder" + ("" if foreign else
                                                    ", or add --overwrite to replace them"))
    root = out / DATASET_NAME
    # listed before the first file is written: an interrupted call is cleaned by --overwrite
    planned = volume_files(n_train, n_test)
    write_manifest(out / MANIFEST, "data synth --volumes", sorted(ours | set(planned)))
    for rel in sorted(ours - set(planned)):  # a larger earlier set: drop its extra cases
        (out / rel).unlink(missing_ok=True)
    write_manifest(out / MANIFEST, "data synth --volumes", planned)
    affine = lps_affine(spacing)
    for i in range(n_train + n_test):
        image, labels = ellipsoid_case(seed * 100003 + i, shape, spacing)
        images, labs = ("imagesTr", "labelsTr") if i < n_train else ("imagesTs", "labelsTs")
        for folder, name, data in ((images, f"case_{i:03d}_0000.nii.gz", image),
                                   (labs, f"case_{i:03d}.nii.gz", labels)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            img = nib.Nifti1Image(data, affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            nib.save(img, str(root / folder / name))
    meta = {"channel_names": {"0": "CT"}, "labels": {v: k for k, v in VOLUME_LABELS.items()},
            "numTraining": n_train, "file_ending": ".nii.gz",
            "name": "synthetic ellipsoid organs (sam-medft data synth --volumes)"}
    write_text_atomic(root / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return root


def describe(root: Path) -> str:
    """What `data synth --volumes` wrote, and the command that trains on it."""
    meta = json.loads((root / "dataset.json").read_text())
    n_test = len(list((root / "imagesTs").glob("*.nii.gz"))) if (root / "imagesTs").is_dir() else 0
    return (f"wrote {meta['numTraining']} training and {n_test} test volumes (nnU-Net raw "
            f"layout) to {root}; classes {', '.join(list(meta['labels'])[1:])}. Train on them "
            f"with: sam-medft train demo data.source=nnunet data.folder={root} data.labels=null "
            f"data.intensity.preset=ct_abdomen name=demo_volumes")


def write_dicom_series(folder: str | Path, volume_lps: np.ndarray, spacing, origin_lps,
                       modality: str = "CT", orientation=(1, 0, 0, 0, 1, 0)) -> Path:
    """Write `volume_lps` (stored axes: columns, rows, slices) as one DICOM series, one file
    per slice, named in reverse order so that readers must sort by position. `spacing` =
    (column, row, slice) mm; `origin_lps` = first voxel; `orientation` = DICOM's
    ImageOrientationPatient (row then column direction in LPS; default axial: columns x,
    rows y, slices along z); slices step along row x column."""
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415  (only writers need it)
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: PLC0415

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    data = np.rint(volume_lps).astype(np.int16)
    n = data.shape[2]
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series, study, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = modality, "SYNTH", k + 1
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin_lps, float)
                                   + k * spacing[2] * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).tobytes()  # rows x columns
        ds.save_as(out / f"IM{n - k:04d}.dcm", enforce_file_format=True)
    return out
