"""An SFTP endpoint's connections: a pool of SSH sessions (each with its SFTP channel) lent to
one thread at a time, with the endpoint's credentials, host-key check and error mapping.
The backend, its readers and its writers all take this object.

Which `Session` a new connection gets is chosen once, here: the wire's (accelerators on) or
paramiko's library path (`library.LibrarySession`); with the accelerators off, wire/ is not
imported."""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import paramiko

from ferry.mover.backends.base import Durability, Entry, EntryType
from ferry.mover.backends.sftp.library import LibrarySession
from ferry.mover.backends.sftp.session import Session
from ferry.mover.endpoints import SFTPEndpoint
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.options import MiB
from ferry.mover.redact import remember

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
PATIENCE = 0.5  # seconds Connections.acquire waits for a busy session before connecting


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


def _finished(owner: object) -> bool:
    return bool(getattr(owner, "finished", True))


class Connections:
    """See the module docstring."""

    def __init__(self, ep: SFTPEndpoint, durability: Durability, accelerators: bool = True) -> None:
        self.ep = ep
        self.root = ep.path.rstrip("/") or "/"
        self.accelerators = accelerators  # False: paramiko's SFTPClient for everything
        self._session: Callable[[paramiko.Transport, paramiko.SFTPClient], Session]
        if accelerators:
            from ferry.mover.backends.sftp.wire.session import open_session

            self._session = open_session
        else:
            self._session = LibrarySession
        # --fsync file: turned off (with a warning) where the server declines fsync@openssh.com.
        self.fsync_each = durability.fsync_each
        self._idle: queue.LifoQueue[Session] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max(1, ep.sessions))
        self.read_streams = threading.BoundedSemaphore(max(1, min(READ_STREAMS, ep.sessions)))
        self.write_streams = threading.BoundedSemaphore(max(1, min(WRITE_STREAMS, ep.sessions)))
        self._all: set[Session] = set()
        self._lock = threading.Lock()
        self._pkey: paramiko.PKey | None = None
        self._password: str | None = None
        self._full_until = 0.0

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
        if not s.reusable():
            return False
        try:
            free, inodes = s.statvfs(self.path(rel).rpartition("/")[0] or "/" if rel else self.root)
        except Exception:
            return False  # not offered, or the directory is gone: a plain failure
        if free >= FULL_BELOW and inodes:
            return False
        self._full_until = time.monotonic() + 2.0
        return True

    def path(self, rel: str) -> str:
        if not rel:
            return self.root
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

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
            s = self._session(transport, sftp)
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
        usable = not broken and s.reusable() and s.transport.is_active()
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

    def entry(
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

    def stat(self, rel: str) -> Entry | None:
        p = self.path(rel)
        name = rel.rsplit("/", 1)[-1]

        def st(sftp: paramiko.SFTPClient) -> Entry | None:
            try:
                a = sftp.lstat(p)
            except FileNotFoundError:
                return None
            return self.entry(name, a, p.rsplit("/", 1)[0] or "/", sftp)

        return self.run(st, rel)

    def check_fsync(self, s: Session) -> None:
        """--fsync file on a server that declines fsync@openssh.com: say so once, stop asking."""
        if s.fsync_refused and self.fsync_each:
            self.fsync_each = False
            who = (
                "the server declines" if self.accelerators else "paramiko (accelerators off) has no"
            )
            log.warning(
                "%s: %s fsync@openssh.com; written files are not flushed "
                "to its disk before they are renamed into place",
                self.describe(),
                who,
            )

    def rename_or_remove(self, sftp: paramiko.SFTPClient, tmp: str, final: str) -> OSError | None:
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
