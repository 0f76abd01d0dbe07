"""Writing the user's files safely: normal modes, folders that appear whole, plain disk errors.

Three rules every writer of run folders, adapters, checkpoints and eval outputs follows:
- modes follow the user's umask (0666/0777 & ~umask), as a shell's `touch`/`mkdir` would:
  `tempfile.mkdtemp` makes 0700 folders and safetensors writes 0600 files, which would keep
  a shared lab folder's other users from reading an adapter;
- a folder is written under a temporary name next to its final place and renamed into place,
  so a crash leaves the old version or the new one, never half of one;
- a full disk or a folder the user may not write to is one `SamMedftError` naming the path
  and the fix, not an OSError traceback from deep inside torch or safetensors.

Standard library only: every layer (models, train, eval) uses it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sam_medft.errors import SamMedftError

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_ERRNO_IN_TEXT = re.compile(r"os error (\d+)|\[Errno (\d+)\]")
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else with the
    set-and-restore pair (under a lock; a thread creating files in between is not ours)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask_modes(root: Path) -> None:
    """Give `root` and everything under it the modes a plain `open`/`mkdir` would: files
    0666 & ~umask, folders 0777 & ~umask. Only for trees this package just wrote."""
    mask = current_umask()
    root = Path(root)
    if root.is_file():
        os.chmod(root, 0o666 & ~mask)
        return
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o666 & ~mask)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in `parent` with the umask's mode (unlike mkdtemp's 0700).
    Its name starts with `prefix`, so a later run can recognise and remove a leftover."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()  # mode 0o777 & ~umask
            return path
        except FileExistsError:
            continue


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file whole or not at all (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def os_error_of(err: BaseException, folder: Path | str) -> OSError | None:
    """The OSError behind a failed write, also where a library hid it: safetensors raises
    SafetensorError("... (os error 28)"), torch's zip writer a RuntimeError ("unexpected pos",
    "file write failed") without the cause; then a small probe write into `folder` asks the
    filesystem itself whether it is full or read-only (None: it is not the disk)."""
    if isinstance(err, OSError):
        return err
    if not isinstance(err, Exception):
        return None  # KeyboardInterrupt and friends are not disk errors
    found = _ERRNO_IN_TEXT.search(str(err))
    if found:
        code = int(next(g for g in found.groups() if g))
        return OSError(code, os.strerror(code), str(folder))
    if isinstance(err, RuntimeError):
        return _probe(Path(folder))
    return None


def _probe(folder: Path) -> OSError | None:
    probe = folder / f".sam_medft_probe-{secrets.token_hex(4)}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 65536)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        return e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def disk_error(err: BaseException, path: Path | str, what: str,
               after: str = "") -> SamMedftError | None:
    """The user-facing error for a full disk or an unwritable folder (None for other errors).
    `path`: what was being written (a folder or a file); `after`: what to do once fixed
    (e.g. "then continue with --resume")."""
    path = Path(path)
    cause = os_error_of(err, path if path.is_dir() else path.parent)
    if cause is None:
        return None
    code = cause.errno
    where = Path(cause.filename) if getattr(cause, "filename", None) else path
    then = f", {after}" if after else ""
    if code in NO_SPACE:
        return SamMedftError(
            f"no space left on the disk of {where} while writing {what}: free space there "
            f"(or set output_dir to a folder on a bigger disk){then}")
    if code in NOT_WRITABLE:
        return SamMedftError(
            f"cannot write {what} to {where} ({os.strerror(code)}): choose a writable output_dir "
            f"(or make that folder writable for your user){then}")
    if code == errno.ENOTDIR:
        return SamMedftError(
            f"cannot write {what} to {where}: part of that path is a file, not a folder; choose "
            f"another output_dir or name{then}")
    return None


@contextlib.contextmanager
def disk_errors(path: Path | str, what: str, after: str = "") -> Iterator[None]:
    """Turn a full disk or an unwritable folder inside the block into one SamMedftError."""
    try:
        yield
    except SamMedftError:
        raise
    except Exception as err:
        friendly = disk_error(err, path, what, after)
        if friendly is None:
            raise
        raise friendly from err


def remove_tree(path: Path) -> None:
    """Remove a temporary tree this package made, never failing the caller's real error."""
    shutil.rmtree(path, ignore_errors=True)


def write_manifest(path: Path, command: str, files: Iterable[str]) -> None:
    """Record, next to them, the files `sam-medft <command>` wrote: its `--overwrite` then
    replaces these and never a file of the user's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"written_by": f"sam-medft {command}",
            "about": f"`sam-medft {command} --overwrite` replaces these files and no others",
            "files": sorted(files)}
    write_text_atomic(path, json.dumps(body, indent=1) + "\n")


def read_manifest(path: Path, command: str, *, keep: Callable[[str], bool], fix: str) -> set[str]:
    """The files a manifest of `write_manifest` lists that pass `keep` (none without one); an
    unreadable manifest is one message, since which files are ours is then unknown."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return set()
    try:
        files = json.loads(path.read_text())["files"]
        return {f for f in files if isinstance(f, str) and keep(f)}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SamMedftError(
            f"{path} cannot be read ({e.__class__.__name__}), so which files in {path.parent} "
            f"`sam-medft {command}` wrote is unknown: {fix}") from None
