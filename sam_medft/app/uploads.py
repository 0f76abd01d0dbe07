"""What the app's upload buttons hand over -> the one file or DICOM series folder to open.

Why: a browser uploads files, not folders, and `read_volume` reads a DICOM series from one
folder. Gradio 6 can upload a whole folder (`file_count="directory"`, the browser's folder
picker) or several files (`"multiple"`), but either way the handler gets each file at its
own temporary path, so the files of a series are linked (or copied) into one scratch folder
first; a `.zip` of a series is unpacked there. The folder is removed once the volume is read
(the scan keeps the voxels in memory). Rules, each a clear message when broken:

- one file: opened as it is (an image, a DICOM slice, a NIfTI volume);
- one `.zip`: its DICOM files are one series (other members are ignored; none: an error);
- several files: all DICOM files of one series (a file that is not DICOM is named);
- a folder: its DICOM files are one series (other files, e.g. DICOMDIR or notes, ignored).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sam_medft.data.volumes import is_dicom_file
from sam_medft.errors import SamMedftError

SERIES_NAME = "dicom_series"  # the series' name in the app (its files' folder is not sent)
MAX_UNZIPPED = 4 << 30  # bytes a .zip may unpack to (a large CT series is ~0.5 GiB)
INDEX_FILE = "DICOMDIR"  # a DICOM file, but an index of a media folder: no pixels


@contextmanager
def staged_upload(paths: Sequence[str | Path], names: Sequence[str] | None = None, *,
                  folder: bool = False) -> Iterator[tuple[Path, str]]:
    """Uploaded files (`names`: as the user named them) -> (the path to open, its name),
    valid inside the `with`. `folder`: the files of one uploaded folder."""
    files = [Path(p) for p in paths]
    names = list(names) if names is not None else [p.name for p in files]
    if not files:
        raise SamMedftError("no file was received; choose a file to open")
    if len(files) == 1 and not folder and not names[0].lower().endswith(".zip"):
        yield files[0], names[0]
        return
    with tempfile.TemporaryDirectory(prefix="sam_medft_series_") as scratch:
        series = Path(scratch) / SERIES_NAME
        series.mkdir()
        if len(files) == 1 and names[0].lower().endswith(".zip"):
            _unzip_dicom(files[0], names[0], series)
            yield series, Path(names[0]).stem
            return
        kept = 0
        for n, (path, name) in enumerate(zip(files, names, strict=True)):
            if Path(name).name.upper() == INDEX_FILE or Path(name).name.startswith("."):
                continue
            if not is_dicom_file(path):
                if folder:
                    continue
                raise SamMedftError(f"{name} is not a DICOM file: open one image or volume at "
                                    "a time, or the DICOM files of one series (or its folder)")
            _link(path, series / f"{n:05d}_{Path(name).name}")
            kept += 1
        if not kept:
            raise SamMedftError("the folder holds no DICOM files (files with 'DICM' at byte "
                                "128): open the folder of one DICOM series, or a NIfTI file")
        yield series, SERIES_NAME


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: copy
        shutil.copyfile(src, dst)


def _unzip_dicom(archive: Path, name: str, into: Path) -> None:
    """A zip's DICOM members, flattened into `into` (member paths are never used as paths)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_UNZIPPED:
                raise SamMedftError(f"{name} unpacks to more than {MAX_UNZIPPED >> 30} GiB; zip "
                                    "one DICOM series (or open its folder)")
            kept = 0
            for n, member in enumerate(members):
                base = Path(member.filename).name
                if base.upper() == INDEX_FILE or base.startswith("."):
                    continue
                target = into / f"{n:05d}_{base}"
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if is_dicom_file(target):
                    kept += 1
                else:
                    target.unlink()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise SamMedftError(f"{name}: not a readable zip file ({err}); zip the folder of one "
                            "DICOM series again") from None
    if not kept:
        raise SamMedftError(f"{name} holds no DICOM files (files with 'DICM' at byte 128): zip "
                            "the folder of one DICOM series, or open a NIfTI file")


__all__ = ["SERIES_NAME", "staged_upload"]
