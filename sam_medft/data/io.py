"""Reading 2-D images and label maps from disk, with explicit intensity scaling.

SAM wants 8-bit-like RGB in [0, 255]. Medical data is often 16-bit or float, and masks are
integer label maps (sometimes palette PNGs). Everything that turns a file into arrays goes
through here so that: >8-bit data is never silently clipped (percentile or window, as the
recipe says), palette masks keep their indices (never `convert("L")`), and a bad file
fails with one message naming it.
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from sam_medft.config import IntensityConfig
from sam_medft.errors import SamMedftError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
# lossy formats: fine for images, wrong for label maps (they change values at object edges)
LOSSY_MASK_EXTENSIONS = (".jpg", ".jpeg")
_MAX_LABEL_COLOURS = 64  # an RGB "mask" with more colours than this is a photo, not a legend
_UNSUPPORTED = (".nii", ".nii.gz", ".dcm", ".mha", ".mhd", ".nrrd")

# PIL modes whose pixels are 8-bit (used as is); everything else needs explicit scaling.
_EIGHT_BIT = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_MODE_INFO = {  # mode -> (channels, bit depth description)
    "1": (1, "1-bit"),
    "L": (1, "8-bit"),
    "LA": (2, "8-bit"),
    "P": (1, "8-bit palette"),
    "PA": (2, "8-bit palette"),
    "RGB": (3, "8-bit"),
    "RGBA": (4, "8-bit"),
    "CMYK": (4, "8-bit"),
    "YCbCr": (3, "8-bit"),
    "I;16": (1, "16-bit"),
    "I;16B": (1, "16-bit"),
    "I;16L": (1, "16-bit"),
    "I;16N": (1, "16-bit"),
    "I": (1, "32-bit int"),
    "F": (1, "32-bit float"),
}

Source = str | Path | BinaryIO | bytes


class MissingFileError(SamMedftError):
    """A listed or referenced file is not there (the data check counts these per file)."""


class NotALabelMapError(SamMedftError):
    """A "mask" that is a true-colour image: swapped columns, or the wrong folder/column."""


@dataclass(frozen=True)
class ImageHeader:
    """What the file header says, without decoding the pixels."""

    height: int
    width: int
    mode: str  # PIL mode, or `npy:<dtype>` for .npy
    channels: int
    depth: str  # "8-bit", "16-bit", "32-bit float", ...

    @property
    def kind(self) -> str:
        return f"{self.mode} ({self.channels}ch {self.depth})"


def _name(src: Source, name: str | None = None) -> str:
    if name:
        return name
    if isinstance(src, str | Path):
        return str(src)
    return getattr(src, "name", "<in-memory image>")


def _check_extension(path: Path) -> None:
    low = path.name.lower()
    if any(low.endswith(ext) for ext in _UNSUPPORTED):
        raise SamMedftError(
            f"{path}: NIfTI/DICOM/volume files are not read as 2-D images; give volumes to the "
            "volume sources (data.source: nnunet, or a folder or lists whose every entry is a "
            ".nii/.nii.gz volume or a DICOM series folder; see the README's Volumes section), "
            "or export 2-D slices (`sam-medft data slice`); convert .mha/.mhd/.nrrd to NIfTI"
        )


def _is_npy(src: Source) -> bool:
    return isinstance(src, str | Path) and str(src).lower().endswith(".npy")


def _open_file(src: Source) -> Path | BinaryIO:
    if isinstance(src, bytes):
        return _io.BytesIO(src)
    if isinstance(src, str | Path):
        path = Path(src)
        _check_extension(path)
        try:
            found = path.is_file()
        except (OSError, ValueError):  # a name the OS cannot look up (too long, NUL)
            found = False
        if not found:
            raise MissingFileError(f"{path}: file not found (check the path and the data folders)")
        return path
    return src


def _open_pil(src: Source, name: str | None, load: bool, verify: bool = False) -> Image.Image:
    """Open with PIL. `load=True` decodes all pixels (and closes the file) so truncation is
    caught here; `verify=True` checks the file's structure/checksums without decoding, then
    closes it (only the header attributes stay usable)."""
    where = _name(src, name)
    f = _open_file(src)
    img = None
    try:
        img = Image.open(f)
        if getattr(img, "n_frames", 1) > 1:
            raise SamMedftError(
                f"{where}: has {img.n_frames} frames (a volume or multi-page TIFF); "
                "save one 2-D slice per file"
            )
        if load:
            img.load()
        elif verify:
            img.verify()
    except SamMedftError:
        if img is not None:
            img.close()
        raise
    except Image.DecompressionBombError as e:
        if img is not None:
            img.close()
        raise SamMedftError(
            f"{where}: {e} Split it into smaller 2-D slices (or raise PIL.Image.MAX_IMAGE_PIXELS "
            "if you trust the file)"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as e:
        if img is not None:
            img.close()
        raise SamMedftError(
            f"{where}: cannot read this image ({e}); the file is corrupt, truncated or not an "
            "image: re-export it or remove it from the list"
        ) from None
    if not load:
        img.close()
    return img


def _load_npy(src: Source, name: str | None, mmap: bool = False) -> np.ndarray:
    where = _name(src, name)
    path = _open_file(src)
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:
        raise SamMedftError(f"{where}: cannot read this .npy array ({e}); re-save it") from None


# ---- headers -------------------------------------------------------------------------------


def image_header(src: Source, name: str | None = None, verify: bool = False) -> ImageHeader:
    """Size, mode, channels and bit depth from the header only (cheap). `verify=True` also
    walks the file's chunks/checksums (no decoding), which catches truncated PNGs."""
    if _is_npy(src):
        a = _load_npy(src, name, mmap=True)
        if a.ndim not in (2, 3):
            raise SamMedftError(f"{_name(src, name)}: array of shape {a.shape} is not a 2-D image")
        ch = 1 if a.ndim == 2 else a.shape[2]
        return ImageHeader(
            a.shape[0], a.shape[1], f"npy:{a.dtype}", ch, f"{a.dtype.itemsize * 8}-bit"
        )
    img = _open_pil(src, name, load=False, verify=verify)
    ch, depth = _MODE_INFO.get(img.mode, (len(img.getbands()), "unknown"))
    return ImageHeader(img.height, img.width, img.mode, ch, depth)


