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
journal beside it, so an interrupted run resumes by offset.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import smbclient
from smbclient._io import SMBFileTransaction, SMBRawIO, set_info
from smbclient._pool import get_smb_tree
from smbprotocol import exceptions as smbexc
from smbprotocol.file_info import (
    FileBasicInformation,
    FileEndOfFileInformation,
    FileRenameInformation,
)
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
    SMB2SetInfoRequest,
)

from ferry.mover.backends import smb_messages
from ferry.mover.backends.base import (
    INTERNAL_PREFIX,
    Backend,
    Capabilities,
    Entry,
    EntryType,
    Reader,
    Writer,
    check_name,
)
from ferry.mover.backends.remote_state import RemoteState
from ferry.mover.backends.smb_connection import light_headers, tune_connection
from ferry.mover.endpoints import SMBEndpoint
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.options import MiB, Preserve

T = TypeVar("T")
IO_MAX = MiB  # per request
DEPTH = 4  # requests in flight per handle
CREDITS_WANTED = 512
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
SHARE_ALL = (
    ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
)
READ_ACCESS = (
    FilePipePrinterAccessMask.FILE_READ_DATA | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
)
# Temp files are written, get their mtime and are renamed through the handle that wrote them.
WRITE_ACCESS = (
    FilePipePrinterAccessMask.FILE_READ_DATA
    | FilePipePrinterAccessMask.FILE_WRITE_DATA
    | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
    | FilePipePrinterAccessMask.FILE_WRITE_ATTRIBUTES
    | FilePipePrinterAccessMask.DELETE
)


def classify(
    exc: BaseException,
    where: str,
    path: str | None = None,
    missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
) -> FerryError:
    """Map smbprotocol failures to FerryErrors that name the endpoint, never a secret."""
    if isinstance(exc, FerryError):
        return exc
    if isinstance(
        exc,
        (
            smbexc.LogonFailure,
            smbexc.WrongPassword,
            smbexc.PasswordExpired,
            smbexc.SMBAuthenticationError,
        ),
    ):
        return FerryError(ErrorKind.AUTH_FAILED, f"{where}: authentication failed", path)
    if isinstance(exc, smbexc.BadNetworkName):
        return FerryError(missing, f"{where}: share does not exist", path)
    if isinstance(exc, smbexc.SMBOSError):
        err = as_ferry_error(exc, path)
        if err.kind == ErrorKind.SOURCE_NOT_FOUND:
            err.kind = missing
        err.args = (f"{where}: {exc.strerror or exc}",)
        return err
    if isinstance(exc, smbexc.AccessDenied):
        return FerryError(ErrorKind.PERMISSION, f"{where}: access denied", path)
    if isinstance(exc, (smbexc.ObjectNameNotFound, smbexc.ObjectPathNotFound, smbexc.NoSuchFile)):
        return FerryError(missing, f"{where}: no such file", path)
    if isinstance(
        exc,
        (
            smbexc.SMBConnectionClosed,
            ConnectionError,
            TimeoutError,
            EOFError,
            smbexc.InsufficientResources,
            smbexc.IOTimeout,
        ),
    ):
        return FerryError(
            ErrorKind.TRANSIENT, f"{where}: connection lost ({type(exc).__name__})", path
        )
    if isinstance(exc, ValueError) and "Failed to connect" in str(exc):
        return FerryError(ErrorKind.TRANSIENT, f"{where}: cannot connect", path)
    if isinstance(exc, OSError):
        err = as_ferry_error(exc, path)
        err.args = (f"{where}: {err.args[0]}",)
        return err
    if isinstance(exc, smbexc.SMBException):
        text = str(exc)
        if "credits" in text or "closed" in text.lower():
            return FerryError(ErrorKind.TRANSIENT, f"{where}: {text}", path)
        return FerryError(ErrorKind.IO_ERROR, f"{where}: {text}", path)
    return FerryError(ErrorKind.IO_ERROR, f"{where}: {type(exc).__name__}: {exc}", path)


def _set_info(fd: Any, info: Any) -> tuple[Any, Callable[[Any], Any]]:
    req = SMB2SetInfoRequest()
    req["info_type"] = info.INFO_TYPE
    req["file_info_class"] = info.INFO_CLASS
    req["file_id"] = fd.file_id
    req["buffer"] = info
    return req, fd.connection.receive


