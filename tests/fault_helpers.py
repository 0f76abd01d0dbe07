"""Shared by the fault tests (issue 12): fingerprints of folders, to show that a refused or
failed operation changed nothing, and real read-only folders and full disks.

Read-only needs care as root, who ignores modes: there `chattr +i` (immutable folder: no entry
can be created, removed or renamed in it, root included) is used instead of chmod 0o555.
A full disk is a real tmpfs of a few MB where mounting is permitted (root in this sandbox).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def digest(root: Path) -> dict[str, str]:
    """Every file and folder under `root` (relative path -> sha256, or "dir"), `root` included."""
    root = Path(root)
    out = {".": "dir" if root.is_dir() else _sha(root)}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else _sha(p)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` accepts no new, removed or renamed entries for the block: mode 0o555 for a
    normal user; `chattr +i` for root (skips when the filesystem has no immutable flag)."""
    folder = Path(folder)
    if not IS_ROOT:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield "chmod 0o555"
        finally:
            folder.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root and the filesystem has no immutable flag (chattr +i)")
    try:
        yield "chattr +i"
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """A real filesystem of `size` mounted on `folder` (skips where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if not IS_ROOT or mount is None:
        pytest.skip("a real small filesystem needs root (mount -t tmpfs)")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