def image_size(src: Source, name: str | None = None) -> tuple[int, int]:
    """(H, W) from the header, without decoding the pixels."""
    h = image_header(src, name)
    return h.height, h.width


# ---- images --------------------------------------------------------------------------------


def read_image(
    src: Source, intensity: IntensityConfig | None = None, name: str | None = None
) -> np.ndarray:
    """An image file -> HxWx3 float32 in [0, 255] (grey replicated, alpha dropped)."""
    intensity = intensity or IntensityConfig()
    where = _name(src, name)
    if _is_npy(src):
        return array_to_rgb(_load_npy(src, name), intensity, where)
    return pil_to_rgb(_open_pil(src, name, load=True), intensity, where)


def pil_to_rgb(img: Image.Image, intensity: IntensityConfig, where: str) -> np.ndarray:
    """A decoded PIL image -> HxWx3 float32 in [0, 255]."""
    if img.mode in _EIGHT_BIT:
        if img.mode == "LA":
            img = img.getchannel("L")
        elif img.mode != "L":
            img = img.convert("RGB")  # P via its palette, RGBA drops alpha, 1 -> 0/255
        return _scale(np.asarray(img), intensity, where, eight_bit=True)
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img)
        if img.mode.startswith("I;16"):
            a = a.astype(np.uint16, copy=False)
        return _scale(a, intensity, where, eight_bit=False)
    raise SamMedftError(f"{where}: unsupported image mode {img.mode!r}; save it as PNG or TIFF")


