"""SFTP readers and writers: pipelined READs and WRITEs on sessions lent by `Connections` (either
`Session`: the wire's or the library's), a hidden temp (or resumable `.part`) file renamed
into place at commit."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Callable, Iterator

import paramiko

from ferry.mover.backends.base import (
    INTERNAL_PREFIX,
    Entry,
    Reader,
    Writer,
    buffer_resize,
    buffer_write,
    join,
)
from ferry.mover.backends.resume.remote import RemoteState
from ferry.mover.backends.sftp.connections import WRITE_STREAMS, Connections
from ferry.mover.backends.sftp.session import (
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    MAX_REQUEST,
    Session,
    Stat,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import MiB, Preserve

BULK = 1 * MiB  # writes at least this large count as a stream


def apply_meta(sftp: paramiko.SFTPClient, path: str, entry: Entry, preserve: Preserve) -> None:
    if preserve.perms and entry.mode:
        sftp.chmod(path, entry.mode & 0o7777)
    if preserve.times and entry.mtime_ns:
        sec = entry.mtime_ns // 10**9
        sftp.utime(path, (sec, sec))


def temp_name(final: str) -> str:
    """A fresh hidden temp name beside `final`, for a file written in one go."""
    parent, _, name = final.rpartition("/")
    return f"{parent}/{_internal(name, secrets.token_hex(6) + '.tmp')}"


def partial_path(final: str, resume_key: str) -> str:
    """Where a resumable write of `final` keeps its partial: a name per source version."""
    parent, _, name = final.rpartition("/")
    parent = parent or "/"
    tag = hashlib.blake2b(resume_key.encode(), digest_size=8).hexdigest()
    part = _internal(name, f"{tag}.part")
    return join(parent, part) if parent != "/" else "/" + part


def meta_of(entry: Entry, preserve: Preserve) -> tuple[int | None, int | None]:
    """(mode, mtime in seconds) to set on a written file; None where not preserved."""
    mode = entry.mode & 0o7777 if preserve.perms and entry.mode else None
    mtime = entry.mtime_ns // 10**9 if preserve.times and entry.mtime_ns else None
    return mode, mtime


def _internal(name: str, suffix: str) -> str:
    full = f"{INTERNAL_PREFIX}{name}.{suffix}"
    if len(full.encode("utf-8", "surrogateescape")) <= 255:
        return full
    return f"{INTERNAL_PREFIX}{hashlib.blake2b(name.encode('utf-8', 'surrogateescape'), digest_size=16).hexdigest()}.{suffix}"


SMALL_READ = 4 * MiB  # whole-file reads up to this size go in one pipelined batch


class SFTPReader(Reader):
    """Pipelined READs on a handle per pooled session (see session.Session)."""

    def __init__(self, c: Connections, rel: str, entry: Entry) -> None:
        self.c, self.rel, self.size = c, rel, entry.size
        self.path = c.path(rel)
        self.mtime_ns = entry.mtime_ns
        # An LSTAT answered after a whole-file read_at (same batch, so after the reads):
        # it serves the next changed() instead of another round trip. None: vanished.
        self._after: Stat | bool | None = False

    def changed(self) -> str | None:
        """One stat after the copy: a file rewritten meanwhile must not be committed as copied."""
        after, self._after = self._after, False
        if after is False:
            now = self.c.stat(self.rel)
            if now is None:
                return "file vanished while copying"
            size, mtime_s = now.size, now.mtime_ns // 10**9
        elif after is None or after is True:
            return "file vanished while copying"
        else:
            size, mtime_s = (after.size or 0), (after.mtime or 0)
        if size != self.size or (self.mtime_ns and mtime_s != self.mtime_ns // 10**9):
            return "file changed while copying"
        return None

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[bytes | memoryview]:
        end = min(offset + length, self.size)
        if end <= offset:
            return
        with self.c.read_streams:
            s = self.c.acquire()
            broken = False
            try:
                handle = s.open(self.path, FXF_READ)
                yield from s.read(handle, offset, end - offset, piece)
                s.close_handle(handle)
            except GeneratorExit:
                broken = True  # outstanding reads would confuse the next user of this session
                raise
            except BaseException as exc:
                err = self.c.err(exc, self.rel)
                broken = err.kind == ErrorKind.TRANSIENT
                raise err from None
            finally:
                self.c.release(s, broken)

    def read_at(self, offset: int, length: int) -> bytes:
        if offset == 0 and length >= self.size and 0 < self.size <= SMALL_READ:

            def whole(s: Session) -> bytes:
                data, self._after = s.read_small(self.path, self.size)
                return data

            return self.c.run_session(whole, self.rel)
        return b"".join(self.iter_range(offset, length, SMALL_READ))


class SFTPWriter(Writer):
    """A hidden temp file written at offsets from several sessions, renamed at commit.

    A small file (below BULK, not resumable) is buffered and written at commit in two
    round trips (`Session.write_small`) before the rename, instead of four."""

    def __init__(self, c: Connections, rel: str, entry: Entry, resume_key: str | None) -> None:
        self.c, self.rel, self.entry = c, rel, entry
        self.finished = False  # committed or aborted: sessions close the handles they keep
        self.final = c.path(rel)
        parent, _, name = self.final.rpartition("/")
        parent = parent or "/"
        if resume_key:
            self.tmp = partial_path(self.final, resume_key)
            journal = (
                join(parent, _internal(name, "journal"))
                if parent != "/"
                else "/" + _internal(name, "journal")
            )
            self.state: RemoteState | None = RemoteState(
                resume_key, self._loader(journal), self._saver(journal)
            )
            self.journal: str | None = journal
        else:
            self.tmp = temp_name(self.final)
            self.state, self.journal = None, None
        resumed = bool(self.state and self.state.data.get("chunks"))
        # Buffered until commit (or a read back); None once written, or for large files.
        self.buf: bytearray | None = (
            bytearray() if self.state is None and entry.size < BULK else None
        )

        def create(sftp: paramiko.SFTPClient) -> None:
            if resumed:
                try:
                    sftp.stat(self.tmp)
                    return
                except FileNotFoundError:
                    assert self.state is not None
                    self.state.data["chunks"] = {}
            sftp.open(self.tmp, "wb").close()

        # A resumable temp is settled now (kept or truncated); a fresh random temp name is
        # created by the first write (OPEN with CREAT, never TRUNC: chunks race to it).
        self._created = False
        if self.state is not None:
            c.run(create, rel, ErrorKind.DESTINATION_NOT_FOUND)
            self._created = True

    def _loader(self, path: str) -> Callable[[], bytes | None]:
        def load() -> bytes | None:
            def rd(sftp: paramiko.SFTPClient) -> bytes | None:
                try:
                    with sftp.open(path, "rb") as f:
                        return bytes(f.read())
                except FileNotFoundError:
                    return None

            return self.c.run(rd)

        return load

    def _saver(self, path: str) -> Callable[[bytes], None]:
        def save(blob: bytes) -> None:
            def wr(sftp: paramiko.SFTPClient) -> None:
                with sftp.open(path + ".new", "wb") as f:
                    f.write(blob)
                self.c.rename_into_place(sftp, path + ".new", path)

            self.c.run(wr, self.rel, ErrorKind.DESTINATION_NOT_FOUND, enough=1)

        return save

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        if self.buf is not None:
            buffer_write(self.buf, offset, data)
            return

        def wr(s: Session) -> None:
            handle = s.handles.get(self)
            if handle is None:
                handle = s.open(self.tmp, FXF_WRITE | FXF_CREAT)
                s.keep_handle(self, handle)  # for this writer's next piece on this session
            self._created = True
            try:
                s.write(handle, offset, data, close=False)  # every write acknowledged on return
            except BaseException:
                if s.handles.pop(self, None) is not None and not s.dirty:
                    with contextlib.suppress(Exception):  # the write's error is the one to report
                        s.close_handle(handle)
                raise

        if len(data) < BULK:
            self.c.run_session(wr, self.rel, ErrorKind.DESTINATION_NOT_FOUND)
            return
        with self.c.write_streams:
            self.c.run_session(wr, self.rel, ErrorKind.DESTINATION_NOT_FOUND, WRITE_STREAMS)

    def _create(self, s: Session) -> None:
        if not self._created:
            s.close_handle(s.open(self.tmp, FXF_WRITE | FXF_CREAT | FXF_TRUNC))
            self._created = True

    def _flush(self) -> None:
        """Write out a buffered small file (as it is: mode and times come at commit)."""
        if self.buf is not None:
            data, self.buf = bytes(self.buf), None
            self._created = True
            self.c.run_session(
                lambda s: s.write_small(self.tmp, data, None, None),
                self.rel,
                ErrorKind.DESTINATION_NOT_FOUND,
            )

    def set_size(self, size: int) -> None:
        if self.buf is not None:
            buffer_resize(self.buf, size)
            return

        def trunc(s: Session) -> None:
            self._create(s)
            s.sftp.truncate(self.tmp, size)

        self.c.run_session(trunc, self.rel, ErrorKind.DESTINATION_NOT_FOUND)

    def done_chunks(self, chunk_size: int = 0) -> dict[int, bytes]:
        if self.state is None:
            return {}
        return self.state.valid_chunks(chunk_size, self.entry.size, self.read_back)

    def record_chunk(self, index: int, block_digests: bytes) -> None:
        if self.state is not None:
            try:
                self.state.add_chunk(index, block_digests)
            except Exception as exc:
                raise self.c.err(exc, self.rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    def read_back(self, offset: int, length: int) -> bytes:
        """What the partial holds at [offset, offset+length); shorter where it ends early."""
        self._flush()

        def rd(s: Session) -> bytes:
            handle = s.open(self.tmp, FXF_READ)
            parts: list[bytes | memoryview] = []
            try:
                parts.extend(s.read(handle, offset, length, MAX_REQUEST))
            except FerryError as err:
                if err.kind != ErrorKind.SOURCE_CHANGED:  # i.e. end of file: a short answer
                    raise
                return b"".join(parts)  # replies still due: the pool drops this session
            s.close_handle(handle)
            return b"".join(parts)

        return self.c.run_session(rd, self.rel)

    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        if self.state is not None:
            self.state.close()  # no timer may resave the state after commit deletes it
        mode, mtime = meta_of(entry, preserve)
        data, self.buf = (bytes(self.buf), None) if self.buf is not None else (None, None)
        self.finished = True
        self.c.close_finished_handles()  # before the rename: the file is whole, let it go

        def fin(s: Session) -> None:  # s keeps none of ours: released or swept since
            if data is not None:
                self._created = True
                s.write_small(self.tmp, data, mode, mtime, self.c.fsync_each)
            else:
                self._create(s)  # an empty file gets no write
                s.set_meta(self.tmp, mode, mtime)
                if self.c.fsync_each:
                    s.sync_file(self.tmp)
            self.c.check_fsync(s)
            self.c.rename_into_place(s.sftp, self.tmp, self.final)
            if self.journal:
                try:
                    s.sftp.remove(self.journal)
                except FileNotFoundError:
                    pass

        self.c.run_session(fin, self.rel, ErrorKind.DESTINATION_NOT_FOUND)

    def abort(self, keep_partial: bool = False) -> None:
        self.finished = True
        self.c.close_finished_handles()
        if self.state is not None:
            self.state.close()  # stops timed saves; a kept partial is flushed below
        if self.buf is not None:
            self.buf = None  # never written: nothing on the server to remove
            return
        try:
            if keep_partial and self.state is not None:
                self.state.flush()
                return

            def rm(sftp: paramiko.SFTPClient) -> None:
                for p in (self.tmp, self.journal):
                    if p:
                        try:
                            sftp.remove(p)
                        except FileNotFoundError:
                            pass

            self.c.run(rm, self.rel)
        except Exception:
            pass
