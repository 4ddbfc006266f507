"""What SFTP readers, writers and the backend ask of a pooled session, and the records they
exchange with it. Two implementations satisfy `Session`: `wire.session.Session` (Ferry's own
framing, pipelined requests; the accelerated path) and `library.LibrarySession` (paramiko's
SFTPClient and SFTPFile only; FERRY_ACCELERATORS=off). `Connections` picks one when a
connection opens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import paramiko

# SFTP v3 open flags (draft-ietf-secsh-filexfer-02): what `Session.open` takes.
FXF_READ, FXF_WRITE, FXF_CREAT, FXF_TRUNC = 0x1, 0x2, 0x8, 0x10
MAX_REQUEST = 255 * 1024  # OpenSSH's sftp-server limit (256 KiB message minus headers)
KEPT_HANDLES = 2  # write handles a session keeps open between pieces

Handle = bytes  # an SFTP file handle, as the server gave it


@dataclass(slots=True)
class Stat:
    """The fields of a file's attributes the backend uses; None where the server left one out."""

    size: int | None
    mtime: int | None  # whole seconds


@dataclass(slots=True)
class Put:
    """One small file for `Session.put_many`: written to `tmp`, renamed to `final`."""

    tmp: str
    final: str
    data: bytes
    mode: int | None
    mtime: int | None
    written: bool = False  # the temp is complete; a failed rename leaves it in place


class Session(Protocol):
    """One SSH connection with its SFTP channel, lent to one thread at a time. Every call
    returns with its replies consumed, else the session says it is not `reusable`.

    Writes are acknowledged before a call returns. Where asked to fsync and the server (or
    the path) cannot, `fsync_refused` is set instead of failing the file."""

    transport: paramiko.Transport
    sftp: paramiko.SFTPClient
    dirty: bool  # replies may still be on their way
    broken: bool  # out of step with its server: close, never reuse
    fsync_refused: bool
    handles: dict[object, Handle]  # write handles kept open between a writer's pieces

    def reusable(self) -> bool:
        """Whether the pool may lend it again: in step, nothing outstanding."""
        ...

    def close(self) -> None: ...

    def statvfs_fields(self, path: str) -> tuple[int, ...]:
        """statvfs(2) of `path`'s filesystem: bsize, frsize, blocks, bfree, bavail, files,
        ffree, favail. OSError (EOPNOTSUPP) where not offered."""
        ...

    def statvfs(self, path: str) -> tuple[int, int]:
        """(bytes, inodes) this user may still take on the filesystem holding `path`."""
        ...

    def open(self, path: str, flags: int) -> Handle: ...

    def close_handle(self, handle: Handle) -> None: ...

    def keep_handle(self, owner: object, handle: Handle) -> None:
        """Keep `owner`'s open handle for its next piece (at most KEPT_HANDLES)."""
        ...

    def close_handles(self, finished: Callable[[object], bool]) -> None:
        """Close the kept handles of owners that are finished."""
        ...

    def read(
        self, handle: Handle, offset: int, length: int, piece: int
    ) -> Iterator[bytes | memoryview]:
        """The bytes of [offset, offset+length) in order, in bounded pieces; a file that ends
        early is FerryError SOURCE_CHANGED."""
        ...

    def read_small(self, path: str, size: int) -> tuple[bytes, Stat | bool | None]:
        """A whole small file, and its LSTAT taken after the reads: None if it vanished,
        False if the server's answer carries no size."""
        ...

    def write(self, handle: Handle, offset: int, data: bytes | memoryview, close: bool) -> None:
        """`data` at `offset`, acknowledged on return; with `close`, the handle is closed."""
        ...

    def write_small(
        self,
        path: str,
        data: bytes | memoryview,
        mode: int | None,
        mtime: int | None,
        fsync: bool = False,
    ) -> None:
        """A whole small file created (or truncated) at `path`, with its mode and times."""
        ...

    def set_meta(self, path: str, mode: int | None, mtime: int | None) -> None:
        """Mode and times of `path` (what is not None)."""
        ...

    def sync_file(self, path: str) -> None:
        """Flush a file written through other handles to the server's disk."""
        ...

    def put_many(self, files: list[Put], fsync: bool = False) -> list[OSError | None]:
        """Write and rename several small files: one outcome per file (see Put.written)."""
        ...

    def get_many(self, files: list[tuple[str, int]]) -> list[tuple[bytes, Stat] | None]:
        """Whole small files of (path, size) with their LSTAT after the reads; None where
        anything failed or came short."""
        ...
