"""The SFTP library path (FERRY_ACCELERATORS=off): a `Session` that does everything through
paramiko's public API, `SFTPClient` and `SFTPFile`, and parses nothing itself.

Reads: `SFTPFile.readv` over windows of READ_WINDOW bytes (paramiko's prefetch thread keeps
every reply it gets until it is read, so one window bounds what a reader holds). Writes:
`set_pipelined(True)` for all but the last request of a call, then the last one unpipelined,
which makes paramiko collect every reply still due, in order, raising the first failure
(paramiko's pipelined acknowledgements are otherwise only checked at a `close` that drops
their errors). What is in flight is bounded by the SSH window.

What paramiko's public API lacks, and what this path does instead:
- fsync@openssh.com: no fsync. A write asked to fsync sets `fsync_refused`, as on a server
  that declines it: `Connections.check_fsync` warns once and stops asking.
- statvfs@openssh.com: `statvfs_fields` raises EOPNOTSUPP, as on a server without it: free
  space is not checked, and a bare write failure is not told apart as a full disk.
- limits@openssh.com: requests are paramiko's own 32 KiB.
- OPEN with CREAT but not TRUNC (chunks of one temp file racing to create it): "r+", and
  where the file is not there yet "x+" (CREAT|EXCL), and "r+" again if another chunk won.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterator

import paramiko

from ferry.mover.backends.sftp.session import (
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    KEPT_HANDLES,
    Handle,
    Put,
    Stat,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import MiB

READ_WINDOW = 4 * MiB  # bytes one readv asks for, and the most a reader holds unread
REQUEST = paramiko.SFTPFile.MAX_REQUEST_SIZE  # paramiko's READ/WRITE size (32 KiB)


def _shrank() -> FerryError:
    return FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while reading")


def _mode(flags: int) -> str:
    """paramiko's open mode for SFTP open flags ("r+" stands for WRITE|CREAT: see open)."""
    if flags & FXF_TRUNC:
        return "w+" if flags & FXF_READ else "w"
    if flags & FXF_WRITE:
        return "r+"
    return "r"


