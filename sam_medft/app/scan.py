"""What the app opens: a 2-D image or a stack of slices, with the geometry to save labels in.

A `Scan` is always a stack of slices (a 2-D image is a stack of one), so a volume slots in
with a slice slider and nothing else changes. Each slice gives two pictures:

- `model_image(k, intensity)`: what the model sees, by the package's own intensity rules
  (`data.io.read_image` for image files, `scale_intensity` for slices of arrays), so the
  app's masks equal `sam_medft.load(run).predict(...)` on the same file or array;
- `display_image(k, window)`: what the person sees; a window/level preset changes only this.

Image files (PNG, TIFF, BMP, JPEG, .npy) go through `data.io`; a DICOM file (one slice, or
the frames of a multi-frame file) through pydicom with its rescale slope/intercept. A volume
(a NIfTI file or a DICOM series folder) goes through `data.volumes.read_volume`, as training
and `predict` read it: reoriented to RAS, sliced along the run's training axis
(`VolumeConfig.axis`, with `plane`'s viewer orientation), scaled once per volume with the
run's intensity rules and, for 2.5-D runs, given its neighbouring slices as channels
(`data.volume_source.scale_volume` / `slice_image`), so what the model sees on a slice is
what it saw in training and what `predict_volume` gives it. A volume's labels are written
back with `write_label_volume` (the source's voxel order, affine and header); a DICOM
slice's affine is built from its position/orientation/spacing. Unreadable files raise one
`SamMedftError` naming the file, before any model work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sam_medft.config import IntensityConfig, VolumeConfig
from sam_medft.data.io import IMAGE_EXTENSIONS, read_image, scale_intensity
from sam_medft.data.volume_source import scale_volume, slice_image
from sam_medft.data.volumes import Volume, axis_index, is_dicom_series, plane, read_volume
from sam_medft.errors import SamMedftError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
OPENABLE = (*IMAGE_EXTENSIONS, *NIFTI_SUFFIXES, *DICOM_SUFFIXES)

#: window/level presets (center, width) for the display; None = as the model sees it
WINDOWS: dict[str, tuple[float, float] | None] = {
    "as the model sees it": None,
    "full range": (float("nan"), float("nan")),  # min..max of the slice
    "CT soft tissue (40/400)": (40.0, 400.0),
    "CT lung (-600/1500)": (-600.0, 1500.0),
    "CT bone (400/1800)": (400.0, 1800.0),
    "CT brain (40/80)": (40.0, 80.0),
}


@dataclass
class Scan:
    """A stack of 2-D slices from one file or series. `source`: the file (image files are
    re-read through `data.io` so the model input is exactly predict's); `arrays`: the slices
    of DICOM files (HxW or HxWxC raw values); `volume`: a NIfTI volume or DICOM series in RAS
    order, sliced across `slicing.axis`; `affine`: voxel -> world (RAS, mm) of a DICOM slice,
    None for plain images (saved with a unit affine)."""

    name: str
    kind: str  # "image", "dicom" or "volume"
    source: Path
    shape: tuple[int, int]  # (H, W) of every slice
    arrays: list[np.ndarray] = field(default_factory=list)
    affine: np.ndarray | None = None
    volume: Volume | None = None
    slicing: VolumeConfig = field(default_factory=VolumeConfig)
    _scaled: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def axis(self) -> int:
        return axis_index(self.slicing.axis)

    def __len__(self) -> int:
        if self.volume is not None:
            return self.volume.shape[self.axis]
        return max(1, len(self.arrays))

    def raw(self, k: int) -> np.ndarray:
        if self.volume is not None:
            return plane(self.volume.array, self.axis, k)
        if self.kind == "image":
            return _raw_image(self.source)
        return self.arrays[k]

    def scaled_volume(self, intensity: IntensityConfig) -> np.ndarray:
        """The whole volume in [0, 255] by `intensity` (one scale per volume, as training and
        `predict_volume` scale it), computed once per intensity setting."""
        if self.volume is None:
            raise SamMedftError(f"{self.name} is not a volume")
        key = intensity.model_dump_json()
        if key not in self._scaled:
            self._scaled[key] = scale_volume(self.volume.array, intensity, self.name)
        return self._scaled[key]

    def model_image(self, k: int, intensity: IntensityConfig,
                    channels: str | None = None) -> np.ndarray:
        """Slice k as the model sees it: HxWx3 float32 in [0, 255] (predict's rules; a
        volume: `channels` "2d" or "2.5d", by default the scan's slicing)."""
        if self.volume is not None:
            return slice_image(self.scaled_volume(intensity), self.axis, k,
                               channels or self.slicing.channels)
        if self.kind == "image":
            return read_image(self.source, intensity, name=self.name)
        return scale_intensity(self.arrays[k], intensity, source=f"{self.name} slice {k}")

    def display_image(self, k: int, intensity: IntensityConfig, window: str) -> np.ndarray:
        """Slice k for the screen: HxWx3 uint8, through the named window/level preset."""
        if window not in WINDOWS:
            raise SamMedftError(f"unknown window {window!r}; use one of {', '.join(WINDOWS)}")
        preset = WINDOWS[window]
        if preset is None and self.volume is not None:  # the slice itself, not 2.5-D's channels
            grey = np.round(plane(self.scaled_volume(intensity), self.axis, k)).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        raw = self.raw(k)
        if preset is None or (raw.ndim == 3 and raw.shape[2] >= 3):
            return np.round(self.model_image(k, intensity)).astype(np.uint8)
        grey = raw.astype(np.float64)
        if grey.ndim == 3:
            grey = grey[..., 0]
        center, width = preset
        if np.isnan(center):
            lo, hi = float(np.nanmin(grey)), float(np.nanmax(grey))
        else:
            lo, hi = center - width / 2, center + width / 2
        scaled = np.zeros_like(grey) if hi <= lo else (grey - lo) * (255.0 / (hi - lo))
        out = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
        return np.repeat(out[..., None], 3, axis=2)


def open_scan(path: str | Path, name: str | None = None,
              slicing: VolumeConfig | None = None) -> Scan:
    """A file or a DICOM series folder -> a Scan, or one clear error naming the file and what
    to give instead. `slicing`: how the run slices volumes (its adapter's `volume` settings)."""
    path = Path(path)
    name = name or path.name
    low = name.lower()
    if path.is_dir() and is_dicom_series(path):
        return _open_volume(path, name, slicing or VolumeConfig())
    if not path.is_file():
        raise SamMedftError(f"{name}: file not found")
    if low.endswith(NIFTI_SUFFIXES):
        return _open_volume(path, name, slicing or VolumeConfig())
    if low.endswith(DICOM_SUFFIXES):
        return _open_dicom(path, name)
    if low.endswith(IMAGE_EXTENSIONS):
        try:  # decodes, or names the problem (the upload's temporary path left out)
            image = read_image(path, IntensityConfig(), name=name)
        except SamMedftError as err:
            reason = str(err).replace(f"'{path}'", "").replace(str(path), name)
            raise SamMedftError(reason.replace(" or remove it from the list", "")) from None
        return Scan(name, "image", path, tuple(image.shape[:2]))
    raise SamMedftError(f"{name}: cannot open this kind of file; open an image "
                        f"({', '.join(IMAGE_EXTENSIONS)}), a DICOM slice (.dcm), a DICOM "
                        f"series (its folder, files or .zip) or a NIfTI volume (.nii, .nii.gz)")


def _raw_image(path: Path) -> np.ndarray:
    """The file's own values (16-bit stays 16-bit) for display windows."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with Image.open(path) as img:
        if img.mode in ("P", "PA", "1", "CMYK", "YCbCr"):
            img = img.convert("RGB")
        return np.asarray(img)


def _open_volume(path: Path, name: str, slicing: VolumeConfig) -> Scan:
    """A NIfTI file or DICOM series through `read_volume` (RAS), sliced as the run was."""
    try:
        volume = read_volume(path)
    except SamMedftError as err:  # name the upload, not its temporary path
        raise SamMedftError(str(err).replace(str(path), name)) from None
    first = plane(volume.array, slicing.axis, 0)
    return Scan(name, "volume", path, (int(first.shape[0]), int(first.shape[1])),
                volume=volume, slicing=slicing)


def _open_dicom(path: Path, name: str) -> Scan:
    import pydicom  # loaded only when a DICOM file is opened
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
        values = apply_modality_lut(pixels, ds).astype(np.float32)
    except Exception as err:  # pydicom raises many types for a broken or pixel-less file
        raise SamMedftError(f"{name}: not a readable DICOM image ({err}); give a DICOM file "
                            f"with pixel data (one slice, or a multi-frame image)") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    stack = values if frames > 1 else values[None]
    if stack.ndim == 4:  # colour frames: keep channels last
        arrays = list(stack)
    elif stack.ndim == 3:
        arrays = list(stack)
    else:
        raise SamMedftError(f"{name}: DICOM pixel data of shape {values.shape} is not an image")
    return Scan(name, "dicom", path, tuple(arrays[0].shape[:2]), arrays, _dicom_affine(ds))


def _dicom_affine(ds) -> np.ndarray | None:
    """Voxel (column, row, frame) -> RAS mm from the DICOM geometry tags, or None."""
    try:
        orient = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    thickness = float(getattr(ds, "SliceThickness", 1.0) or 1.0)
    x_dir, y_dir = orient[:3], orient[3:]
    affine = np.eye(4)
    affine[:3, 0] = x_dir * col_mm
    affine[:3, 1] = y_dir * row_mm
    affine[:3, 2] = np.cross(x_dir, y_dir) * thickness
    affine[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM is LPS, NIfTI RAS


__all__ = ["DICOM_SUFFIXES", "NIFTI_SUFFIXES", "OPENABLE", "WINDOWS", "Scan", "open_scan"]
