"""A hostile SFTP server on loopback, for what OpenSSH never sends.

OpenSSH's sftp-server never answers with a malformed reply, so it cannot show what Ferry
does with one. This stand-in is paramiko's own SSH server (Transport in server mode, a real
SSH connection on a loopback socket, AES-GCM like sshd) whose SFTP subsystem is paramiko's
SFTPServer over the local filesystem, with one difference: each reply passes through
`Peer.tamper` first, which may send any bytes in its place. Ferry's client side is the real
one (its backend, session pool, wire framing and packet sealer).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import SFTP_NO_SUCH_FILE, SFTP_OK

from ferry.mover.endpoints import SFTPEndpoint

USER = "peer"

# (reply type, reply body) -> the bytes to send instead (the whole frame, length included),
# or None to send the reply as it is
Tamper = Callable[[int, bytes], bytes | None]


def frame(kind: int, body: bytes) -> bytes:
    """An SFTP packet: length, type, then the body (request id included)."""
    return struct.pack(">IB", len(body) + 1, kind) + body


class _Handle(paramiko.SFTPHandle):
    path: str
    readfile: Any
    writefile: Any

    def stat(self) -> Any:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr: paramiko.SFTPAttributes) -> Any:
        paramiko.SFTPServer.set_file_attr(self.path, attr)
        return SFTP_OK


class _Files(paramiko.SFTPServerInterface):
    """The local filesystem, paths taken as they come (absolute, as sshd's are)."""

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            out = fn()
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or 0)
        return SFTP_OK if out is None else out

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        def op() -> paramiko.SFTPHandle:
            fd = os.open(path, flags | getattr(os, "O_BINARY", 0), 0o644)
            mode = "r+b" if flags & (os.O_WRONLY | os.O_RDWR) else "rb"
            handle = _Handle(flags)
            handle.path = path
            handle.readfile = handle.writefile = os.fdopen(fd, mode)
            return handle

        return self._call(op)

    def stat(self, path: str) -> Any:
        return self._call(lambda: paramiko.SFTPAttributes.from_stat(os.stat(path)))

    def lstat(self, path: str) -> Any:
        return self._call(lambda: paramiko.SFTPAttributes.from_stat(os.lstat(path)))

    def list_folder(self, path: str) -> Any:
        def op() -> list[paramiko.SFTPAttributes]:
            return [
                paramiko.SFTPAttributes.from_stat(os.lstat(os.path.join(path, n)), n)
                for n in os.listdir(path)
            ]

        return self._call(op)

    def remove(self, path: str) -> Any:
        return self._call(lambda: os.remove(path))

    def rename(self, old: str, new: str) -> Any:
        if os.path.exists(new):
            return SFTP_NO_SUCH_FILE if not os.path.exists(old) else paramiko.sftp.SFTP_FAILURE
        return self._call(lambda: os.rename(old, new))

    def posix_rename(self, old: str, new: str) -> Any:
        return self._call(lambda: os.rename(old, new))

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> Any:
        return self._call(lambda: os.mkdir(path))

    def rmdir(self, path: str) -> Any:
        return self._call(lambda: os.rmdir(path))

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> Any:
        return self._call(lambda: paramiko.SFTPServer.set_file_attr(path, attr))

    def canonicalize(self, path: str) -> str:
        return os.path.normpath(path if path.startswith("/") else "/" + path)


class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        return paramiko.AUTH_SUCCESSFUL if username == USER else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_UNKNOWN


class Peer:
    """The server: `uri`/`endpoint` for Ferry, `tamper` to rewrite replies, `connections`
    counts SSH connections accepted. `max_packet` is the maximum packet size its channels
    declare to the client."""

    def __init__(self, max_packet: int = 32768) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-peer-"))
        self.root = self.dir / "data"
        self.root.mkdir()
        self.password_file = self.dir / "password"
        self.password_file.write_text("x\n")
        self.key = paramiko.ECDSAKey.generate()
        self.max_packet = max_packet
        self.tamper: Tamper | None = None
        self.connections = 0
        self._transports: list[paramiko.Transport] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        peer = self

        class Replies(paramiko.SFTPServer):
            def _send_packet(self, t: int, packet: Any) -> None:
                body = packet.asbytes()
                out = peer.tamper(t, body) if peer.tamper is not None else None
                self._write_all(frame(t, body) if out is None else out)  # type: ignore[attr-defined]

        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            t = paramiko.Transport(conn, default_max_packet_size=self.max_packet)
            t.add_server_key(self.key)
            t.set_subsystem_handler("sftp", Replies, _Files)
            self._transports.append(t)
            self.connections += 1
            t.start_server(server=_Server())

    def endpoint(self, sub: str, sessions: int = 1) -> SFTPEndpoint:
        return SFTPEndpoint(
            host="127.0.0.1",
            port=self.port,
            path=str(self.root / sub),
            user=USER,
            password_file=str(self.password_file),
            insecure_ignore_host_key=True,
            sessions=sessions,
        )

    def uri(self, sub: str) -> str:
        return (
            f"sftp://{USER}@127.0.0.1:{self.port}{self.root}/{sub}"
            f"?password_file={self.password_file}&insecure_ignore_host_key=true"
        )

    def close(self) -> None:
        self._sock.close()
        for t in self._transports:
            t.close()
        shutil.rmtree(self.dir, ignore_errors=True)