class LibrarySession:
    """One SSH connection with its SFTPClient, lent to one thread at a time (see the module
    docstring). A failure in the middle of a call leaves it `dirty`: replies may still be due,
    and the pool closes it."""

    def __init__(self, transport: paramiko.Transport, sftp: paramiko.SFTPClient) -> None:
        self.transport, self.sftp = transport, sftp
        self.dirty = False
        self.broken = False
        self.fsync_refused = False
        self.handles: dict[object, Handle] = {}
        self._files: dict[Handle, paramiko.SFTPFile] = {}  # by a token of ours
        self._tokens = itertools.count()

    def reusable(self) -> bool:
        return not (self.broken or self.dirty)

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.transport.close()

    def statvfs_fields(self, path: str) -> tuple[int, ...]:
        raise OSError(errno.EOPNOTSUPP, "statvfs@openssh.com is not in paramiko's API")

    def statvfs(self, path: str) -> tuple[int, int]:
        bsize, frsize, _, _, bavail, _, _, favail = self.statvfs_fields(path)
        return bavail * (frsize or bsize), favail

    # -- handles -----------------------------------------------------------------------
    def open(self, path: str, flags: int) -> Handle:
        if flags & FXF_CREAT and not flags & FXF_TRUNC:
            f = self._open_or_create(path)
        else:
            f = self.sftp.open(path, _mode(flags))
        handle = next(self._tokens).to_bytes(8, "big")
        self._files[handle] = f
        return handle

    def _open_or_create(self, path: str) -> paramiko.SFTPFile:
        try:
            return self.sftp.open(path, "r+")
        except FileNotFoundError:
            pass
        try:
            return self.sftp.open(path, "x+")
        except OSError:  # created by another chunk meanwhile (else this open fails too)
            return self.sftp.open(path, "r+")

    def close_handle(self, handle: Handle) -> None:
        self._files.pop(handle).close()

    def keep_handle(self, owner: object, handle: Handle) -> None:
        while len(self.handles) >= KEPT_HANDLES:
            self.close_handle(self.handles.pop(next(iter(self.handles))))
        self.handles[owner] = handle

    def close_handles(self, finished: Callable[[object], bool]) -> None:
        for owner in [o for o in self.handles if finished(o)]:
            self.close_handle(self.handles.pop(owner))

    # -- data --------------------------------------------------------------------------
    def read(
        self, handle: Handle, offset: int, length: int, piece: int
    ) -> Iterator[bytes | memoryview]:
        f = self._files[handle]
        self.dirty = True
        end = offset + length
        while offset < end:
            stop = min(end, offset + READ_WINDOW)
            chunks = [(o, min(REQUEST, stop - o)) for o in range(offset, stop, REQUEST)]
            for (_, n), data in zip(chunks, f.readv(chunks), strict=True):
                if data:
                    yield data
                if len(data) < n:  # paramiko's read ends short at the end of the file
                    raise _shrank()
            offset = stop
        self.dirty = False

    def read_small(self, path: str, size: int) -> tuple[bytes, Stat | bool | None]:
        handle = self.open(path, FXF_READ)
        try:
            data = b"".join(self.read(handle, 0, size, size))
        finally:
            self.close_handle(handle)
        try:
            a = self.sftp.lstat(path)
        except FileNotFoundError:
            return data, None
        if a.st_size is None:
            return data, False
        return data, Stat(int(a.st_size), None if a.st_mtime is None else int(a.st_mtime))

    def write(self, handle: Handle, offset: int, data: bytes | memoryview, close: bool) -> None:
        f = self._files[handle]
        self.dirty = True
        mv = memoryview(data).cast("B")
        f.seek(offset)
        last = (len(mv) - 1) // REQUEST * REQUEST if mv else 0  # where the last request starts
        if last:
            f.set_pipelined(True)
            f.write(mv[:last])
        f.set_pipelined(False)  # the last write collects every reply still due
        f.write(mv[last:])
        if close:
            self.close_handle(handle)
        self.dirty = False

    def write_small(
        self,
        path: str,
        data: bytes | memoryview,
        mode: int | None,
        mtime: int | None,
        fsync: bool = False,
    ) -> None:
        handle = self.open(path, FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        f = self._files[handle]
        try:
            if data:
                self.write(handle, 0, data, close=False)
            if mode is not None:
                f.chmod(mode)
            if mtime is not None:
                f.utime((mtime, mtime))
        finally:
            self.close_handle(handle)  # paramiko's CLOSE skips past replies still due
        if fsync:
            self.fsync_refused = True  # paramiko has no fsync@openssh.com

    def set_meta(self, path: str, mode: int | None, mtime: int | None) -> None:
        if mode is not None:
            self.sftp.chmod(path, mode)
        if mtime is not None:
            self.sftp.utime(path, (mtime, mtime))

    def sync_file(self, path: str) -> None:
        self.fsync_refused = True  # paramiko has no fsync@openssh.com

    # -- batches: one file after another -----------------------------------------------
    def put_many(self, files: list[Put], fsync: bool = False) -> list[OSError | None]:
        errors: list[OSError | None] = []
        for f in files:
            try:
                self.write_small(f.tmp, f.data, f.mode, f.mtime, fsync)
                f.written = True
                self.sftp.posix_rename(f.tmp, f.final)
                errors.append(None)
            except OSError as exc:
                if not f.written:
                    try:
                        self.sftp.remove(f.tmp)
                    except OSError:
                        pass
                errors.append(exc)
        return errors

    def get_many(self, files: list[tuple[str, int]]) -> list[tuple[bytes, Stat] | None]:
        out: list[tuple[bytes, Stat] | None] = []
        midway = False  # a read failed with replies still due: the pool must not reuse this
        for path, size in files:
            try:
                data, st = self.read_small(path, size)
            except (OSError, FerryError):
                midway = midway or self.dirty
                out.append(None)
                continue
            out.append((data, st) if isinstance(st, Stat) and len(data) == size else None)
        self.dirty = self.dirty or midway
        return out