class _Handle:
    """A file this process opened for writing with a CREATE of its own (smb_messages): its
    id on the tree, and smbprotocol's Open for it, made on first use (larger writes and
    truncation go through smbprotocol)."""

    __slots__ = ("_fd", "file_id", "is_open", "name", "tree")

    def __init__(self, tree: Any, name: str, file_id: bytes) -> None:
        self.tree, self.name, self.file_id = tree, name, file_id
        self.is_open = True
        self._fd: Any = None

    @property
    def fd(self) -> Any:
        if self._fd is None:
            self._fd = Open(self.tree, self.name)
            self._fd.file_id = self.file_id
        return self._fd

    def close(self) -> None:
        if self.is_open:
            (answer,) = SMBBackend.exchange(
                self.tree, [smb_messages.close(self.file_id, attributes=False)]
            )
            self.is_open = False
            if isinstance(answer, BaseException):
                raise answer

    def truncate(self, size: int) -> None:
        eof = FileEndOfFileInformation()
        eof["end_of_file"] = size
        req, recv = _set_info(self.fd, eof)
        recv(self.fd.connection.send(req, self.tree.session.session_id, self.tree.tree_connect_id))


def _ns(dt: datetime | None) -> int:
    if dt is None:
        return 0
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def _internal(name: str, suffix: str) -> str:
    full = f"{INTERNAL_PREFIX}{name}.{suffix}"
    if len(full) <= 240:
        return full
    return f"{INTERNAL_PREFIX}{hashlib.blake2b(name.encode('utf-8', 'surrogateescape'), digest_size=16).hexdigest()}.{suffix}"


