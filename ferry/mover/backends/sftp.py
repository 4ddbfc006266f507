"""SFTP backend on paramiko.

One SFTP channel serves one thread at a time (paramiko's response handling is
not safe for concurrent synchronous requests), so the backend keeps a small
pool of SSH connections and lends one per operation; a file's chunks are
written at offsets from several connections at once. Bulk reads and writes
frame their SFTP requests themselves (sftp_wire.Session), pipelined, and writes are
acknowledged before each call returns, so a recorded chunk is on the server.
Sockets get TCP_NODELAY (paramiko leaves Nagle on, which stalls small
pipelined requests) and SSH windows stay modest (huge windows make paramiko's
reads collapse).

Files are written to a hidden temp name beside the target and renamed into
place with posix-rename@openssh.com where offered (atomic replace). A large
file's temp name is derived from the resume key, and a small JSON journal
beside it records finished chunks, so a later run resumes by offset.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import queue
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import paramiko

from ferry.mover.backends.base import (
    INTERNAL_PREFIX,
    Backend,
    Capabilities,
    Entry,
    EntryType,
    Reader,
    SmallFile,
    Space,
    Writer,
    buffer_resize,
    buffer_write,
    check_name,
    join,
)
from ferry.mover.backends.remote_state import RemoteState
from ferry.mover.backends.sftp_wire import (
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    MAX_REQUEST,
    Put,
    Session,
    Stat,
)
from ferry.mover.endpoints import SFTPEndpoint
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.options import MiB, Preserve
from ferry.mover.redact import remember
from ferry.mover.roots import RootId, sftp_root

T = TypeVar("T")
log = logging.getLogger("ferry")
# SSH window we grant the server (bytes in flight towards us). A bare read loop ran
# faster with 2 MiB than 4 MiB on a local sshd, but whole ferry copies showed no
# difference; paramiko's own reads collapse with huge windows.
WINDOW = 4 * MiB
# Largest SSH packet the server may send us. sshd sends up to 256 KiB per packet when
# allowed (paramiko's default is 32 KiB): 8x fewer packets to decrypt and parse in Python.
MAX_PACKET = 256 * 1024
CONNECT_TIMEOUT = 15.0
# SFTP v3 has no "disk full" status (sftp-server answers a bare FAILURE), so a failed write
# asks the server's filesystem: less than this left means full.
FULL_BELOW = 1 * MiB
# Bulk streams (a chunk's reads, a large write) at once per backend, whatever the engine's
# --transfers: each stream keeps its connection busy, and more of them only share the
# GIL. Measured on 2 cores against a local sshd, fewer streams used less CPU and ran
# faster; small-file requests, which wait on round trips, still use every session.
READ_STREAMS = 1
WRITE_STREAMS = 2  # two, so one connection's round trips (last acks, OPEN) overlap the other's data
BULK = 1 * MiB  # writes at least this large count as a stream
MAX_REALPATH = 64 * 1024  # longest root path accepted from the server's realpath
PATIENCE = 0.5  # seconds SFTPBackend.acquire waits for a busy session before connecting


def classify(
    exc: BaseException,
    where: str,
    path: str | None = None,
    missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
) -> FerryError:
    """Map paramiko/socket failures to FerryErrors that name the endpoint, never a secret."""
    if isinstance(exc, FerryError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return FerryError(
            ErrorKind.AUTH_FAILED, f"{where}: host key does not match known_hosts", path
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return FerryError(ErrorKind.AUTH_FAILED, f"{where}: authentication failed", path)
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "known_hosts" in text or "not found in known_hosts" in text:
            return FerryError(
                ErrorKind.AUTH_FAILED,
                f"{where}: host key not in known_hosts "
                "(add it, or opt out with insecure_ignore_host_key=true)",
                path,
            )
        return FerryError(ErrorKind.TRANSIENT, f"{where}: SSH: {text or type(exc).__name__}", path)
    if isinstance(exc, (EOFError, socket.timeout, ConnectionError, TimeoutError)):
        return FerryError(
            ErrorKind.TRANSIENT, f"{where}: connection lost ({type(exc).__name__})", path
        )
    if isinstance(exc, OSError):
        if exc.errno is None and "Socket is closed" in str(exc):
            return FerryError(ErrorKind.TRANSIENT, f"{where}: connection closed", path)
        if exc.errno == errno.ENOENT:
            return FerryError(missing, f"{where}: no such file", path)
        err = as_ferry_error(exc, path)
        err.args = (f"{where}: {err.args[0]}",)
        return err
    return FerryError(ErrorKind.IO_ERROR, f"{where}: {type(exc).__name__}: {exc}", path)


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 0)  # Linux only


class _QuickAckSocket:
    """A socket that acknowledges what it reads at once (TCP_QUICKACK).

    sshd leaves Nagle's algorithm on for non-interactive sessions, so when it writes two
    small packets in a row (its host-keys notice, then the channel-open confirmation) the
    second waits for our ACK of the first, which Linux delays by up to 40 ms while we have
    nothing to send: 40 ms of every connection, and of any exchange that ends the same way.
    paramiko takes any object with a socket's methods."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # the flag does not stick
        return data


