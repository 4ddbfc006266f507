"""Independent tree comparison for tests: plain os.lstat and hashlib, no Ferry code."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

from ferry.mover.backends.base import Entry
from ferry.mover.backends.local import LocalBackend


def snapshot(
    root: str | bytes, times: bool = True, dir_times: bool = True
) -> dict[bytes, tuple[Any, ...]]:
    """rel path (bytes) -> (kind, size, mode, mtime_ns, content hash or link target)."""
    root_b = os.fsencode(root)
    out: dict[bytes, tuple[Any, ...]] = {}
    inode_groups: dict[tuple[int, int], bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root_b)
            if name.startswith(b".~ferry."):
                out[rel] = ("INTERNAL",)
                continue
            st = os.lstat(p)
            m = st.st_mode
            if stat.S_ISLNK(m):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns if times else None)
            elif stat.S_ISDIR(m):
                out[rel] = (
                    "dir",
                    stat.S_IMODE(m),
                    st.st_mtime_ns if (times and dir_times) else None,
                )
            elif stat.S_ISREG(m):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                group = None
                if st.st_nlink > 1:
                    group = inode_groups.setdefault((st.st_dev, st.st_ino), rel)
                out[rel] = (
                    "file",
                    st.st_size,
                    stat.S_IMODE(m),
                    st.st_mtime_ns if times else None,
                    digest,
                    group,
                )
    return out


def assert_same_tree(src: str | bytes, dst: str | bytes, **kw: Any) -> None:
    a, b = snapshot(src, **kw), snapshot(dst, **kw)
    if a != b:
        only_a = sorted(set(a) - set(b))[:10]
        only_b = sorted(set(b) - set(a))[:10]
        diff = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]][:10]
        details = [f"{k!r}: {a[k]} != {b[k]}" for k in diff]
        raise AssertionError(
            f"trees differ: only in src {only_a}, only in dst {only_b}, differing {details}"
        )


class FlushLog(LocalBackend):
    """A destination that notes its flushes and deletes, in order (in `log`)."""

    def __init__(self, root: str, log: list[str] | None = None) -> None:
        super().__init__(root)
        self.log = [] if log is None else log

    def flush(self) -> None:
        self.log.append("flush")
        super().flush()

    def remove(self, rel: str, entry: Entry) -> None:
        self.log.append(f"remove {rel}")
        super().remove(rel, entry)
