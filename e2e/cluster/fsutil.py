"""Deleting pod and volume directories without ever reaching through a mount."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class MountedError(RuntimeError):
    """Refused to delete a tree that has something mounted inside it."""


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below `path` in this process's mount namespace."""
    prefix = str(path)
    hits = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            hits.append(point)
    return hits


def _remove(path: str, dev: int) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        if st.st_dev != dev:
            raise MountedError(f"{path} is on another filesystem")
        os.chmod(path, 0o700)
        with os.scandir(path) as it:
            for entry in it:
                _remove(entry.path, dev)
        os.rmdir(path)
    else:
        os.unlink(path)


def safe_rmtree(path: Path) -> None:
    """`rm -rf path`, refusing if anything is mounted below it or a subtree is another fs."""
    if not os.path.lexists(path):
        return
    hits = mounts_below(path)
    if hits:
        raise MountedError(f"refusing to delete {path}: mounted {hits[:3]}")
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    _remove(str(path), os.lstat(path).st_dev)
