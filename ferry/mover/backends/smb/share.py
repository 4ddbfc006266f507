"""An SMB endpoint's share: its connection (a cache of its own, so one endpoint's credentials
never serve another), the tree connect, credits, and the requests readers and writers
share (compounds on a handle, pipelined reads and writes, rename over). The backend, its
readers and its writers all take this object."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import smbclient
from smbclient._pool import get_smb_tree
from smbprotocol import exceptions as smbexc
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
)

from ferry.mover.backends.base import Durability, Entry, EntryType
from ferry.mover.backends.smb.errors import UnprotectedAnswer, classify
from ferry.mover.backends.smb.names import internal_name
from ferry.mover.backends.smb.wire import messages
from ferry.mover.backends.smb.wire.connection import (
    library_headers,
    light_headers,
    strict_answers,
    tune_connection,
)
from ferry.mover.backends.smb.wire.handles import (
    CREDITS_WANTED,
    DEPTH,
    FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_NORMAL,
    FILE_ATTRIBUTE_REPARSE_POINT,
    IO_MAX,
    SHARE_ALL,
    WRITE_ACCESS,
    Handle,
    exchange,
)
from ferry.mover.endpoints import SMBEndpoint
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.redact import remember

T = TypeVar("T")
# Characters no SMB name can hold; a backslash would act as a separator (see checked).
NOT_IN_SMB_NAMES = re.compile(r'[\\:*?"<>|\x00-\x1f]')


class Share:
    """See the module docstring."""

    def __init__(self, ep: SMBEndpoint, durability: Durability, accelerators: bool = True) -> None:
        self.ep = ep
        # False: no compounds (tree() is None, as on a DFS share), no pipelined reads and
        # writes, no tuned connection: smbclient's and smbprotocol's own calls.
        self.accelerators = accelerators
        self.fsync_each = durability.fsync_each
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._password: str | None = None
        self._credits: threading.Semaphore | None = None
        self._tree: tuple[Any, Any] | None = None  # (connection, tree connect or None on DFS)
        self.prefix = [p for p in ep.path.split("/") if p]
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
        if err.kind == ErrorKind.TRANSIENT or isinstance(exc, UnprotectedAnswer):
            self._forget_connection()
        return err

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
                    remember(self._password)
                except OSError as exc:
                    raise FerryError(
                        ErrorKind.AUTH_FAILED,
                        f"{self.describe()}: cannot read password file ({exc.strerror})",
                    ) from None
            user = self.ep.user
            if user and self.ep.domain:
                user = f"{self.ep.domain}\\{user}"
            if self.accelerators:
                light_headers()
            else:
                library_headers()
            strict_answers()  # hardening, not speed: on either way
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
                if self.accelerators:
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
        if not self.accelerators:
            return None  # the path layer for everything, as on a DFS share
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
        return "\\".join([*self.prefix, *(p for p in self.checked(rel).split("/") if p)])

    def checked(self, rel: str) -> str:
        """rel, refused if a name in it holds what SMB cannot store: a backslash is SMB's
        separator (the server would split `a\\b` into a directory and a file), the others
        are invalid in SMB names (MS-FSCC 2.1.5.2)."""
        bad = NOT_IN_SMB_NAMES.search(rel)
        if bad is not None:
            char = bad.group()
            what = "a backslash (SMB's path separator)" if char == "\\" else repr(char)
            raise FerryError(
                ErrorKind.UNSAFE_PATH,
                f"{self.describe()}: the name holds {what}, which an SMB name cannot hold",
                rel,
            )
        return rel

    # Compounds go through here, so tests can stand in for the server's answers.
    exchange = staticmethod(exchange)

    def open_handle(
        self, tree: Any, rel: str, create: bool, data: bytes | memoryview | None, offset: int
    ) -> tuple[Handle, bool | BaseException] | None:
        """Open rel for writing (create: created or truncated) with a first piece of data in
        the same compound. Returns (handle, True if data was written, False if there was none,
        or the exception that failed the write: the handle is open then); None where the
        server stops at a symlink on the path for the client to follow."""
        name = self.share_rel(rel)
        bodies = [
            messages.create(
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
            bodies.append(messages.write(offset, data))
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
        handle = Handle(tree, name, messages.created_file_id(results[0]))
        if len(results) > 1 and isinstance(results[1], BaseException):
            return handle, results[1]
        return handle, data is not None

    def finish_handle(
        self, handle: Handle, mtime_ns: int | None, final_share_rel: str, flush: bool = False
    ) -> bool:
        """FLUSH (with `flush`), SET_INFO (mtime), SET_INFO (rename with replace) and CLOSE on
        the handle that wrote the file, in one round trip. The handle is closed afterwards in
        any case; False when the server refused the rename. A failed FLUSH raises: the file
        is complete but not known to be on the server's disk."""
        bodies = [messages.flush(handle.file_id)] if flush else []
        if mtime_ns is not None:
            bodies.append(messages.set_mtime(handle.file_id, mtime_ns))
        bodies.append(messages.set_rename(handle.file_id, final_share_rel))
        bodies.append(messages.close(handle.file_id, attributes=False))
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

    def path(self, rel: str) -> str:
        return self.base + ("\\" + self.checked(rel).replace("/", "\\") if rel else "")

    def entry(self, name: str, attrs: int, size: int, mtime_ns: int) -> Entry:
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
            return self.entry(name, s.st_file_attributes, s.st_size, s.st_mtime_ns // 1000 * 1000)

        def quick(tree: Any) -> Entry | None:
            """CREATE answers with attributes, size and times: CREATE+CLOSE in one round trip;
            None where a symlink on the path stops it (smbclient's stat follows it)."""
            opened, _ = self.exchange(
                tree,
                [
                    messages.create(
                        self.share_rel(rel),
                        FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
                        0,
                        SHARE_ALL,
                        CreateDisposition.FILE_OPEN,
                        CreateOptions.FILE_OPEN_REPARSE_POINT,
                        ImpersonationLevel.Impersonation,
                    ),
                    messages.close(attributes=False),
                ],
            )
            if isinstance(opened, smbexc.StoppedOnSymlink):
                return None
            if isinstance(opened, smbexc.SMBResponseException):
                raise smbexc.SMBOSError(opened.status, self.path(rel))
            attrs, size, mtime_ns = messages.created_attributes(opened)
            return self.entry(name, attrs, size, mtime_ns // 1000 * 1000)

        return self.run(st, rel)

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
        aside = f"{parent}\\{internal_name(name, secrets.token_hex(6) + '.old')}"
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

    def pread(self, fd: Any, offset: int, length: int) -> Iterator[bytes]:
        """Yield [offset, offset+length) in io_size pieces, DEPTH requests in flight. The
        answers are parsed by messages.read_data (bounded: smbprotocol's parser ignores
        DataOffset and trusts DataLength)."""
        if not self.accelerators:
            yield from self._read_plain(fd, offset, length)
            return
        step = self.io_size()
        sem = self.credits()
        end = offset + length
        nxt = offset
        inflight: list[tuple[Any, int]] = []
        try:
            while nxt < end or inflight:
                while nxt < end and len(inflight) < DEPTH:
                    n = min(step, end - nxt)
                    req, _ = fd.read(nxt, n, send=False)
                    inflight.append((self._send_credited(fd, req), n))
                    nxt += n
                request, want = inflight.pop(0)
                try:
                    answer = fd.connection.receive(request)["data"].get_value()
                    data = messages.read_data(answer, want)
                except smbexc.EndOfFile:
                    data = b""
                finally:
                    sem.release()
                if data:
                    yield data
                if len(data) < want:
                    return  # end of file
        finally:
            for request, _ in inflight:
                try:
                    fd.connection.receive(request)
                except Exception:
                    pass
                finally:
                    sem.release()

    def _read_plain(self, fd: Any, offset: int, length: int) -> Iterator[bytes]:
        """pread on smbprotocol's own READ: one request at a time, parsed by the library."""
        step = self.io_size()
        end = offset + length
        while offset < end:
            want = min(step, end - offset)
            try:
                with self.credits():
                    data = fd.read(offset, want)
            except smbexc.EndOfFile:
                return
            if data:
                yield data
            if len(data) < want:
                return  # end of file
            offset += len(data)

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
        if not self.accelerators:  # smbprotocol's own WRITE, one request at a time
            for o in range(0, len(view), step):
                with sem:
                    fd.write(bytes(view[o : o + step]), offset + o)
            return
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