def array_to_rgb(a: np.ndarray, intensity: IntensityConfig, where: str) -> np.ndarray:
    """A HxW or HxWxC array -> HxWx3 float32 in [0, 255]; uint8/bool count as 8-bit."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[..., :3] if a.shape[2] == 4 else a
    elif a.ndim != 2:
        raise SamMedftError(
            f"{where}: array of shape {a.shape} is not a 2-D image; use HxW, HxWx1, HxWx3 "
            "or HxWx4 (channels last)"
        )
    if a.size == 0:
        raise SamMedftError(f"{where}: image of shape {a.shape} has no pixels")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise SamMedftError(f"{where}: array dtype {a.dtype} is not numeric")
    return _scale(a, intensity, where, eight_bit=a.dtype == np.uint8)


def scale_intensity(
    a: np.ndarray, intensity: IntensityConfig | None = None, source: str = "array"
) -> np.ndarray:
    """An in-memory image (HxW or HxWxC array, or PIL image) -> HxWx3 float32 in [0, 255],
    with the same rules as files (for predicting on arrays)."""
    intensity = intensity or IntensityConfig()
    if isinstance(a, Image.Image):
        return pil_to_rgb(a, intensity, source)
    return array_to_rgb(np.asarray(a), intensity, source)


def _scale(a: np.ndarray, cfg: IntensityConfig, where: str, eight_bit: bool) -> np.ndarray:
    mode = cfg.mode
    if mode == "window":
        if cfg.window is None:
            raise SamMedftError(
                "data.intensity.mode=window needs data.intensity.window: [center, width] "
                "(e.g. [40, 400] for CT soft tissue)"
            )
        center, width = cfg.window
        if width <= 0:
            raise SamMedftError(f"data.intensity.window width must be > 0 (got {width})")
        out = _rescale(a, center - width / 2, center + width / 2)
    elif mode == "percentile" or (mode == "auto" and not eight_bit):
        out = _percentile(a, cfg.percentiles)
    elif eight_bit:  # auto or none
        out = a.astype(np.float32)
    else:
        raise SamMedftError(
            f"{where}: {a.dtype} data (more than 8 bits) with data.intensity.mode=none; pick "
            "data.intensity.mode: percentile (robust min-max) or window (with "
            "data.intensity.window: [center, width])"
        )
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    elif out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _percentile(a: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    finite = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a
    if finite.size == 0:
        return np.zeros(a.shape, np.float32)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:  # near-constant image: fall back to the full range
        lo, hi = float(finite.min()), float(finite.max())
    return _rescale(a, lo, hi)


def _rescale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    out = (a.astype(np.float64) - lo) * (255.0 / (hi - lo))
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out, 0.0, 255.0).astype(np.float32)


# ---- masks ---------------------------------------------------------------------------------


def read_mask(src: Source, name: str | None = None) -> np.ndarray:
    """A label-map file -> HxW int64 of the raw values (palette PNGs keep their indices)."""
    where = _name(src, name)
    if _is_npy(src):
        return mask_array(_load_npy(src, name), where)
    return pil_to_mask(_open_pil(src, name, load=True), where)


def pil_to_mask(img: Image.Image, where: str) -> np.ndarray:
    """A decoded PIL label map -> HxW int64 (never converts P to L)."""
    if img.mode in ("L", "P", "1") or img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img)
    elif img.mode in ("LA", "PA"):
        a = np.asarray(img)[..., 0]
    elif img.mode in ("RGB", "RGBA", "RGBX"):
        a = np.asarray(img)[..., :3]
    else:
        raise SamMedftError(
            f"{where}: mask mode {img.mode!r} is not a label map; save a single-channel "
            "label map (PNG mode L or P, or 16-bit PNG/TIFF)"
        )
    return mask_array(a, where)


def mask_array(a: np.ndarray, where: str) -> np.ndarray:
    """Validate a label-map array: 2-D (or equal channels), integer-valued -> int64."""
    a = np.asarray(a)
    if a.size == 0:
        raise SamMedftError(f"{where}: mask of shape {a.shape} has no pixels")
    if a.ndim == 3:
        if a.shape[2] == 1 or (a.shape[2] > 1 and (a == a[..., :1]).all()):
            a = a[..., 0]
        else:
            _colour_mask(a, where)
    if a.ndim != 2:
        raise SamMedftError(f"{where}: mask of shape {a.shape} is not a 2-D label map")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise SamMedftError(
                f"{where}: mask has non-integer values; masks must be integer label maps "
                "(resample masks with nearest-neighbour, not linear interpolation)"
            )
    elif not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise SamMedftError(f"{where}: mask dtype {a.dtype} is not an integer label map")
    return np.ascontiguousarray(a, dtype=np.int64)


def _colour_mask(a: np.ndarray, where: str) -> None:
    """Raise for a mask whose channels differ: a colour-coded legend (few colours) needs
    converting; a photo-like one (many colours) is an image where a mask belongs."""
    flat = a.reshape(-1, a.shape[2])
    flat = flat[:: max(1, flat.shape[0] // 65536)]  # a sample is plenty to count colours
    colours = len(np.unique(flat, axis=0))
    if colours > _MAX_LABEL_COLOURS:
        raise NotALabelMapError(
            f"{where}: this mask is a colour image ({colours}+ colours in {a.shape[2]} "
            "channels), not a label map: are the image and mask swapped (lists are "
            "image_path,mask_path, image first)? Masks are single-channel label maps, one "
            "integer value per class (PNG mode L or P)"
        )
    raise SamMedftError(
        f"{where}: this mask is colour-coded ({colours} colours in {a.shape[2]} channels); save "
        "a single-channel label map instead (one integer value per class, PNG mode L or P)"
    )
