"""An in-memory tree for the engine's in-process tests (planner, `ferry verify`): each case
states exactly the entries it is about (sizes, times, modes, owners, inodes, digests) and
the capabilities of each side, with no filesystem in the way."""

from __future__ import annotations

import errno

from ferry.mover.backends.base import Backend, Entry, EntryType, Holds, Reader, Writer
from ferry.mover.backends.local import LocalBackend
from ferry.mover.errors import ErrorKind, FerryError

T = 1_700_000_000_000_000_000  # a modification time, ns
SECOND = 1_000_000_000
LOCAL = LocalBackend.holds
PLAIN = Holds()  # an object store's: no links, modes, owners, xattrs or holes


def F(size: int = 10, mtime: int = T, mode: int = 0o644, **kw: object) -> Entry:
    kw.setdefault("uid", 1000)
    kw.setdefault("gid", 1000)
    return Entry("", EntryType.FILE, size, mtime, mode, **kw)  # type: ignore[arg-type]


def D(mtime: int = T, mode: int = 0o755) -> Entry:
    return Entry("", EntryType.DIR, 0, mtime, mode, 1000, 1000)


def L(target: str, mtime: int = T, mode: int = 0o777) -> Entry:
    return Entry("", EntryType.SYMLINK, 0, mtime, mode, 1000, 1000, target=target)


def copy_entry(e: Entry, name: str) -> Entry:
    c = Entry(
        name, e.type, e.size, e.mtime_ns, e.mode, e.uid, e.gid, e.nlink, e.ino, e.dev, e.blocks
    )
    c.target, c.digest = e.target, e.digest
    return c


class BytesReader(Reader):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_at(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


class Tree(Backend):
    """A tree in memory, relative path -> entry: as much of a backend as reading uses."""

    def __init__(
        self,
        entries: dict[str, Entry],
        caps: Holds = LOCAL,
        xattrs: dict[str, dict[str, bytes]] | None = None,
        follow: dict[str, str] | None = None,
        unlistable: tuple[str, ...] = (),
        data: dict[str, bytes] | None = None,
        exists: bool = True,
        name: str = "tree",
    ) -> None:
        self.entries = entries
        self.name = name
        self.holds = caps
        self._xattrs = xattrs or {}
        self.follow = follow or {}  # symlink -> what it resolves to (--links follow)
        self.unlistable = unlistable
        self.data = data or {}  # file contents; a file without any cannot be read
        self.exists = exists
        self.xattrs_read: list[str] = []

    def describe(self) -> str:
        return self.name

    def root_type(self) -> EntryType | None:
        return EntryType.DIR if self.exists else None

    def list_dir(self, rel: str) -> list[Entry]:
        if rel in self.unlistable:
            raise FerryError(ErrorKind.PERMISSION, "cannot list", rel)
        rel = self.follow.get(rel, rel)
        if rel and (rel not in self.entries or self.entries[rel].type != EntryType.DIR):
            raise FerryError(ErrorKind.IO_ERROR, "not a directory here", rel)
        prefix = f"{rel}/" if rel else ""
        found = [
            copy_entry(e, r[len(prefix) :])
            for r, e in self.entries.items()
            if r.startswith(prefix) and "/" not in r[len(prefix) :]
        ]
        return found[::-1]  # in no particular order: callers sort

    def resolve_link(self, rel: str, entry: Entry) -> tuple[str, Entry] | None:
        real = self.follow.get(rel)
        if real is None:
            return None
        return real, copy_entry(self.entries[real], entry.name)

    def xattrs(self, rel: str) -> dict[str, bytes] | None:
        self.xattrs_read.append(rel)
        return self._xattrs.get(rel)

    def open_read(self, rel: str, entry: Entry) -> Reader:
        if rel not in self.data:
            raise OSError(errno.EACCES, "Permission denied")
        return BytesReader(self.data[rel])

    def stat(self, rel: str) -> Entry | None:
        """An entry as listed; the root is a directory with D()'s metadata (the same on
        both sides unless a case puts its own under "")."""
        e = self.entries.get(rel, D() if rel == "" and self.exists else None)
        return None if e is None else copy_entry(e, rel.rpartition("/")[2])

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        raise NotImplementedError

    def mkdir(self, rel: str) -> None:
        raise NotImplementedError

    def remove(self, rel: str, entry: Entry) -> None:
        raise NotImplementedError
