"""SMB files: a reader of ranged requests, and a writer of a hidden temp file with one
handle per writing thread, renamed over the target at commit (see SMBWriter)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from typing import Any

import smbclient
from smbclient._io import SMBFileTransaction, SMBRawIO, set_info
from smbprotocol import exceptions as smbexc
from smbprotocol.file_info import FileBasicInformation, FileRenameInformation
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
)

from ferry.mover.backends.base import Entry, Reader, Writer
from ferry.mover.backends.resume.remote import RemoteState
from ferry.mover.backends.smb.names import internal_name, partial_rel
from ferry.mover.backends.smb.share import Share
from ferry.mover.backends.smb.wire import messages
from ferry.mover.backends.smb.wire.handles import (
    FILE_ATTRIBUTE_NORMAL,
    IO_MAX,
    READ_ACCESS,
    SHARE_ALL,
    Handle,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import Preserve


class SMBReader(Reader):
    def __init__(self, share: Share, rel: str, entry: Entry) -> None:
        self.share, self.rel, self.size = share, rel, entry.size
        self.mtime_ns = entry.mtime_ns
        self._after: tuple[int, int] | None = None  # (size, mtime) when the whole-file read closed

    def changed(self) -> str | None:
        """One stat after the copy: a file rewritten meanwhile must not be committed as copied.
        A whole file read in one compound already has it: its CLOSE asked for the attributes."""
        if self._after is not None:
            size, mtime_ns = self._after
        else:
            now = self.share.stat(self.rel)
            if now is None:
                return "file vanished while copying"
            size, mtime_ns = now.size, now.mtime_ns
        if size != self.size or (self.mtime_ns and mtime_ns // 1000 != self.mtime_ns // 1000):
            return "file changed while copying"
        return None

    def _read_whole(self, tree: Any) -> bytes | None:
        """CREATE + READ + CLOSE (with post-query attributes) in one round trip; None where
        the server stops at a symlink for the client to follow (smbclient's open does)."""
        bodies = [
            messages.create(
                self.share.share_rel(self.rel),
                READ_ACCESS,
                FILE_ATTRIBUTE_NORMAL,
                SHARE_ALL,
                CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_NON_DIRECTORY_FILE,
                ImpersonationLevel.Impersonation,
            ),
            messages.read(0, self.size),
            messages.close(),
        ]
        sem = self.share.credits() if self.size > 65536 else None
        if sem is not None:
            sem.acquire()
        try:
            opened, data, closed = self.share.exchange(tree, bodies)
        finally:
            if sem is not None:
                sem.release()
        if isinstance(opened, smbexc.StoppedOnSymlink):
            return None
        for res in (opened, data, closed):
            if isinstance(res, smbexc.EndOfFile):
                continue
            if isinstance(res, smbexc.SMBResponseException):
                raise smbexc.SMBOSError(res.status, self.share.path(self.rel))
        assert isinstance(closed, bytes)
        self._after = messages.closed_size_mtime(closed)
        return messages.read_data(data, self.size) if isinstance(data, bytes) else b""

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[bytes | memoryview]:
        length = min(length, self.size - offset)
        if length <= 0:
            return
        try:
            with smbclient.open_file(
                self.share.path(self.rel),
                mode="rb",
                buffering=0,
                share_access="rwd",
                **self.share.kw(),
            ) as raw:
                got = 0
                for data in self.share.pread(raw.fd, offset, length):
                    got += len(data)
                    yield data
                if got < length:
                    raise FerryError(
                        ErrorKind.SOURCE_CHANGED, "file shrank while reading", self.rel
                    )
        except FerryError:
            raise
        except Exception as exc:
            raise self.share.err(exc, self.rel) from None

    def read_at(self, offset: int, length: int) -> bytes:
        if offset == 0 and 0 < self.size <= length and self.size <= self.share.io_size():
            tree = self.share.run(lambda kw: self.share.tree(), self.rel)
            if tree is not None:
                whole = self.share.run(lambda kw: self._read_whole(tree), self.rel)
                if whole is not None:
                    return whole
        return b"".join(self.iter_range(offset, length, IO_MAX))


class SMBWriter(Writer):
    """Temp file beside the target, one handle per writing thread, rename with replace at commit.

    Without resume state the temp file is created by the first write (CREATE and a first WRITE
    of at most one request in one compound), and committed through that handle: SET_INFO
    (mtime), SET_INFO (rename) and CLOSE in a second one. The rename goes out only once the
    writes are known to have succeeded, so the final name never shows a partial file."""

    def __init__(self, share: Share, rel: str, entry: Entry, resume_key: str | None) -> None:
        self.share, self.rel, self.size = share, rel, entry.size
        parent, _, name = rel.rpartition("/")
        if resume_key:
            self.tmp_rel = partial_rel(rel, resume_key)
            jrel = (parent + "/" if parent else "") + internal_name(name, "journal")
            self.journal: str | None = share.path(jrel)
            self._jrel: str | None = jrel
            self.state: RemoteState | None = RemoteState(resume_key, self._load, self._save)
        else:
            self.tmp_rel = (parent + "/" if parent else "") + internal_name(
                name, secrets.token_hex(6) + ".tmp"
            )
            self.journal, self.state, self._jrel = None, None, None
        self.tmp = share.path(self.tmp_rel)
        self._tag = secrets.token_hex(4)
        self._handles: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._created = False  # the temp file exists (created or truncated by this writer)
        self._primary: Handle | None = None  # the creating handle, which also commits
        self.final_share_rel = "\\".join(
            p for p in (share.ep.path.replace("/", "\\"), rel.replace("/", "\\")) if p
        )
        if self.state is None:
            return  # created by the first write (or at commit, when empty)
        resumed = bool(self.state.data.get("chunks"))

        def create(kw: dict[str, Any]) -> None:
            if resumed:
                try:
                    smbclient.stat(self.tmp, **kw)
                    self._created = True
                    return
                except smbexc.SMBOSError:
                    assert self.state is not None
                    self.state.data["chunks"] = {}
            # Keep the creating handle: the thread that opened the writer usually writes it all.
            self._create(None, 0)

        share.run(create, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def _open(
        self, create: bool, data: bytes | memoryview | None, offset: int
    ) -> tuple[Any, bool | BaseException]:
        """A handle on the temp file (create: created or truncated); a first piece of data rides
        along in the same compound. Returns (handle, True if data was written, False if there
        was none to write, or the exception that failed the write)."""
        tree = self.share.tree()
        if tree is not None:
            opened = self.share.open_handle(tree, self.tmp_rel, create, data, offset)
            if opened is not None:
                return opened
        # DFS, or a symlink on the path: smbclient resolves the path
        mode = "wb" if create else "r+b"
        raw = smbclient.open_file(
            self.tmp, mode=mode, buffering=0, share_access="rwd", **self.share.kw()
        )
        return raw, False

    def _save_compound(self, blob: bytes) -> bool:
        """The journal through a fresh temp in two round trips: CREATE+WRITE, then rename over
        the journal + CLOSE (the rename only once the write succeeded). False on DFS, or
        where a symlink is on the path."""
        tree = self.share.tree()
        if tree is None or self._jrel is None or len(blob) > self.share.io_size():
            return False
        opened = self.share.open_handle(tree, f"{self._jrel}.{self._tag}.new", True, blob, 0)
        if opened is None:
            return False
        handle, wrote = opened
        if isinstance(wrote, BaseException):
            handle.close()
            raise wrote
        return self.share.finish_handle(handle, None, self.share.share_rel(self._jrel))

    def _create(self, data: bytes | memoryview | None, offset: int) -> bool:
        """Create the temp file with this thread's handle (self._lock held or not needed)."""
        handle, wrote = self._open(True, data, offset)
        self._created = True  # abort removes it, even when the write below failed
        if isinstance(wrote, BaseException):
            try:
                handle.close()
            except Exception:
                pass
            raise wrote
        if isinstance(handle, Handle):
            self._primary = handle
        self._handles[threading.get_ident()] = handle
        return wrote

    def _load(self) -> bytes | None:
        assert self.journal is not None
        journal = self.journal

        def rd(kw: dict[str, Any]) -> bytes | None:
            try:
                with smbclient.open_file(journal, mode="rb", share_access="rwd", **kw) as f:
                    return bytes(f.read())
            except smbexc.SMBOSError:
                return None

        return self.share.run(rd)

    def _save(self, blob: bytes) -> None:
        assert self.journal is not None
        journal = self.journal

        def wr(kw: dict[str, Any]) -> None:
            # A per-writer temp name: a killed run can leave its temp open in a dead session
            # (smbd then refuses renames of it for a while), so never reuse one.
            if self._save_compound(blob):
                return
            tmp = f"{journal}.{self._tag}.new"
            with smbclient.open_file(tmp, mode="wb", share_access="rwd", **kw) as f:
                f.write(blob)
            self.share.replace(tmp, journal, kw)

        self.share.run(wr, self.rel, ErrorKind.DESTINATION_NOT_FOUND)

    def _remove_journals(self, kw: dict[str, Any]) -> None:
        """The journal and any temp copies killed runs left beside it."""
        assert self.journal is not None
        parent, _, name = self.journal.rpartition("\\")
        try:
            names = [d.name for d in smbclient.scandir(parent, search_pattern=f"{name}*", **kw)]
        except smbexc.SMBOSError:
            names = []
        for n in names:
            try:
                smbclient.remove(f"{parent}\\{n}", **kw)
            except smbexc.SMBOSError:
                pass

    def _handle(self, data: bytes | memoryview | None = None, offset: int = 0) -> tuple[Any, bool]:
        """This thread's handle; the first one creates the temp file, with `data` written in the
        same round trip when given. Returns (handle, whether data was written)."""
        tid = threading.get_ident()
        with self._lock:
            raw = self._handles.get(tid)
            if raw is not None:
                return raw, False
            if not self._created:  # other threads wait here until the file exists
                wrote = self._create(data, offset)
                return self._handles[tid], wrote
        raw, _ = self._open(False, None, 0)
        with self._lock:
            self._handles[tid] = raw
        return raw, False

    def _drop_handle(self) -> None:
        with self._lock:
            raw = self._handles.pop(threading.get_ident(), None)
            if raw is self._primary:
                self._primary = None
        if raw is not None:
            try:
                raw.close()
            except Exception:
                pass

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        try:
            first = data if 0 < len(data) <= self.share.io_size() else None
            raw, wrote = self._handle(first, offset)
            if not wrote:
                self.share.pwrite(raw.fd, offset, data)
        except Exception as exc:
            self._drop_handle()
            raise self.share.err(exc, self.rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    def set_size(self, size: int) -> None:
        # Through our own handle: a fresh open without sharing would collide with it.
        self.share.run(
            lambda kw: self._handle()[0].truncate(size), self.rel, ErrorKind.DESTINATION_NOT_FOUND
        )

    def done_chunks(self, chunk_size: int = 0) -> dict[int, bytes]:
        if self.state is None:
            return {}
        return self.state.valid_chunks(chunk_size, self.size, self.read_back)

    def record_chunk(self, index: int, block_digests: bytes) -> None:
        if self.state is not None:
            self.state.add_chunk(index, block_digests)

    def read_back(self, offset: int, length: int) -> bytes:
        def rd(kw: dict[str, Any]) -> bytes:
            with smbclient.open_file(
                self.tmp, mode="rb", buffering=0, share_access="rwd", **kw
            ) as raw:
                return b"".join(self.share.pread(raw.fd, offset, length))

        return self.share.run(rd, self.rel)

    def _close_handles(self, keep: Any = None) -> None:
        with self._lock:
            handles = [h for h in self._handles.values() if h is not keep]
            if keep is None and self._primary is not None and self._primary not in handles:
                handles.append(self._primary)
            self._handles.clear()
            if keep is None:
                self._primary = None
        for raw in handles:
            try:
                raw.close()
            except Exception:
                pass

    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        if self.state is not None:
            self.state.close()  # no timer may resave the state after commit deletes it
        primary = self._primary
        # Closing after writes moves mtime, so set it afterwards (or on the last open handle).
        self._close_handles(keep=primary)

        def fin(kw: dict[str, Any]) -> None:
            mtime = entry.mtime_ns if preserve.times and entry.mtime_ns else None
            handle = primary
            if not self._created:  # nothing was written: an empty file
                self._create(None, 0)
                handle = self._primary
                self._close_handles(keep=handle)
            if handle is not None:
                done = self._finish_on_handle(handle, mtime)
            else:
                if self.share.fsync_each:
                    with SMBRawIO(self.tmp, mode="r+", share_access="rwd", **kw) as raw:
                        raw.fd.flush()
                done = self._finish_compound(mtime, kw)
            if not done:
                if mtime is not None:
                    smbclient.utime(self.tmp, ns=(mtime, mtime), **kw)
                self.share.replace(self.tmp, self.share.path(self.rel), kw)
            if self.journal:
                self._remove_journals(kw)

        self.share.run(fin, self.rel, ErrorKind.DESTINATION_NOT_FOUND)

    def _finish_on_handle(self, handle: Handle, mtime_ns: int | None) -> bool:
        """Set the mtime and rename into place through the handle that wrote the file (one
        round trip, see Share.finish_handle)."""
        self._primary = None
        return self.share.finish_handle(
            handle, mtime_ns, self.final_share_rel, flush=self.share.fsync_each
        )

    def _finish_compound(self, mtime_ns: int | None, kw: dict[str, Any]) -> bool:
        """Set the mtime and rename into place in one round trip (create, set-info x2, close).
        False when the server refuses (Samba will not rename onto an existing file)."""
        raw = SMBRawIO(
            self.tmp,
            mode="r",
            share_access="rwd",
            desired_access=FilePipePrinterAccessMask.DELETE
            | FilePipePrinterAccessMask.FILE_WRITE_ATTRIBUTES,
            **kw,
        )
        try:
            with SMBFileTransaction(raw) as tx:
                if mtime_ns is not None:
                    basic = FileBasicInformation()
                    ft = messages.filetime(mtime_ns)
                    basic["last_access_time"] = ft
                    basic["last_write_time"] = ft
                    set_info(tx, basic)
                rename = FileRenameInformation()
                rename["replace_if_exists"] = True
                rename["file_name"] = self.final_share_rel
                set_info(tx, rename)
        except (smbexc.SMBOSError, smbexc.SMBResponseException):
            return False
        return True

    def abort(self, keep_partial: bool = False) -> None:
        if self.state is not None:
            self.state.close()  # stops timed saves; a kept partial is flushed below
        self._close_handles()
        try:
            if keep_partial and self.state is not None:
                self.state.flush()
                return

            def rm(kw: dict[str, Any]) -> None:
                if self._created:
                    try:
                        smbclient.remove(self.tmp, **kw)
                    except smbexc.SMBOSError:
                        pass
                if self.journal:
                    self._remove_journals(kw)

            self.share.run(rm, self.rel)
        except Exception:
            pass
