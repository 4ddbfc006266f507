"""SFTP backend on paramiko.

One SFTP channel serves one thread at a time (paramiko's response handling is
not safe for concurrent synchronous requests), so the backend keeps a small
pool of SSH connections and lends one per operation; a file's chunks are
written at offsets from several connections at once. Bulk reads and writes
are pipelined on a `session.Session`: the wire's (Ferry frames the SFTP requests itself)
or, with the accelerators off, paramiko's SFTPFile (`library.LibrarySession`); either way
writes are acknowledged before each call returns, so a recorded chunk is on the server.
Sockets get TCP_NODELAY (paramiko leaves Nagle on, which stalls small
pipelined requests) and SSH windows stay modest (huge windows make paramiko's
reads collapse).

Files are written to a hidden temp name beside the target and renamed into
place with posix-rename@openssh.com where offered (atomic replace). A large
file's temp name is derived from the resume key, and a small JSON journal
beside it records finished chunks, so a later run resumes by offset.
"""

from __future__ import annotations

import logging
import stat
from typing import TYPE_CHECKING

import paramiko

from ferry.mover.backends.base import (
    INTERNAL_PREFIX,
    KERNEL_WRITE_BACK,
    Backend,
    Durability,
    Entry,
    EntryType,
    GetSmall,
    Holds,
    Limits,
    PutSmall,
    Reader,
    Resumable,
    SmallFile,
    Space,
    Symlinks,
    Writer,
    check_name,
)
from ferry.mover.backends.sftp.connections import Connections
from ferry.mover.backends.sftp.files import (
    SFTPReader,
    SFTPWriter,
    apply_meta,
    meta_of,
    partial_path,
    temp_name,
)
from ferry.mover.backends.sftp.session import Put, Session
from ferry.mover.endpoints import SFTPEndpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Preserve
from ferry.mover.roots import RootId, sftp_root

log = logging.getLogger("ferry")
MAX_REALPATH = 64 * 1024  # longest root path accepted from the server's realpath


