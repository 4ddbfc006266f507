"""The rooting rules: a path a peer names is used only if it stays below ROOT.

`check_path` (protocol.py) refuses what cannot be a relative path inside a root. What
exists on disk is checked here: no existing component below ROOT may be a symlink
(lstat of each), except the final one where the operation itself never follows it (stat,
remove, replace). A peer can plant symlinks (they are data it copies), so the check and
the use must not be separated by one: creating a symlink (or hard-linking one) takes the
root's lock exclusively, every other operation holds it shared from check to use.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ferry.mover.backends.ferry.protocol import check_path
from ferry.mover.errors import ErrorKind, FerryError


class RWLock:
    """Many shared holders or one exclusive holder."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Root:
    """ROOT and the check every path goes through."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.lock = RWLock()

    def check(self, rel: object, follow_final: bool = False, what: str = "path") -> str:
        """`rel` validated, and no existing component of it a symlink (the last one too
        when the operation would follow it). Call with `lock` held."""
        path = check_path(rel, what)
        if not path:
            return path
        parts = path.split("/")
        cur = self.root
        for i, part in enumerate(parts):
            cur = f"{cur}/{part}"
            try:
                st = os.lstat(cur)
            except (FileNotFoundError, NotADirectoryError):
                return path  # nothing further exists; the operation reports what is missing
            except OSError as exc:
                raise FerryError(
                    ErrorKind.IO_ERROR, f"cannot check {what}: {exc.strerror}"
                ) from None
            last = i == len(parts) - 1
            if stat.S_ISLNK(st.st_mode) and (follow_final or not last):
                raise FerryError(
                    ErrorKind.UNSAFE_PATH,
                    f"{what} {path!r} goes through a symlink ({'/'.join(parts[: i + 1])})",
                )
        return path
