"""SMB 2/3 backend on smbprotocol.

Each backend has its own connection cache (so credentials of one endpoint
never leak into another's session) and passes `port=` on every call (the
cache is keyed by server:port). Signing is required by default, encryption
on request. Reads and writes go out as requests of at most 1 MiB and at most
the negotiated maximum, a few in flight per handle, with a credit budget:
smbprotocol raises instead of waiting when a request needs more credits
than the server granted, so the backend asks for more credits once (an echo
with a credit request) and keeps a semaphore of what is outstanding.

Files are written to a hidden temp name with one handle per writing thread,
then get their mtime and are renamed over the target (SMB2 rename with
replace). A large file's temp name derives from the resume key, with a JSON
journal beside it, so an interrupted run resumes by offset (files).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import smbclient
from smbclient._io import SMBFileTransaction, SMBRawIO, query_info
from smbprotocol import exceptions as smbexc
from smbprotocol.file_info import FileFsFullSizeInformation
from smbprotocol.open import (
    FilePipePrinterAccessMask,
)

from ferry.mover.backends.base import (
    INTERNAL_PREFIX,
    KERNEL_WRITE_BACK,
    Backend,
    Durability,
    Entry,
    EntryType,
    Holds,
    Limits,
    Reader,
    Resumable,
    Space,
    Writer,
    check_name,
)
from ferry.mover.backends.smb.files import SMBReader, SMBWriter
from ferry.mover.backends.smb.names import partial_rel
from ferry.mover.backends.smb.share import Share
from ferry.mover.backends.smb.wire.handles import (
    FILE_ATTRIBUTE_DIRECTORY,
)
from ferry.mover.endpoints import SMBEndpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Preserve
from ferry.mover.roots import RootId, endpoint_root

T = TypeVar("T")
log = logging.getLogger("ferry")


def _ns(dt: datetime | None) -> int:
    if dt is None:
        return 0
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


class SMBBackend(Backend):
    """Optional capabilities: Resumable (a journal beside the `.part`)."""

    holds = Holds(
        mtime_precision_ns=1000,  # FILETIME is 100 ns; smbclient reports microseconds
        atomic_rename=True,
        empty_dirs=True,
    )
    limits = Limits(chunk_writer=True)

    def __init__(
        self,
        ep: SMBEndpoint,
        durability: Durability = KERNEL_WRITE_BACK,
        accelerators: bool = True,
    ) -> None:
        self.ep = ep
        self.durability = durability
        self.share = Share(ep, durability, accelerators)

    def describe(self) -> str:
        return self.ep.describe()

    def stat(self, rel: str) -> Entry | None:
        return self.share.stat(rel)

    def close(self) -> None:
        self.share.close()

    def root_id(self) -> RootId:
        return endpoint_root(self.ep)

    def free_space(self) -> Space | None:
        """The volume's size as the server reports it for the root (FileFsFullSizeInformation,
        what `dir` shows), or for its nearest existing parent before it is created."""

        def ask(kw: dict[str, Any]) -> Space | None:
            share = f"\\\\{self.ep.host}\\{self.ep.share}"
            for n in range(len(self.share.prefix), -1, -1):
                path = "\\".join([share, *self.share.prefix[:n]])
                raw = SMBRawIO(
                    path,
                    mode="r",
                    share_access="rwd",
                    desired_access=FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
                    **kw,
                )
                try:
                    with SMBFileTransaction(raw) as t:
                        query_info(t, FileFsFullSizeInformation)
                except smbexc.SMBOSError as exc:
                    if exc.errno == 2:  # not created yet: its parent's volume
                        continue
                    raise
                info = t.results[0]
                unit = info["sectors_per_unit"].get_value() * info["bytes_per_sector"].get_value()
                return Space.checked(
                    info["caller_available_units"].get_value() * unit,
                    info["total_allocation_units"].get_value() * unit,
                    unit,
                )
            return None

        try:
            return self.share.run(ask)
        except FerryError as err:
            log.info("%s: free space unknown (%s); not checked", self.describe(), err)
            return None

    def partial_bytes(self, rel: str, resume_key: str) -> int:
        """The size of the `.part` a resumable write of `rel` with this key continues."""
        path = self.share.path(partial_rel(rel, resume_key))

        def st(kw: dict[str, Any]) -> int:
            try:
                return int(smbclient.stat(path, follow_symlinks=False, **kw).st_size)
            except smbexc.SMBOSError as exc:
                if exc.errno == 2:
                    return 0
                raise

        try:
            return self.share.run(st)
        except FerryError:
            return 0

    def root_type(self) -> EntryType | None:
        e = self.stat("")
        return e.type if e else None

    def prepare_destination(self) -> None:
        def mk(kw: dict[str, Any]) -> None:
            cur = f"\\\\{self.ep.host}\\{self.ep.share}"
            try:
                smbclient.stat(cur, **kw)
            except smbexc.SMBOSError:
                pass
            for part in [p for p in self.ep.path.split("/") if p]:
                cur = f"{cur}\\{part}"
                try:
                    smbclient.mkdir(cur, **kw)
                except OSError:
                    st = smbclient.stat(cur, **kw)
                    if not st.st_file_attributes & FILE_ATTRIBUTE_DIRECTORY:
                        raise

        self.share.run(mk, None, ErrorKind.DESTINATION_NOT_FOUND)

    def list_dir(self, rel: str) -> list[Entry]:
        where = f"{self.describe()}/{rel}"

        def ls(kw: dict[str, Any]) -> list[Entry]:
            out = []
            for d in smbclient.scandir(self.share.path(rel), **kw):
                name = d.name
                if name in (".", "..") or name.startswith(INTERNAL_PREFIX):
                    continue
                info = d.smb_info
                out.append(
                    self.share.entry(
                        check_name(name, where),
                        info.file_attributes,
                        info.end_of_file,
                        _ns(info.last_write_time),
                    )
                )
            return out

        return self.share.run(ls, rel)

    def open_read(self, rel: str, entry: Entry) -> Reader:
        return SMBReader(self.share, self.share.checked(rel), entry)

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        return SMBWriter(self.share, self.share.checked(rel), entry, resume_key)

    def mkdir(self, rel: str) -> None:
        def mk(kw: dict[str, Any]) -> None:
            try:
                smbclient.mkdir(self.share.path(rel), **kw)
            except OSError:
                if (
                    not smbclient.stat(self.share.path(rel), **kw).st_file_attributes
                    & FILE_ATTRIBUTE_DIRECTORY
                ):
                    raise

        self.share.run(mk, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def remove(self, rel: str, entry: Entry) -> None:
        def rm(kw: dict[str, Any]) -> None:
            try:
                if entry.type == EntryType.DIR:
                    smbclient.rmdir(self.share.path(rel), **kw)
                else:
                    smbclient.remove(self.share.path(rel), **kw)
            except smbexc.SMBOSError as exc:
                if exc.errno != 2:
                    raise

        self.share.run(rm, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        if preserve.times and entry.mtime_ns and entry.type in (EntryType.FILE, EntryType.DIR):
            self.share.run(
                lambda kw: smbclient.utime(
                    self.share.path(rel), ns=(entry.mtime_ns, entry.mtime_ns), **kw
                ),
                rel,
                ErrorKind.DESTINATION_NOT_FOUND,
            )


# The optional capabilities SMBBackend has, checked by mypy here (rclone's "check the interfaces
# are satisfied" block) and at run time by tests/backends/test_capabilities.py.
if TYPE_CHECKING:

    def _has(b: SMBBackend) -> Resumable:
        return b