class SFTPBackend(Backend):
    """Optional capabilities: Symlinks, PutSmall and GetSmall (pipelined batches), Resumable."""

    holds = Holds(
        mtime_precision_ns=10**9,  # SFTP v3 carries whole seconds
        atomic_rename=True,
        symlinks=True,
        permissions=True,
        empty_dirs=True,
    )
    limits = Limits(chunk_writer=True)

    def __init__(
        self,
        ep: SFTPEndpoint,
        durability: Durability = KERNEL_WRITE_BACK,
        accelerators: bool = True,
    ) -> None:
        self.ep = ep
        self.durability = durability
        self.conns = Connections(ep, durability, accelerators)

    def describe(self) -> str:
        return self.ep.describe()

    def stat(self, rel: str) -> Entry | None:
        return self.conns.stat(rel)

    def close(self) -> None:
        self.conns.close()

    def free_space(self) -> Space | None:
        """statvfs@openssh.com on the root, or on its nearest existing parent before it is
        created; None where the server does not offer it."""

        def ask(s: Session) -> Space | None:
            path = self.conns.root
            while True:
                try:
                    bsize, frsize, blocks, _, bavail, *_ = s.statvfs_fields(path)
                    break
                except FileNotFoundError:
                    if path in (".", "/"):
                        return None
                    path = path.rpartition("/")[0] or ("/" if path.startswith("/") else ".")
            unit = frsize or bsize
            return Space.checked(bavail * unit, blocks * unit, unit)

        try:
            return self.conns.run_session(ask)
        except FerryError as err:
            log.info("%s: free space unknown (%s); not checked", self.describe(), err)
            return None

    def partial_bytes(self, rel: str, resume_key: str) -> int:
        """The size of the `.part` a resumable write of `rel` with this key continues."""
        tmp = partial_path(self.conns.path(rel), resume_key)

        def st(sftp: paramiko.SFTPClient) -> int:
            try:
                return int(sftp.lstat(tmp).st_size or 0)
            except FileNotFoundError:
                return 0

        try:
            return self.conns.run(st)
        except FerryError:
            return 0

    def root_type(self) -> EntryType | None:
        e = self.stat("")
        return e.type if e else None

    def root_id(self) -> RootId:
        """The root as the server resolves it (realpath: `~/` paths, `..`, symlinks), so a
        relative and an absolute name of one directory are one root. A root that does not
        exist yet is its deepest existing ancestor's real path plus the rest."""

        def resolve(sftp: paramiko.SFTPClient) -> object:
            path, rest = self.conns.root, ""
            while True:
                try:
                    return f"{sftp.normalize(path)}/{rest}"
                except FileNotFoundError:
                    head, _, tail = path.rpartition("/")
                    if not tail or tail in (".", ".."):
                        return None
                    rest = f"{tail}/{rest}"
                    path = head or ("/" if path.startswith("/") else ".")

        real = self.conns.run(resolve, None)
        if not (isinstance(real, str) and real.startswith("/") and len(real) <= MAX_REALPATH):
            # No usable answer (nothing resolvable, not an absolute path, too long): compare
            # the root as written.
            real = self.conns.root
        return sftp_root(self.ep.host, self.ep.port, self.ep.user, real)

    def prepare_destination(self) -> None:
        def mk(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.stat(self.conns.root)
                return
            except FileNotFoundError:
                pass
            parts = self.conns.root.strip("/").split("/")
            cur = "" if self.conns.root.startswith("/") else "."
            for p in parts:
                cur = f"{cur}/{p}"
                try:
                    sftp.stat(cur)
                except FileNotFoundError:
                    sftp.mkdir(cur)

        self.conns.run(mk, None, ErrorKind.DESTINATION_NOT_FOUND)

    def list_dir(self, rel: str) -> list[Entry]:
        where = f"{self.describe()}/{rel}"
        parent = self.conns.path(rel)

        def ls(sftp: paramiko.SFTPClient) -> list[Entry]:
            out = []
            for a in sftp.listdir_attr(parent):
                name = a.filename
                if name in (".", "..") or name.startswith(INTERNAL_PREFIX):
                    continue
                out.append(self.conns.entry(check_name(name, where), a, parent, sftp))
            return out

        return self.conns.run(ls, rel)

    def open_read(self, rel: str, entry: Entry) -> Reader:
        return SFTPReader(self.conns, rel, entry)

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        return SFTPWriter(self.conns, rel, entry, resume_key)

    def mkdir(self, rel: str) -> None:
        p = self.conns.path(rel)

        def mk(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.mkdir(p)
            except OSError:
                if not stat.S_ISDIR(sftp.stat(p).st_mode or 0):
                    raise

        self.conns.run(mk, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def remove(self, rel: str, entry: Entry) -> None:
        p = self.conns.path(rel)

        def rm(sftp: paramiko.SFTPClient) -> None:
            try:
                if entry.type == EntryType.DIR:
                    sftp.rmdir(p)
                else:
                    sftp.remove(p)
            except FileNotFoundError:
                pass

        self.conns.run(rm, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        if entry.type == EntryType.SYMLINK:
            return  # SFTP v3 cannot set a symlink's own times or mode
        self.conns.run(
            lambda sftp: apply_meta(sftp, self.conns.path(rel), entry, preserve),
            rel,
            ErrorKind.DESTINATION_NOT_FOUND,
        )

    def symlink(self, rel: str, target: str) -> None:
        p = self.conns.path(rel)

        def ln(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(p)
            except FileNotFoundError:
                pass
            # OpenSSH's sftp-server swaps SSH_FXP_SYMLINK's arguments; paramiko sends them
            # in the order OpenSSH expects for symlink(source=target, dest=path).
            sftp.symlink(target, p)

        self.conns.run(ln, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def put_small(self, files: list[SmallFile], preserve: Preserve) -> list[FerryError | None]:
        puts = [
            Put(
                temp_name(self.conns.path(f.rel)),
                self.conns.path(f.rel),
                f.data,
                *meta_of(f.entry, preserve),
            )
            for f in files
        ]

        def put(s: Session) -> list[FerryError | None]:
            out: list[FerryError | None] = []
            outcomes = s.put_many(puts, self.conns.fsync_each)
            self.conns.check_fsync(s)
            for p, f, exc in zip(puts, files, outcomes, strict=True):
                if exc is not None and p.written:
                    exc = self.conns.rename_or_remove(s.sftp, p.tmp, p.final)  # no posix-rename?
                missing = ErrorKind.DESTINATION_NOT_FOUND
                out.append(None if exc is None else self.conns.err(exc, f.rel, missing, s))
            return out

        return self.conns.run_session(put, None, ErrorKind.DESTINATION_NOT_FOUND)

    def get_small(self, files: list[tuple[str, Entry]]) -> list[bytes | None]:
        """One pipelined exchange; a file whose LSTAT after the reads is not the size and
        mtime listed is None (read again on its own, which tells what changed)."""
        try:
            got = self.conns.run_session(
                lambda s: s.get_many([(self.conns.path(r), e.size) for r, e in files])
            )
        except FerryError:
            return [None] * len(files)
        out: list[bytes | None] = []
        for (_, e), r in zip(files, got, strict=True):
            data, st = r if r is not None else (None, None)
            if st is None or st.size != e.size or (e.mtime_ns and st.mtime != e.mtime_ns // 10**9):
                data = None
            out.append(data)
        return out


# The optional capabilities SFTPBackend has, checked by mypy here (rclone's "check the interfaces
# are satisfied" block) and at run time by tests/backends/test_capabilities.py.
if TYPE_CHECKING:

    def _has(b: SFTPBackend) -> tuple[Symlinks, PutSmall, GetSmall, Resumable]:
        return b, b, b, b
