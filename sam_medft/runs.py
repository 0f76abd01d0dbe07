"""The run folder `output_dir/name`: its paths, the marker that says we made it, and its lock.

Why each part exists (issue 12, "nothing of the user's is ever lost"):
- `name` is one plain folder name (config.py checks it) and the folder must resolve inside
  `output_dir`, so a run can never write to, or `--overwrite` delete, a project folder;
- `.sam_medft_run` (JSON: version, creation time) is written when this package creates a run
  folder; `--overwrite` empties only a folder that carries it (or that has the layout of a run
  written before markers existed: `recipe.yaml` plus `adapter/sam_medft.json` or a
  checkpoint), and logs every entry it removes;
- `.sam_medft_lock` is held by one writer at a time (train, resume, eval into `eval/`).

The lock is `fcntl.flock` on the lock file, plus the holder's pid, host and start time written
in it. flock makes taking the lock atomic and the kernel releases it when its process dies in
any way (SIGKILL included), so a lock left by a crash on this machine is recognised for sure
(the pid is also checked: not alive, or alive but a newer process with a reused pid). A record
left by a process on another host is not taken over automatically: some shared filesystems
keep flock per machine, and the run may still be going there; the message says how to clear it.

The artifact (issue 13): `adapter/sam_medft.json` is read and written by `AdapterMeta` only,
an adapter folder is found by `find_adapter_folder` only, and a run's `recipe.yaml` is located
by `run_recipe_file` only (and parsed by `config.read_recipe_file`), so a run folder, an adapter
folder copied elsewhere and a Hub snapshot (flat: sam_medft.json beside recipe.yaml) follow one
rule. Torch-free: the Hub code reads artifacts without loading a model.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import re
import shutil
import socket
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sam_medft.config import read_recipe_file
from sam_medft.errors import SamMedftError
from sam_medft.files import disk_errors, remove_tree, write_text_atomic
from sam_medft.version import __version__

log = logging.getLogger("sam_medft.runs")

MARKER = ".sam_medft_run"
LOCK = ".sam_medft_lock"
META_FILE = "sam_medft.json"  # the artifact's typed metadata (AdapterMeta)
RECIPE_FILE = "recipe.yaml"  # the resolved recipe a run was trained with
ADAPTER_DIR = "adapter"
# `sam-medft pretrain` (Setup 3) writes the encoder, not an adapter: encoder/ holds its
# tensors (SamModel's `vision_encoder.*` names) and what it was pretrained from
ENCODER_DIR = "encoder"
ENCODER_WEIGHTS = "model.safetensors"
ENCODER_META = "sam_medft_encoder.json"
CHECKPOINT_PREFIX = "checkpoint-"  # checkpoints/checkpoint-NNNNNNNN (training.checkpoint)
_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}\d+")
SCHEMA_VERSION = 2  # of META_FILE; 1: no schema_version, no multimask (see AdapterMeta.read)
_KEEP_ON_CLEAR = {LOCK, MARKER}
_NOT_RESULTS = {LOCK, MARKER, "logs"}  # what a run folder holds before it has any result
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunFolder:
    """Every path of a run folder, and the rules for creating, emptying and locking it."""

    root: Path

    @classmethod
    def for_recipe(cls, recipe) -> RunFolder:
        """`output_dir/name`, refused when it resolves outside output_dir (a symlinked run
        folder or output_dir pointing elsewhere is not followed into someone else's data)."""
        out = Path(recipe.output_dir).expanduser()
        root = out / recipe.name
        inside = root.resolve().parent == out.resolve()
        if not inside:
            raise SamMedftError(
                f"run folder {root} resolves to {root.resolve()}, which is not inside output_dir "
                f"{out.resolve()} (a symbolic link?); set output_dir to the real folder, or "
                f"choose another name")
        return cls(root)

    # ---- paths ------------------------------------------------------------------------------
    @property
    def recipe_file(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER_DIR

    @property
    def meta_file(self) -> Path:
        return self.adapter / META_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def train_log(self) -> Path:
        return self.logs / "train.log"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def summary(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK

    # ---- ownership --------------------------------------------------------------------------
    def is_marked(self) -> bool:
        return self.marker.is_file()

    def is_legacy_run(self) -> bool:
        """A run folder written before markers existed: the resolved recipe plus an adapter
        or a checkpoint in sam_medft's own layout (a recipe.yaml alone is not enough)."""
        return self.recipe_file.is_file() and (
            self.meta_file.is_file() or bool(checkpoint_folders(self.checkpoints)))

    def is_ours(self) -> bool:
        return self.is_marked() or self.is_legacy_run()

    # ---- contents ---------------------------------------------------------------------------
    def read_meta(self) -> AdapterMeta:
        """The trained adapter's typed metadata (`AdapterMeta.read` of adapter/)."""
        return AdapterMeta.read(self.adapter)

    def has_results(self) -> bool:
        """Anything besides the marker, the lock and logs/ (a run that failed its checks)."""
        return self.root.is_dir() and any(p.name not in _NOT_RESULTS for p in self.root.iterdir())

    def write_marker(self) -> None:
        write_text_atomic(self.marker, json.dumps(
            {"sam_medft_run": 1, "version": __version__, "created": _now()}, indent=2) + "\n")

    def clear(self) -> list[str]:
        """Empty the folder for `--overwrite` (keeping the held lock and the marker); logs, then
        returns, exactly what it removes."""
        doomed = sorted(p for p in self.root.iterdir() if p.name not in _KEEP_ON_CLEAR)
        names = [p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in doomed]
        if names:
            log.warning("--overwrite: removing from %s: %s", self.root, ", ".join(names))
        with disk_errors(self.root, "the run folder (emptying it for --overwrite)"):
            for p in doomed:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        return names

    def remove_leftovers(self) -> None:
        """What a run killed while writing leaves: `.adapter.tmp-*`, `.recipe.yaml.tmp-*`, ...
        and `checkpoints/.tmp-checkpoint-*` (never a finished result)."""
        for tmp in (*self.root.glob(".*.tmp-*"), *self.checkpoints.glob(".tmp-checkpoint-*")):
            log.info("removing %s, left by a run stopped while writing it", tmp)
            if tmp.is_dir():
                remove_tree(tmp)
            else:
                tmp.unlink(missing_ok=True)

    # ---- locking ----------------------------------------------------------------------------
    def lock(self, purpose: str) -> RunLock:
        """Take the run's lock now (raises when another writer holds it)."""
        return RunLock(self.lock_file, purpose).acquire()

    def open_for_training(self, *, resume: bool, overwrite: bool) -> RunLock:
        """Create or reuse the folder for a training run and return its held lock.

        Refuses (one SamMedftError, nothing changed) when: --resume finds no checkpoint or a
        folder we did not make; the folder has results and neither --resume nor --overwrite is
        given; --overwrite meets a folder without our marker; another writer holds the lock."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise SamMedftError(f"run folder {root} is a file; choose another name or output_dir")
        if resume and not _has_checkpoint(self):
            raise SamMedftError(f"--resume: no checkpoint in {self.checkpoints} (train without "
                                f"--resume to start the run)")
        with disk_errors(root, "the run folder"):
            root.parent.mkdir(parents=True, exist_ok=True)
            try:
                root.mkdir()
                created = True
            except FileExistsError:
                created = False
        try:
            lock = self.lock("resume" if resume else "train")
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    root.rmdir()  # only while empty: another writer may have got there first
            raise
        try:
            if resume:
                if not self.is_ours():
                    raise SamMedftError(self._not_ours("--resume continues only a run it made"))
                if not _has_checkpoint(self):  # removed while we waited for the lock
                    raise SamMedftError(f"--resume: no checkpoint in {self.checkpoints}")
                self.remove_leftovers()
            elif self.has_results():
                if not overwrite:
                    raise SamMedftError(
                        f"run folder {root} already exists; pass --resume to continue it, "
                        f"--overwrite to start again, or change `name`")
                if not self.is_ours():
                    raise SamMedftError(self._not_ours("--overwrite deletes only run folders "
                                                       "sam_medft made"))
                if not self.is_marked():
                    log.info("%s has the layout of a sam_medft run from before run markers: "
                             "treated as ours", root)
                self.clear()
            with disk_errors(root, "the run folder"):
                if not self.is_marked():
                    self.write_marker()
                self.logs.mkdir(exist_ok=True)
        except BaseException:
            if created:  # we held the lock from the start: all in it is ours
                with contextlib.suppress(OSError):
                    self.marker.unlink(missing_ok=True)
                    self.logs.rmdir()
            lock.release()
            if created:
                with contextlib.suppress(OSError):
                    root.rmdir()
            raise
        return lock

    def _not_ours(self, rule: str) -> str:
        return (f"{self.root} was not made by sam_medft (no {MARKER} marker, and not the layout "
                f"of an older run: recipe.yaml plus adapter/ or checkpoints/); {rule}. Choose "
                f"another `name` or output_dir, or move that folder away yourself")


def _has_checkpoint(run: RunFolder) -> bool:
    return bool(checkpoint_folders(run.checkpoints))


def checkpoint_folders(ckpt_root: Path) -> list[Path]:
    """Every `checkpoint-NNNNNNNN` folder, oldest first, complete or not."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name))


# ---- the artifact: adapter folder, its metadata, the run's recipe -----------------------------


def find_adapter_folder(path: str | Path) -> Path:
    """A run folder (with adapter/) or an adapter folder -> the adapter folder."""
    path = Path(path).expanduser()
    for candidate in (path, path / ADAPTER_DIR):
        if (candidate / META_FILE).is_file():
            return candidate
    raise SamMedftError(
        f"{path} holds no fine-tuned adapter ({META_FILE} not found in it or in "
        f"{path / ADAPTER_DIR}): pass a run folder (runs/<name>), its adapter/ folder or a Hub "
        f"id; `sam-medft train RECIPE` makes one")


def run_recipe_file(folder: str | Path) -> Path | None:
    """The recipe.yaml of the run an adapter (or run) folder belongs to; None when there is none.

    `<run>/adapter/` takes its run's recipe (a stray adapter/recipe.yaml does not win); any other
    folder the one beside it (a Hub snapshot is flat), else the one above (a copied adapter)."""
    folder = Path(folder).expanduser()
    here, above = folder / RECIPE_FILE, folder.parent / RECIPE_FILE
    order = (above, here) if folder.name == ADAPTER_DIR else (here, above)
    return next((c for c in order if c.is_file()), None)


def read_run_recipe(folder: str | Path) -> dict[str, Any] | None:
    """`run_recipe_file(folder)` as raw YAML (None when the run has no recipe)."""
    path = run_recipe_file(folder)
    return None if path is None else read_recipe_file(path)


_FIX = "re-run training to rewrite it (or download the model again)"


@dataclass
class AdapterMeta:
    """`adapter/sam_medft.json`: all that rebuilds the model and predicts as it was trained
    (base model, classes, method, preprocessing, prompt mode, multimask), so loading needs no
    other file. Read strictly: a missing, unknown or mistyped field is one message naming the
    file, since a guessed default would predict silently wrong.

    Formats (`schema_version`, always written as SCHEMA_VERSION): 1 = files without it, which
    have no `multimask` either (it comes from the run's recipe.yaml, as before); 2 = both."""

    base_model: str  # registry name, Hub id or folder, as resolvable by resolve_model_name
    num_classes: int
    class_names: list[str]
    method: str
    scope: str
    normalization: str
    input_size: int
    mask_size: int
    mask_outputs: int | None = None  # decoder multimask tokens (None: num_classes)
    labels: dict[str, str] | None = None  # raw mask value -> class name
    binary: bool = False
    prompt_mode: str = "none"
    multimask: bool = True  # prompt modes: decode SAM's 3 masks (as trained) or token 0 only
    intensity: dict = field(default_factory=dict)
    # trained on volumes: how they were sliced (data.volumes: axis, channels), so volumes are
    # predicted the same way; None: 2-D data
    volume: dict | None = None
    data_description: str = ""
    base_revision: str | None = None
    license: str | None = None  # for the Hub card (else the recipe's hub.license)
    sam_medft_version: str = __version__
    schema_version: int = SCHEMA_VERSION  # of the file it was read from

    def to_dict(self) -> dict[str, Any]:
        """What `to_json` writes: every field, in the current format."""
        data = asdict(self)
        del data["schema_version"]
        if data["volume"] is None:  # 2-D runs: files that sam_medft before volumes reads too
            del data["volume"]
        return {"schema_version": SCHEMA_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def read(cls, folder: str | Path) -> AdapterMeta:
        """`folder/sam_medft.json`, checked, format 1 migrated (multimask from the recipe)."""
        folder = Path(folder)
        path = folder / META_FILE
        if not path.is_file():
            raise SamMedftError(f"{folder} is not a sam_medft adapter folder: {META_FILE} is missing "
                                f"(expected a run folder with adapter/, an adapter folder or a Hub id)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SamMedftError(f"{path} is not readable JSON ({e}): {_FIX}") from None
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Any, *, source: Path) -> AdapterMeta:
        """Check a parsed `source` (sam_medft.json) and build the meta; the one migration of
        older formats lives here."""
        if not isinstance(data, dict):
            raise SamMedftError(f"{source} should hold a JSON object, not {type(data).__name__}: "
                                f"{_FIX}")
        version = data.get("schema_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SamMedftError(f"{source}: schema_version {version!r} is not a format number "
                                f"(1, 2, ...): {_FIX}")
        if version > SCHEMA_VERSION:
            raise SamMedftError(
                f"{source} is artifact format {version}, written by a newer sam_medft "
                f"({data.get('sam_medft_version', '?')}); this sam_medft ({__version__}) reads "
                f"formats up to {SCHEMA_VERSION}: upgrade sam_medft (pip install -U sam-medft)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SamMedftError(
                f"{source} has fields sam_medft {__version__} does not know: "
                f"{', '.join(map(repr, unknown))} (format {version}); remove them, or {_FIX}")
        required = {f.name for f in fields(cls) if _no_default(f)}
        if version >= 2:
            required |= {"multimask"}
        missing = sorted(required - set(data))
        if missing:
            raise SamMedftError(
                f"{source} lacks the field{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))} (format {version}): {_FIX}")
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            if not _is_a(value, hints[name]):
                raise SamMedftError(
                    f"{source}: {name} is {value!r} ({type(value).__name__}), it should be "
                    f"{_hint_text(hints[name])}: {_FIX}")
        data = {**data, "schema_version": version}
        if "multimask" not in data:  # format 1: what the run's recipe said, SAM's True without
            data["multimask"] = _recipe_multimask(source.parent)
        return cls(**data)


def _recipe_multimask(folder: Path) -> bool:
    """`prompt.multimask` of the recipe a format-1 adapter was trained with (True: none)."""
    try:
        raw = read_run_recipe(folder)
    except SamMedftError as e:
        raise SamMedftError(f"{e} (its {META_FILE} predates `multimask` and takes "
                            f"prompt.multimask from this recipe: fix or remove the recipe)") from None
    prompt = raw.get("prompt") if raw else None
    return bool(prompt.get("multimask", True)) if isinstance(prompt, dict) else True


def _no_default(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _is_a(value: Any, hint: Any) -> bool:
    """isinstance for the simple hints AdapterMeta uses (JSON's true is not an int here)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    base, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if not isinstance(value, base) or (isinstance(value, bool) and base is not bool):
        return False
    if base is list and args:
        return all(_is_a(v, args[0]) for v in value)
    if base is dict and args:
        return all(_is_a(k, args[0]) and _is_a(v, args[1]) for k, v in value.items())
    return True


def _hint_text(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("None", "null")


# ---- the lock ----------------------------------------------------------------------------------


def _process_started(pid: int) -> float | None:
    """The start time of process `pid` (None when unknown), to tell a reused pid apart."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # psutil missing, no such process, no access
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


class RunLock:
    """One writer per run folder: flock on the lock file + the holder's record in it."""

    def __init__(self, path: Path, purpose: str) -> None:
        self.path = Path(path)
        self.purpose = purpose
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> RunLock:
        with disk_errors(self.path, "the run folder's lock file"):
            fd, flocked = self._open_and_flock()
        try:
            previous = _parse(os.pread(fd, 65536, 0))
            if previous and not self._is_stale(previous, flocked):
                raise SamMedftError(self._held_message(previous))
            if previous:
                log.warning("run folder %s: taking over the lock of %s by pid %s on %s (started "
                            "%s), which ended without releasing it", self.path.parent,
                            previous.get("purpose", "a run"), previous.get("pid"),
                            previous.get("host"), previous.get("started"))
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                      "pid_created": _process_started(os.getpid()), "purpose": self.purpose,
                      "version": __version__}
            with disk_errors(self.path, "the run folder's lock file"):
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
                os.fsync(fd)
        except BaseException:
            os.close(fd)  # also drops the flock
            raise
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def _open_and_flock(self) -> tuple[int, bool]:
        """An fd on the lock file with the flock held (or flock unsupported here: False)."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(os.pread(fd, 65536, 0))
                os.close(fd)
                raise SamMedftError(self._held_message(holder)) from None
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    os.close(fd)
                    raise
                log.warning("%s: this filesystem has no flock; the run lock relies on the "
                            "holder's pid and host only", self.path)
                return fd, False
            # the holder may have removed the file between our open and flock: lock the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd, True
            os.close(fd)

    def _is_stale(self, holder: dict, flocked: bool) -> bool:
        """A record whose process is gone. With the flock taken, a record from this host is
        always stale (the kernel dropped the flock with its process); the pid check covers
        filesystems without flock. Records from other hosts are never taken over."""
        if holder.get("unreadable"):
            return flocked  # no one here holds it, and only a crash mid-write garbles it
        if holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int) or not pid_alive(pid) or pid == os.getpid():
            return True
        created, recorded = _process_started(pid), holder.get("pid_created")
        if created is not None and recorded is not None and abs(created - recorded) > 1:
            return True  # the pid now belongs to a newer process
        return flocked  # alive, same process, but not holding the flock: it released it

    def _held_message(self, holder: dict | None) -> str:
        run = self.path.parent
        if not holder or holder.get("unreadable"):
            return (f"run folder {run} is in use by another sam_medft process that is just "
                    f"starting (lock {self.path}); wait for it to finish or choose another `name`")
        who = (f"{holder.get('purpose', 'a run')} by pid {holder.get('pid')} on host "
               f"{holder.get('host')}, started {holder.get('started')}")
        if holder.get("host") != socket.gethostname():
            fix = (f"wait for it to finish or choose another `name`; if that process no longer "
                   f"runs (its machine was lost), delete {self.path} and rerun")
        else:
            fix = "wait for it to finish, stop it, or choose another `name`"
        return f"run folder {run} is in use: {who} (lock {self.path}); {fix}"

    def release(self) -> None:
        """Remove the record and drop the flock (on a crash the kernel drops it; the record
        left behind is then recognised as stale)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_FDS.discard(fd)
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def _parse(raw: bytes) -> dict | None:
    try:
        data = json.loads(raw.decode() or "null")
    except (UnicodeDecodeError, ValueError):
        data = {"unreadable": True}
    if data is not None and not isinstance(data, dict):
        data = {"unreadable": True}
    return data


# A forked child (a DataLoader worker) shares the lock's open file: close its copy, so the
# lock never outlives the process that took it.
_HELD_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


__all__ = ["ADAPTER_DIR", "CHECKPOINT_PREFIX", "LOCK", "MARKER", "META_FILE", "RECIPE_FILE",
           "SCHEMA_VERSION", "AdapterMeta", "RunFolder", "RunLock", "checkpoint_folders",
           "find_adapter_folder", "pid_alive", "read_run_recipe", "run_recipe_file"]