class SMBBackend(Backend):
    caps = Capabilities(
        chunk_writer=True,
        resumable=True,
        mtime_precision_ns=1000,  # FILETIME is 100 ns; smbclient reports microseconds
        atomic_rename=True,
        empty_dirs=True,
    )

    def __init__(self, ep: SMBEndpoint) -> None:
        self.ep = ep
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._password: str | None = None
        self._credits: threading.Semaphore | None = None
        self._tree: tuple[Any, Any] | None = None  # (connection, tree connect or None on DFS)
        self._prefix = [p for p in ep.path.split("/") if p]
        base = f"\\\\{ep.host}\\{ep.share}"
        self.base = base + ("\\" + ep.path.replace("/", "\\") if ep.path else "")

    def describe(self) -> str:
        return self.ep.describe()

    def err(
        self,
        exc: BaseException,
        rel: str | None = None,
        missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
    ) -> FerryError:
        err = classify(exc, self.describe(), rel, missing)
        if err.kind == ErrorKind.TRANSIENT:
            self._forget_connection()
        return err

    # -- connection -------------------------------------------------------------------
    def kw(self) -> dict[str, Any]:
        self._session()
        return {"port": self.ep.port, "connection_cache": self._cache}

    def _session(self) -> None:
        key = f"{self.ep.host.lower()}:{self.ep.port}"
        with self._lock:
            conn = self._cache.get(key)
            if conn is not None and conn.transport.connected:
                return
            if conn is not None:
                self._cache.pop(key, None)
            if self._password is None and self.ep.password_file:
                try:
                    with open(self.ep.password_file) as f:
                        self._password = f.read().rstrip("\r\n")
                except OSError as exc:
                    raise FerryError(
                        ErrorKind.AUTH_FAILED,
                        f"{self.describe()}: cannot read password file ({exc.strerror})",
                    ) from None
            user = self.ep.user
            if user and self.ep.domain:
                user = f"{self.ep.domain}\\{user}"
            light_headers()
            try:
                smbclient.register_session(
                    self.ep.host,
                    username=user,
                    password=self._password,
                    port=self.ep.port,
                    encrypt=True if self.ep.encrypt else None,
                    connection_timeout=15,
                    connection_cache=self._cache,
                    require_signing=self.ep.require_signing,
                )
                conn = self._cache[key]
                tune_connection(conn)
                granted = conn.sequence_window["high"] - conn.sequence_window["low"]
                if granted < CREDITS_WANTED:
                    try:
                        conn.echo(credit_request=CREDITS_WANTED)
                    except smbexc.SMBException:
                        pass
                granted = conn.sequence_window["high"] - conn.sequence_window["low"]
            except Exception as exc:
                self._cache.pop(key, None)
                raise classify(exc, self.describe()) from None
            per_req = max(1, (self.io_size(conn) + 65535) // 65536)
            self._credits = threading.Semaphore(max(1, (granted - 8) // per_req))

    def io_size(self, conn: Any = None) -> int:
        conn = conn or self._cache.get(f"{self.ep.host.lower()}:{self.ep.port}")
        if conn is None:
            return 64 * 1024
        return int(min(IO_MAX, conn.max_read_size, conn.max_write_size))

    def _forget_connection(self) -> None:
        key = f"{self.ep.host.lower()}:{self.ep.port}"
        with self._lock:
            conn = self._cache.pop(key, None)
            self._tree = None
        if conn is not None:
            try:
                conn.disconnect(close=False)
            except Exception:
                pass

    def tree(self) -> Any | None:
        """The share's tree connect for direct requests (compounds), or None on a DFS share,
        where smbclient's path layer resolves referrals."""
        kw = self.kw()
        conn = self._cache.get(f"{self.ep.host.lower()}:{self.ep.port}")
        cached = self._tree
        if cached is not None and cached[0] is conn:
            return cached[1]
        try:
            tree, _ = get_smb_tree(self.path(""), **kw)
        except smbexc.SMBResponseException as exc:  # as smbclient reports it
            raise smbexc.SMBOSError(exc.status, self.path("")) from None
        self._tree = (conn, None if tree.is_dfs_share else tree)
        return self._tree[1]

    def share_rel(self, rel: str) -> str:
        """rel as a path inside the share, as CREATE requests name files."""
        return "\\".join([*self._prefix, *(p for p in rel.split("/") if p)])

    @staticmethod
    def exchange(tree: Any, bodies: list[smb_messages.Body]) -> list[Any]:
        """Send related requests (bodies packed by smb_messages) as one compound message, one
        round trip. Every answer is received (smbprotocol needs that): its body (bytes), or
        the exception of a failed one. A symlink on the path is an answer here
        (StoppedOnSymlink), not followed."""
        conn = tree.session.connection
        sent = conn.send_compound(
            bodies, tree.session.session_id, tree.tree_connect_id, related=True
        )
        out: list[Any] = []
        for request in sent:
            try:
                out.append(conn.receive(request, resolve_symlinks=False)["data"].get_value())
            except smbexc.SMBResponseException as exc:
                out.append(exc)
        return out

    def open_handle(
        self, tree: Any, rel: str, create: bool, data: bytes | memoryview | None, offset: int
    ) -> tuple[_Handle, bool | BaseException] | None:
        """Open rel for writing (create: created or truncated) with a first piece of data in
        the same compound. Returns (handle, True if data was written, False if there was none,
        or the exception that failed the write: the handle is open then); None where the
        server stops at a symlink on the path for the client to follow."""
        name = self.share_rel(rel)
        bodies = [
            smb_messages.create(
                name,
                WRITE_ACCESS,
                FILE_ATTRIBUTE_NORMAL,
                SHARE_ALL,
                CreateDisposition.FILE_OVERWRITE_IF if create else CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_NON_DIRECTORY_FILE,
                ImpersonationLevel.Impersonation,
            )
        ]
        if data is not None:
            bodies.append(smb_messages.write(offset, data))
        sem = self.credits() if data is not None and len(data) > 65536 else None
        if sem is not None:
            sem.acquire()
        try:
            results = self.exchange(tree, bodies)
        finally:
            if sem is not None:
                sem.release()
        if isinstance(results[0], smbexc.StoppedOnSymlink):
            return None
        if isinstance(results[0], smbexc.SMBResponseException):
            raise smbexc.SMBOSError(results[0].status, self.path(rel))
        handle = _Handle(tree, name, smb_messages.created_file_id(results[0]))
        if len(results) > 1 and isinstance(results[1], BaseException):
            return handle, results[1]
        return handle, data is not None

    def finish_handle(
        self, handle: _Handle, mtime_ns: int | None, final_share_rel: str, flush: bool = False
    ) -> bool:
        """FLUSH (with `flush`), SET_INFO (mtime), SET_INFO (rename with replace) and CLOSE on
        the handle that wrote the file, in one round trip. The handle is closed afterwards in
        any case; False when the server refused the rename. A failed FLUSH raises: the file
        is complete but not known to be on the server's disk."""
        bodies = [smb_messages.flush(handle.file_id)] if flush else []
        if mtime_ns is not None:
            bodies.append(smb_messages.set_mtime(handle.file_id, mtime_ns))
        bodies.append(smb_messages.set_rename(handle.file_id, final_share_rel))
        bodies.append(smb_messages.close(handle.file_id, attributes=False))
        results: list[Any] = []
        try:
            results = self.exchange(handle.tree, bodies)
        finally:
            if results and not isinstance(results[-1], BaseException):
                handle.is_open = False
            else:  # the CLOSE failed or never went out
                try:
                    handle.close()
                except Exception:
                    pass
        if flush and isinstance(results[0], smbexc.SMBResponseException):
            raise smbexc.SMBOSError(results[0].status, final_share_rel)
        return not any(isinstance(r, BaseException) for r in results)

    def credits(self) -> threading.Semaphore:
        assert self._credits is not None
        return self._credits

    def run(
        self,
        fn: Callable[[dict[str, Any]], T],
        rel: str | None = None,
        missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
    ) -> T:
        try:
            return fn(self.kw())
        except FerryError:
            raise
        except Exception as exc:
            raise self.err(exc, rel, missing) from None

    def close(self) -> None:
        try:
            smbclient.reset_connection_cache(connection_cache=self._cache)
        except Exception:
            pass

    # -- paths and listing ------------------------------------------------------------
    def path(self, rel: str) -> str:
        return self.base + ("\\" + rel.replace("/", "\\") if rel else "")

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

        self.run(mk, None, ErrorKind.DESTINATION_NOT_FOUND)

    def list_dir(self, rel: str) -> list[Entry]:
        where = f"{self.describe()}/{rel}"

        def ls(kw: dict[str, Any]) -> list[Entry]:
            out = []
            for d in smbclient.scandir(self.path(rel), **kw):
                name = d.name
                if name in (".", "..") or name.startswith(INTERNAL_PREFIX):
                    continue
                info = d.smb_info
                out.append(
                    self._entry(
                        check_name(name, where),
                        info.file_attributes,
                        info.end_of_file,
                        _ns(info.last_write_time),
                    )
                )
            return out

        return self.run(ls, rel)

    def _entry(self, name: str, attrs: int, size: int, mtime_ns: int) -> Entry:
        if attrs & FILE_ATTRIBUTE_REPARSE_POINT:
            kind = EntryType.OTHER
        elif attrs & FILE_ATTRIBUTE_DIRECTORY:
            kind = EntryType.DIR
        else:
            kind = EntryType.FILE
        return Entry(name, kind, size=size if kind == EntryType.FILE else 0, mtime_ns=mtime_ns)

    def stat(self, rel: str) -> Entry | None:
        name = rel.rsplit("/", 1)[-1]

        def st(kw: dict[str, Any]) -> Entry | None:
            try:
                tree = self.tree()
                if tree is not None:
                    found = quick(tree)
                    if found is not None:
                        return found
                s = smbclient.stat(self.path(rel), follow_symlinks=False, **kw)
            except smbexc.SMBOSError as exc:
                if exc.errno == 2:
                    return None
                raise
            return self._entry(name, s.st_file_attributes, s.st_size, s.st_mtime_ns // 1000 * 1000)

        def quick(tree: Any) -> Entry | None:
            """CREATE answers with attributes, size and times: CREATE+CLOSE in one round trip;
            None where a symlink on the path stops it (smbclient's stat follows it)."""
            opened, _ = self.exchange(
                tree,
                [
                    smb_messages.create(
                        self.share_rel(rel),
                        FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
                        0,
                        SHARE_ALL,
                        CreateDisposition.FILE_OPEN,
                        CreateOptions.FILE_OPEN_REPARSE_POINT,
                        ImpersonationLevel.Impersonation,
                    ),
                    smb_messages.close(attributes=False),
                ],
            )
            if isinstance(opened, smbexc.StoppedOnSymlink):
                return None
            if isinstance(opened, smbexc.SMBResponseException):
                raise smbexc.SMBOSError(opened.status, self.path(rel))
            attrs, size, mtime_ns = smb_messages.created_attributes(opened)
            return self._entry(name, attrs, size, mtime_ns // 1000 * 1000)

        return self.run(st, rel)

    # -- data ----------------------------------------------------------------------------
    def open_read(self, rel: str, entry: Entry) -> Reader:
        return SMBReader(self, rel, entry)

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        return SMBWriter(self, rel, entry, resume_key)

    def mkdir(self, rel: str) -> None:
        def mk(kw: dict[str, Any]) -> None:
            try:
                smbclient.mkdir(self.path(rel), **kw)
            except OSError:
                if (
                    not smbclient.stat(self.path(rel), **kw).st_file_attributes
                    & FILE_ATTRIBUTE_DIRECTORY
                ):
                    raise

        self.run(mk, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def remove(self, rel: str, entry: Entry) -> None:
        def rm(kw: dict[str, Any]) -> None:
            try:
                if entry.type == EntryType.DIR:
                    smbclient.rmdir(self.path(rel), **kw)
                else:
                    smbclient.remove(self.path(rel), **kw)
            except smbexc.SMBOSError as exc:
                if exc.errno != 2:
                    raise

        self.run(rm, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        if preserve.times and entry.mtime_ns and entry.type in (EntryType.FILE, EntryType.DIR):
            self.run(
                lambda kw: smbclient.utime(
                    self.path(rel), ns=(entry.mtime_ns, entry.mtime_ns), **kw
                ),
                rel,
                ErrorKind.DESTINATION_NOT_FOUND,
            )

    def replace(self, src: str, dst: str, kw: dict[str, Any]) -> None:
        """Rename src over dst. Samba refuses SMB2 rename-with-replace onto an existing file
        (STATUS_ACCESS_DENIED), so the old file steps aside under a hidden name first; a reader
        may see dst missing for that moment, but never a partial file."""
        try:
            smbclient.replace(src, dst, **kw)
            return
        except smbexc.SMBOSError as exc:
            if exc.errno not in (13, 17) and "ACCESS_DENIED" not in str(exc):
                raise
        parent, _, name = dst.rpartition("\\")
        aside = f"{parent}\\{_internal(name, secrets.token_hex(6) + '.old')}"
        try:
            smbclient.rename(dst, aside, **kw)
        except smbexc.SMBOSError as exc:
            if exc.errno != 2:
                raise
            aside = ""
        try:
            smbclient.rename(src, dst, **kw)
        except BaseException:
            if aside:
                smbclient.rename(aside, dst, **kw)
            raise
        if aside:
            try:
                smbclient.remove(aside, **kw)
            except smbexc.SMBOSError:
                pass

    # -- pipelined I/O on one handle --------------------------------------------------------
    def pread(self, fd: Any, offset: int, length: int) -> Iterator[bytes]:
        """Yield [offset, offset+length) in io_size pieces, DEPTH requests in flight."""
        step = self.io_size()
        sem = self.credits()
        end = offset + length
        nxt = offset
        inflight: list[tuple[Any, Callable[..., bytes], int]] = []
        try:
            while nxt < end or inflight:
                while nxt < end and len(inflight) < DEPTH:
                    n = min(step, end - nxt)
                    req, recv = fd.read(nxt, n, send=False)
                    inflight.append((self._send_credited(fd, req), recv, n))
                    nxt += n
                request, recv, want = inflight.pop(0)
                try:
                    data = recv(request)
                except smbexc.EndOfFile:
                    data = b""
                finally:
                    sem.release()
                if data:
                    yield data
                if len(data) < want:
                    return  # end of file
        finally:
            for request, recv, _ in inflight:
                try:
                    recv(request)
                except Exception:
                    pass
                finally:
                    sem.release()

    def _send_credited(self, fd: Any, req: Any) -> Any:
        """Send one request on fd's connection once a credit is free; the caller releases the
        credit after receiving the response (here only if the send itself fails)."""
        sem = self.credits()
        sem.acquire()
        try:
            return fd.connection.send(
                req, fd.tree_connect.session.session_id, fd.tree_connect.tree_connect_id
            )
        except BaseException:
            sem.release()
            raise

    def pwrite(self, fd: Any, offset: int, data: bytes | memoryview) -> None:
        step = self.io_size()
        sem = self.credits()
        view = memoryview(data)
        inflight: list[tuple[Any, Callable[..., Any]]] = []
        try:
            for o in range(0, len(view), step):
                if len(inflight) >= DEPTH:
                    request, recv = inflight.pop(0)
                    try:
                        recv(request)
                    finally:
                        sem.release()
                req, recv = fd.write(bytes(view[o : o + step]), offset + o, send=False)
                inflight.append((self._send_credited(fd, req), recv))
            while inflight:
                request, recv = inflight.pop(0)
                try:
                    recv(request)
                finally:
                    sem.release()
        finally:
            for request, recv in inflight:
                try:
                    recv(request)
                except Exception:
                    pass
                finally:
                    sem.release()


class SMBReader(Reader):
    def __init__(self, be: SMBBackend, rel: str, entry: Entry) -> None:
        self.be, self.rel, self.size = be, rel, entry.size
        self.mtime_ns = entry.mtime_ns
        self._after: tuple[int, int] | None = None  # (size, mtime) when the whole-file read closed

    def changed(self) -> str | None:
        """One stat after the copy: a file rewritten meanwhile must not be committed as copied.
        A whole file read in one compound already has it: its CLOSE asked for the attributes."""
        if self._after is not None:
            size, mtime_ns = self._after
        else:
            now = self.be.stat(self.rel)
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
            smb_messages.create(
                self.be.share_rel(self.rel),
                READ_ACCESS,
                FILE_ATTRIBUTE_NORMAL,
                SHARE_ALL,
                CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_NON_DIRECTORY_FILE,
                ImpersonationLevel.Impersonation,
            ),
            smb_messages.read(0, self.size),
            smb_messages.close(),
        ]
        sem = self.be.credits() if self.size > 65536 else None
        if sem is not None:
            sem.acquire()
        try:
            opened, data, closed = self.be.exchange(tree, bodies)
        finally:
            if sem is not None:
                sem.release()
        if isinstance(opened, smbexc.StoppedOnSymlink):
            return None
        for res in (opened, data, closed):
            if isinstance(res, smbexc.EndOfFile):
                continue
            if isinstance(res, smbexc.SMBResponseException):
                raise smbexc.SMBOSError(res.status, self.be.path(self.rel))
        assert isinstance(closed, bytes)
        self._after = smb_messages.closed_size_mtime(closed)
        return smb_messages.read_data(data) if isinstance(data, bytes) else b""

    def iter_range(self, offset: int, length: int, piece: int) -> Iterator[bytes | memoryview]:
        length = min(length, self.size - offset)
        if length <= 0:
            return
        try:
            with smbclient.open_file(
                self.be.path(self.rel), mode="rb", buffering=0, share_access="rwd", **self.be.kw()
            ) as raw:
                got = 0
                for data in self.be.pread(raw.fd, offset, length):
                    got += len(data)
                    yield data
                if got < length:
                    raise FerryError(
                        ErrorKind.SOURCE_CHANGED, "file shrank while reading", self.rel
                    )
        except FerryError:
            raise
        except Exception as exc:
            raise self.be.err(exc, self.rel) from None

    def read_at(self, offset: int, length: int) -> bytes:
        if offset == 0 and 0 < self.size <= length and self.size <= self.be.io_size():
            tree = self.be.run(lambda kw: self.be.tree(), self.rel)
            if tree is not None:
                whole = self.be.run(lambda kw: self._read_whole(tree), self.rel)
                if whole is not None:
                    return whole
        return b"".join(self.iter_range(offset, length, IO_MAX))


class SMBWriter(Writer):
    """Temp file beside the target, one handle per writing thread, rename with replace at commit.

    Without resume state the temp file is created by the first write (CREATE and a first WRITE
    of at most one request in one compound), and committed through that handle: SET_INFO
    (mtime), SET_INFO (rename) and CLOSE in a second one. The rename goes out only once the
    writes are known to have succeeded, so the final name never shows a partial file."""

    def __init__(self, be: SMBBackend, rel: str, entry: Entry, resume_key: str | None) -> None:
        self.be, self.rel, self.size = be, rel, entry.size
        parent, _, name = rel.rpartition("/")
        if resume_key:
            tag = hashlib.blake2b(resume_key.encode(), digest_size=8).hexdigest()
            self.tmp_rel = (parent + "/" if parent else "") + _internal(name, f"{tag}.part")
            jrel = (parent + "/" if parent else "") + _internal(name, "journal")
            self.journal: str | None = be.path(jrel)
            self._jrel: str | None = jrel
            self.state: RemoteState | None = RemoteState(resume_key, self._load, self._save)
        else:
            self.tmp_rel = (parent + "/" if parent else "") + _internal(
                name, secrets.token_hex(6) + ".tmp"
            )
            self.journal, self.state, self._jrel = None, None, None
        self.tmp = be.path(self.tmp_rel)
        self._tag = secrets.token_hex(4)
        self._handles: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._created = False  # the temp file exists (created or truncated by this writer)
        self._primary: _Handle | None = None  # the creating handle, which also commits
        self.final_share_rel = "\\".join(
            p for p in (be.ep.path.replace("/", "\\"), rel.replace("/", "\\")) if p
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

        be.run(create, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def _open(
        self, create: bool, data: bytes | memoryview | None, offset: int
    ) -> tuple[Any, bool | BaseException]:
        """A handle on the temp file (create: created or truncated); a first piece of data rides
        along in the same compound. Returns (handle, True if data was written, False if there
        was none to write, or the exception that failed the write)."""
        tree = self.be.tree()
        if tree is not None:
            opened = self.be.open_handle(tree, self.tmp_rel, create, data, offset)
            if opened is not None:
                return opened
        # DFS, or a symlink on the path: smbclient resolves the path
        mode = "wb" if create else "r+b"
        raw = smbclient.open_file(
            self.tmp, mode=mode, buffering=0, share_access="rwd", **self.be.kw()
        )
        return raw, False

    def _save_compound(self, blob: bytes) -> bool:
        """The journal through a fresh temp in two round trips: CREATE+WRITE, then rename over
        the journal + CLOSE (the rename only once the write succeeded). False on DFS, or
        where a symlink is on the path."""
        tree = self.be.tree()
        if tree is None or self._jrel is None or len(blob) > self.be.io_size():
            return False
        opened = self.be.open_handle(tree, f"{self._jrel}.{self._tag}.new", True, blob, 0)
        if opened is None:
            return False
        handle, wrote = opened
        if isinstance(wrote, BaseException):
            handle.close()
            raise wrote
        return self.be.finish_handle(handle, None, self.be.share_rel(self._jrel))

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
        if isinstance(handle, _Handle):
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

        return self.be.run(rd)

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
            self.be.replace(tmp, journal, kw)

        self.be.run(wr, self.rel, ErrorKind.DESTINATION_NOT_FOUND)

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
            first = data if 0 < len(data) <= self.be.io_size() else None
            raw, wrote = self._handle(first, offset)
            if not wrote:
                self.be.pwrite(raw.fd, offset, data)
        except Exception as exc:
            self._drop_handle()
            raise self.be.err(exc, self.rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    def set_size(self, size: int) -> None:
        # Through our own handle: a fresh open without sharing would collide with it.
        self.be.run(
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
                return b"".join(self.be.pread(raw.fd, offset, length))

        return self.be.run(rd, self.rel)

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
                if self.be.fsync_each:
                    with SMBRawIO(self.tmp, mode="r+", share_access="rwd", **kw) as raw:
                        raw.fd.flush()
                done = self._finish_compound(mtime, kw)
            if not done:
                if mtime is not None:
                    smbclient.utime(self.tmp, ns=(mtime, mtime), **kw)
                self.be.replace(self.tmp, self.be.path(self.rel), kw)
            if self.journal:
                self._remove_journals(kw)

        self.be.run(fin, self.rel, ErrorKind.DESTINATION_NOT_FOUND)

    def _finish_on_handle(self, handle: _Handle, mtime_ns: int | None) -> bool:
        """Set the mtime and rename into place through the handle that wrote the file (one
        round trip, see SMBBackend.finish_handle)."""
        self._primary = None
        return self.be.finish_handle(
            handle, mtime_ns, self.final_share_rel, flush=self.be.fsync_each
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
                    ft = smb_messages.filetime(mtime_ns)
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

            self.be.run(rm, self.rel)
        except Exception:
            pass