def _quick_acks(sock: socket.socket) -> socket.socket:
    return _QuickAckSocket(sock) if _TCP_QUICKACK else sock  # type: ignore[return-value]


def _read_secret(path: str) -> str:
    with open(path) as f:
        secret = f.read().rstrip("\r\n")
    remember(secret)  # the server sees it, and may echo it into an error we report
    return secret


class SFTPBackend(Backend):
    caps = Capabilities(
        chunk_writer=True,
        resumable=True,
        mtime_precision_ns=10**9,  # SFTP v3 carries whole seconds
        atomic_rename=True,
        symlinks=True,
        permissions=True,
        empty_dirs=True,
        put_small=True,
        get_small=True,
    )

    def __init__(self, ep: SFTPEndpoint) -> None:
        self.ep = ep
        self.root = ep.path.rstrip("/") or "/"
        self._idle: queue.LifoQueue[Session] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max(1, ep.sessions))
        self.read_streams = threading.BoundedSemaphore(max(1, min(READ_STREAMS, ep.sessions)))
        self.write_streams = threading.BoundedSemaphore(max(1, min(WRITE_STREAMS, ep.sessions)))
        self._all: set[Session] = set()
        self._lock = threading.Lock()
        self._pkey: paramiko.PKey | None = None
        self._password: str | None = None
        self._full_until = 0.0

    # -- connections ------------------------------------------------------------------
    def describe(self) -> str:
        return self.ep.describe()

    def err(
        self,
        exc: BaseException,
        rel: str | None = None,
        missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
        s: Session | None = None,
    ) -> FerryError:
        """`exc` as a FerryError. A destination's bare failure is checked, on the session `s`
        that saw it, for a full filesystem (statvfs@openssh.com where offered)."""
        err = classify(exc, self.describe(), rel, missing)
        full = (
            err.kind == ErrorKind.IO_ERROR
            and missing == ErrorKind.DESTINATION_NOT_FOUND
            and s is not None
            and self._full(s, rel)
        )
        if full:
            return FerryError(
                ErrorKind.DESTINATION_FULL, f"{self.describe()}: no space left on the server", rel
            )
        return err

    def _full(self, s: Session, rel: str | None) -> bool:
        if time.monotonic() < self._full_until:
            return True  # one check stands for the failures of the next seconds
        if s.dirty or s.broken:
            return False
        try:
            free, inodes = s.statvfs(self.path(rel).rpartition("/")[0] or "/" if rel else self.root)
        except Exception:
            return False  # not offered, or the directory is gone: a plain failure
        if free >= FULL_BELOW and inodes:
            return False
        self._full_until = time.monotonic() + 2.0
        return True

    def free_space(self) -> Space | None:
        """statvfs@openssh.com on the root, or on its nearest existing parent before it is
        created; None where the server does not offer it."""

        def ask(s: Session) -> Space | None:
            path = self.root
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
            return self.run_session(ask)
        except FerryError as err:
            log.info("%s: free space unknown (%s); not checked", self.describe(), err)
            return None

    def partial_bytes(self, rel: str, resume_key: str) -> int:
        """The size of the `.part` a resumable write of `rel` with this key continues."""
        tmp = _partial_path(self.path(rel), resume_key)

        def st(sftp: paramiko.SFTPClient) -> int:
            try:
                return int(sftp.lstat(tmp).st_size or 0)
            except FileNotFoundError:
                return 0

        try:
            return self.run(st)
        except FerryError:
            return 0

    def _credentials(self) -> None:
        if self._pkey is None and self.ep.key_file:
            try:
                self._pkey = paramiko.PKey.from_path(self.ep.key_file)
            except TypeError:  # what paramiko and cryptography raise for an encrypted key
                raise FerryError(
                    ErrorKind.AUTH_FAILED,
                    f"{self.describe()}: key file is passphrase-protected; give an unencrypted key",
                ) from None
            except (OSError, ValueError, paramiko.SSHException) as exc:  # never its text
                raise FerryError(
                    ErrorKind.AUTH_FAILED,
                    f"{self.describe()}: cannot load key file ({type(exc).__name__})",
                ) from None
        if self._password is None and self.ep.password_file:
            try:
                self._password = _read_secret(self.ep.password_file)
            except OSError as exc:
                raise FerryError(
                    ErrorKind.AUTH_FAILED,
                    f"{self.describe()}: cannot read password file ({exc.strerror})",
                ) from None

    def _check_host_key(self, transport: paramiko.Transport) -> None:
        if self.ep.insecure_ignore_host_key:
            return
        key = transport.get_remote_server_key()
        hosts = paramiko.HostKeys()
        path = self.ep.known_hosts_file or os.path.expanduser("~/.ssh/known_hosts")
        try:
            hosts.load(path)
        except OSError:
            raise FerryError(
                ErrorKind.AUTH_FAILED,
                f"{self.describe()}: cannot read known_hosts {path}; "
                "give known_hosts= or opt out with insecure_ignore_host_key=true",
            ) from None
        name = self.ep.host if self.ep.port == 22 else f"[{self.ep.host}]:{self.ep.port}"
        known = hosts.lookup(name)
        if known is None or key.get_name() not in known:
            raise FerryError(
                ErrorKind.AUTH_FAILED,
                f"{self.describe()}: host key not in {path} "
                "(add it, or opt out with insecure_ignore_host_key=true)",
            )
        if known[key.get_name()] != key:
            raise FerryError(
                ErrorKind.AUTH_FAILED, f"{self.describe()}: host key does not match {path}"
            )

    def _connect(self) -> Session:
        self._credentials()
        sock: socket.socket | None = None
        transport: paramiko.Transport | None = None
        try:
            host = self.ep.host.encode() if self.ep.host.isascii() else self.ep.host
            sock = socket.create_connection(
                (host, self.ep.port),  # type: ignore[arg-type]  # as bytes: no IDNA codec import
                timeout=CONNECT_TIMEOUT,
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(
                _quick_acks(sock), default_window_size=WINDOW, default_max_packet_size=MAX_PACKET
            )
            opts = transport.get_security_options()
            # AEAD first: one pass per packet instead of a cipher plus a MAC, on both ends.
            opts.ciphers = tuple(sorted(opts.ciphers, key=lambda c: "gcm" not in c))
            transport.set_keepalive(30)
            transport.start_client(timeout=CONNECT_TIMEOUT)
            self._check_host_key(transport)
            user = self.ep.user or os.environ.get("USER", "root")
            if self._pkey is not None:
                try:
                    transport.auth_publickey(user, self._pkey)
                except paramiko.AuthenticationException:
                    if self._password is None:
                        raise
            if not transport.is_authenticated():
                if self._password is None:
                    raise FerryError(
                        ErrorKind.AUTH_FAILED,
                        f"{self.describe()}: no key_file or password_file given",
                    )
                transport.auth_password(user, self._password)
            sftp = paramiko.SFTPClient.from_transport(
                transport, window_size=WINDOW, max_packet_size=MAX_PACKET
            )
            if sftp is None:
                raise FerryError(
                    ErrorKind.TRANSIENT, f"{self.describe()}: could not open an SFTP channel"
                )
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(120)
            s = Session(transport, sftp)
            s.query_limits()
        except BaseException as exc:
            if transport is not None:
                transport.close()
            elif sock is not None:
                sock.close()
            raise self.err(exc) from None
        with self._lock:
            self._all.add(s)
        return s

    def acquire(self, enough: int = 0) -> Session:
        """A pooled session, else a new connection; but where `enough` sessions exist
        already, first wait a while for a busy one to come back. Write streams (two at a
        time) and journal saves (which run beside them) wait so: a save used to take the
        session a stream had just released, and the next stream then connected anew, a
        key exchange on both ends in the middle of the transfer."""
        self._slots.acquire()
        try:
            while True:
                try:
                    wait = enough and len(self._all) >= enough
                    s = self._idle.get(timeout=PATIENCE) if wait else None
                except queue.Empty:
                    s = None
                try:
                    s = s or self._idle.get_nowait()
                except queue.Empty:
                    return self._connect()
                if s.transport.is_active():
                    return s
                self._drop(s)
        except BaseException:
            self._slots.release()
            raise

    def release(self, s: Session, broken: bool = False) -> None:
        # A session with replies still on their way, or whose server broke the protocol,
        # cannot serve anyone else.
        usable = not (broken or s.broken or s.dirty or s.buf or not s.transport.is_active())
        if usable:
            try:
                s.close_handles(_finished)
            except Exception:
                usable = False
        if usable:
            self._idle.put(s)
        else:
            self._drop(s)
        self._slots.release()

    def close_finished_handles(self) -> None:
        """Close finished writers' kept handles on the idle sessions now (busy ones do it
        when they come back), so no open handle outlives its file for long."""
        idle: list[Session] = []
        try:
            while True:
                idle.append(self._idle.get_nowait())
        except queue.Empty:
            pass
        for s in idle:
            try:
                s.close_handles(_finished)
            except Exception:
                self._drop(s)
                continue
            self._idle.put(s)

    def _drop(self, s: Session) -> None:
        with self._lock:
            self._all.discard(s)
        try:
            s.close()
        except Exception:
            pass

    def run(
        self,
        fn: Callable[[paramiko.SFTPClient], T],
        rel: str | None = None,
        missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
        enough: int = 0,
    ) -> T:
        """Run fn on a pooled session; a failure that smells of a dead connection drops it."""
        return self.run_session(lambda s: fn(s.sftp), rel, missing, enough)

    def run_session(
        self,
        fn: Callable[[Session], T],
        rel: str | None = None,
        missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
        enough: int = 0,
    ) -> T:
        s = self.acquire(enough)
        try:
            out = fn(s)
        except BaseException as exc:
            err = self.err(exc, rel, missing, s)
            self.release(s, broken=err.kind == ErrorKind.TRANSIENT)
            raise err from None
        self.release(s)
        return out

    def close(self) -> None:
        with self._lock:
            sessions = list(self._all)
            self._all.clear()
        for s in sessions:
            try:
                s.close()
            except Exception:
                pass

    # -- paths and listing ------------------------------------------------------------
    def path(self, rel: str) -> str:
        if not rel:
            return self.root
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def _entry(
        self, name: str, a: paramiko.SFTPAttributes, parent: str, sftp: paramiko.SFTPClient | None
    ) -> Entry:
        m = a.st_mode or 0
        if stat.S_ISREG(m):
            kind = EntryType.FILE
        elif stat.S_ISDIR(m):
            kind = EntryType.DIR
        elif stat.S_ISLNK(m):
            kind = EntryType.SYMLINK
        else:
            kind = EntryType.OTHER
        e = Entry(
            name,
            kind,
            size=int(a.st_size or 0) if kind == EntryType.FILE else 0,
            mtime_ns=int(a.st_mtime or 0) * 10**9,
            mode=stat.S_IMODE(m),
            uid=a.st_uid if a.st_uid is not None else -1,
            gid=a.st_gid if a.st_gid is not None else -1,
        )
        if kind == EntryType.SYMLINK and sftp is not None:
            e.target = sftp.readlink(f"{parent}/{name}" if parent != "/" else f"/{name}")
        return e

    def root_type(self) -> EntryType | None:
        e = self.stat("")
        return e.type if e else None

    def root_id(self) -> RootId:
        """The root as the server resolves it (realpath: `~/` paths, `..`, symlinks), so a
        relative and an absolute name of one directory are one root. A root that does not
        exist yet is its deepest existing ancestor's real path plus the rest."""

        def resolve(sftp: paramiko.SFTPClient) -> object:
            path, rest = self.root, ""
            while True:
                try:
                    return f"{sftp.normalize(path)}/{rest}"
                except FileNotFoundError:
                    head, _, tail = path.rpartition("/")
                    if not tail or tail in (".", ".."):
                        return None
                    rest = f"{tail}/{rest}"
                    path = head or ("/" if path.startswith("/") else ".")

        real = self.run(resolve, None)
        if not (isinstance(real, str) and real.startswith("/") and len(real) <= MAX_REALPATH):
            # No usable answer (nothing resolvable, not an absolute path, too long): compare
            # the root as written.
            real = self.root
        return sftp_root(self.ep.host, self.ep.port, self.ep.user, real)

    def prepare_destination(self) -> None:
        def mk(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.stat(self.root)
                return
            except FileNotFoundError:
                pass
            parts = self.root.strip("/").split("/")
            cur = "" if self.root.startswith("/") else "."
            for p in parts:
                cur = f"{cur}/{p}"
                try:
                    sftp.stat(cur)
                except FileNotFoundError:
                    sftp.mkdir(cur)

        self.run(mk, None, ErrorKind.DESTINATION_NOT_FOUND)

    def list_dir(self, rel: str) -> list[Entry]:
        where = f"{self.describe()}/{rel}"
        parent = self.path(rel)

        def ls(sftp: paramiko.SFTPClient) -> list[Entry]:
            out = []
            for a in sftp.listdir_attr(parent):
                name = a.filename
                if name in (".", "..") or name.startswith(INTERNAL_PREFIX):
                    continue
                out.append(self._entry(check_name(name, where), a, parent, sftp))
            return out

        return self.run(ls, rel)

    def stat(self, rel: str) -> Entry | None:
        p = self.path(rel)
        name = rel.rsplit("/", 1)[-1]

        def st(sftp: paramiko.SFTPClient) -> Entry | None:
            try:
                a = sftp.lstat(p)
            except FileNotFoundError:
                return None
            return self._entry(name, a, p.rsplit("/", 1)[0] or "/", sftp)

        return self.run(st, rel)

    # -- data ----------------------------------------------------------------------------
    def open_read(self, rel: str, entry: Entry) -> Reader:
        return SFTPReader(self, rel, entry)

    def open_write(self, rel: str, entry: Entry, resume_key: str | None = None) -> Writer:
        return SFTPWriter(self, rel, entry, resume_key)

    def mkdir(self, rel: str) -> None:
        p = self.path(rel)

        def mk(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.mkdir(p)
            except OSError:
                if not stat.S_ISDIR(sftp.stat(p).st_mode or 0):
                    raise

        self.run(mk, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def remove(self, rel: str, entry: Entry) -> None:
        p = self.path(rel)

        def rm(sftp: paramiko.SFTPClient) -> None:
            try:
                if entry.type == EntryType.DIR:
                    sftp.rmdir(p)
                else:
                    sftp.remove(p)
            except FileNotFoundError:
                pass

        self.run(rm, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def set_meta(self, rel: str, entry: Entry, preserve: Preserve) -> None:
        if entry.type == EntryType.SYMLINK:
            return  # SFTP v3 cannot set a symlink's own times or mode
        self.run(
            lambda sftp: apply_meta(sftp, self.path(rel), entry, preserve),
            rel,
            ErrorKind.DESTINATION_NOT_FOUND,
        )

    def symlink(self, rel: str, target: str) -> None:
        p = self.path(rel)

        def ln(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(p)
            except FileNotFoundError:
                pass
            # OpenSSH's sftp-server swaps SSH_FXP_SYMLINK's arguments; paramiko sends them
            # in the order OpenSSH expects for symlink(source=target, dest=path).
            sftp.symlink(target, p)

        self.run(ln, rel, ErrorKind.DESTINATION_NOT_FOUND)

    def put_small(self, files: list[SmallFile], preserve: Preserve) -> list[FerryError | None]:
        puts = [
            Put(_temp_name(self.path(f.rel)), self.path(f.rel), f.data, *_meta(f.entry, preserve))
            for f in files
        ]

        def put(s: Session) -> list[FerryError | None]:
            out: list[FerryError | None] = []
            outcomes = s.put_many(puts, self.fsync_each)
            self.check_fsync(s)
            for p, f, exc in zip(puts, files, outcomes, strict=True):
                if exc is not None and p.written:
                    exc = self._rename_or_remove(s.sftp, p.tmp, p.final)  # no posix-rename?
                missing = ErrorKind.DESTINATION_NOT_FOUND
                out.append(None if exc is None else self.err(exc, f.rel, missing, s))
            return out

        return self.run_session(put, None, ErrorKind.DESTINATION_NOT_FOUND)

    def get_small(self, files: list[tuple[str, Entry]]) -> list[bytes | None]:
        """One pipelined exchange; a file whose LSTAT after the reads is not the size and
        mtime listed is None (read again on its own, which tells what changed)."""
        try:
            got = self.run_session(lambda s: s.get_many([(self.path(r), e.size) for r, e in files]))
        except FerryError:
            return [None] * len(files)
        out: list[bytes | None] = []
        for (_, e), r in zip(files, got, strict=True):
            data, st = r if r is not None else (None, None)
            if st is None or st.size != e.size or (e.mtime_ns and st.mtime != e.mtime_ns // 10**9):
                data = None
            out.append(data)
        return out

    def check_fsync(self, s: Session) -> None:
        """--fsync file on a server that declines fsync@openssh.com: say so once, stop asking."""
        if s.fsync_refused and self.fsync_each:
            self.fsync_each = False
            log.warning(
                "%s: the server declines fsync@openssh.com; written files are not flushed "
                "to its disk before they are renamed into place",
                self.describe(),
            )

    def _rename_or_remove(self, sftp: paramiko.SFTPClient, tmp: str, final: str) -> OSError | None:
        try:
            self.rename_into_place(sftp, tmp, final)
            return None
        except OSError as exc:
            try:
                sftp.remove(tmp)
            except OSError:
                pass
            return exc

    def rename_into_place(self, sftp: paramiko.SFTPClient, tmp: str, final: str) -> None:
        try:
            sftp.posix_rename(tmp, final)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            # A server without posix-rename: plain SFTP rename refuses to replace.
            try:
                sftp.remove(final)
            except FileNotFoundError:
                pass
            sftp.rename(tmp, final)


def apply_meta(sftp: paramiko.SFTPClient, path: str, entry: Entry, preserve: Preserve) -> None:
    if preserve.perms and entry.mode:
        sftp.chmod(path, entry.mode & 0o7777)
    if preserve.times and entry.mtime_ns:
        sec = entry.mtime_ns // 10**9
        sftp.utime(path, (sec, sec))


def _temp_name(final: str) -> str:
    """A fresh hidden temp name beside `final`, for a file written in one go."""
    parent, _, name = final.rpartition("/")
    return f"{parent}/{_internal(name, secrets.token_hex(6) + '.tmp')}"


def _partial_path(final: str, resume_key: str) -> str:
    """Where a resumable write of `final` keeps its partial: a name per source version."""
    parent, _, name = final.rpartition("/")
    parent = parent or "/"
    tag = hashlib.blake2b(resume_key.encode(), digest_size=8).hexdigest()
    part = _internal(name, f"{tag}.part")
    return join(parent, part) if parent != "/" else "/" + part


def _meta(entry: Entry, preserve: Preserve) -> tuple[int | None, int | None]:
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
    """Pipelined READs on a handle per pooled session (see Session)."""

    def __init__(self, be: SFTPBackend, rel: str, entry: Entry) -> None:
        self.be, self.rel, self.size = be, rel, entry.size
        self.path = be.path(rel)
        self.mtime_ns = entry.mtime_ns
        # An LSTAT answered after a whole-file read_at (same batch, so after the reads):
        # it serves the next changed() instead of another round trip. None: vanished.
        self._after: Stat | bool | None = False

    def changed(self) -> str | None:
        """One stat after the copy: a file rewritten meanwhile must not be committed as copied."""
        after, self._after = self._after, False
        if after is False:
            now = self.be.stat(self.rel)
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
        with self.be.read_streams:
            s = self.be.acquire()
            broken = False
            try:
                handle = s.open(self.path, FXF_READ)
                yield from s.read(handle, offset, end - offset, piece)
                s.close_handle(handle)
            except GeneratorExit:
                broken = True  # outstanding reads would confuse the next user of this session
                raise
            except BaseException as exc:
                err = self.be.err(exc, self.rel)
                broken = err.kind == ErrorKind.TRANSIENT
                raise err from None
            finally:
                self.be.release(s, broken)

    def read_at(self, offset: int, length: int) -> bytes:
        if offset == 0 and length >= self.size and 0 < self.size <= SMALL_READ:

            def whole(s: Session) -> bytes:
                data, self._after = s.read_small(self.path, self.size)
                return data

            return self.be.run_session(whole, self.rel)
        return b"".join(self.iter_range(offset, length, SMALL_READ))


def _finished(owner: object) -> bool:
    return bool(getattr(owner, "finished", True))


class SFTPWriter(Writer):
    """A hidden temp file written at offsets from several sessions, renamed at commit.

    A small file (below BULK, not resumable) is buffered and written at commit in two
    round trips (`Session.write_small`) before the rename, instead of four."""

    def __init__(self, be: SFTPBackend, rel: str, entry: Entry, resume_key: str | None) -> None:
        self.be, self.rel, self.entry = be, rel, entry
        self.finished = False  # committed or aborted: sessions close the handles they keep
        self.final = be.path(rel)
        parent, _, name = self.final.rpartition("/")
        parent = parent or "/"
        if resume_key:
            self.tmp = _partial_path(self.final, resume_key)
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
            self.tmp = _temp_name(self.final)
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
            be.run(create, rel, ErrorKind.DESTINATION_NOT_FOUND)
            self._created = True

    def _loader(self, path: str) -> Callable[[], bytes | None]:
        def load() -> bytes | None:
            def rd(sftp: paramiko.SFTPClient) -> bytes | None:
                try:
                    with sftp.open(path, "rb") as f:
                        return bytes(f.read())
                except FileNotFoundError:
                    return None

            return self.be.run(rd)

        return load

    def _saver(self, path: str) -> Callable[[bytes], None]:
        def save(blob: bytes) -> None:
            def wr(sftp: paramiko.SFTPClient) -> None:
                with sftp.open(path + ".new", "wb") as f:
                    f.write(blob)
                self.be.rename_into_place(sftp, path + ".new", path)

            self.be.run(wr, self.rel, ErrorKind.DESTINATION_NOT_FOUND, enough=1)

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
            self.be.run_session(wr, self.rel, ErrorKind.DESTINATION_NOT_FOUND)
            return
        with self.be.write_streams:
            self.be.run_session(wr, self.rel, ErrorKind.DESTINATION_NOT_FOUND, WRITE_STREAMS)

    def _create(self, s: Session) -> None:
        if not self._created:
            s.close_handle(s.open(self.tmp, FXF_WRITE | FXF_CREAT | FXF_TRUNC))
            self._created = True

    def _flush(self) -> None:
        """Write out a buffered small file (as it is: mode and times come at commit)."""
        if self.buf is not None:
            data, self.buf = bytes(self.buf), None
            self._created = True
            self.be.run_session(
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

        self.be.run_session(trunc, self.rel, ErrorKind.DESTINATION_NOT_FOUND)

    def done_chunks(self, chunk_size: int = 0) -> dict[int, bytes]:
        if self.state is None:
            return {}
        return self.state.valid_chunks(chunk_size, self.entry.size, self.read_back)

    def record_chunk(self, index: int, block_digests: bytes) -> None:
        if self.state is not None:
            try:
                self.state.add_chunk(index, block_digests)
            except Exception as exc:
                raise self.be.err(exc, self.rel, ErrorKind.DESTINATION_NOT_FOUND) from None

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

        return self.be.run_session(rd, self.rel)

    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        if self.state is not None:
            self.state.close()  # no timer may resave the state after commit deletes it
        mode, mtime = _meta(entry, preserve)
        data, self.buf = (bytes(self.buf), None) if self.buf is not None else (None, None)
        self.finished = True
        self.be.close_finished_handles()  # before the rename: the file is whole, let it go

        def fin(s: Session) -> None:  # s keeps none of ours: released or swept since
            if data is not None:
                self._created = True
                s.write_small(self.tmp, data, mode, mtime, self.be.fsync_each)
            else:
                self._create(s)  # an empty file gets no write
                rid = s.setstat(self.tmp, mode, mtime)  # mode and times in one request
                if rid is not None:
                    s.reply(rid)
                if self.be.fsync_each:
                    s.sync_file(self.tmp)
            self.be.check_fsync(s)
            self.be.rename_into_place(s.sftp, self.tmp, self.final)
            if self.journal:
                try:
                    s.sftp.remove(self.journal)
                except FileNotFoundError:
                    pass

        self.be.run_session(fin, self.rel, ErrorKind.DESTINATION_NOT_FOUND)

    def abort(self, keep_partial: bool = False) -> None:
        self.finished = True
        self.be.close_finished_handles()
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

            self.be.run(rm, self.rel)
        except Exception:
            pass


__all__ = ["SFTPBackend", "classify"]
