"""A loopback TCP relay whose restart drops every connection, as a restarting server does.

moto keeps its data in memory, so restarting moto itself would also wipe the
bucket; real S3 endpoints do not lose data when a front end restarts. The
relay reproduces what a client actually sees (connections reset, the port
refusing for a moment, then accepting again) with real sockets.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from tests.servers.common import free_port


class TCPRelay:
    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._lose: bytes | None = None
        self._then: bytes | None = None
        self.lost = 0  # answers lost so far
        self.sent = 0  # bytes relayed from clients to the server
        self.received = 0  # bytes relayed from the server to clients
        self.seen = 0  # requests seen that start as `lose_answer_to`'s

    def lose_answer_to(self, request: bytes, then: bytes | None = None) -> None:
        """The next request starting with `request` reaches the server, but its answer
        never reaches the client: the relay drops it and closes the connection, as a
        network failure after the server acted does. With `then`, later such requests are
        answered `then` by the relay itself (a canned answer: a mock, for what the servers
        here never say)."""
        self._lose, self._then = request, then

    def start(self) -> TCPRelay:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._socks |= {c, u}
            lost = threading.Event()  # set once a request here has lost its answer
            for x, y, requests in ((c, u, True), (u, c, False)):
                threading.Thread(
                    target=self._pump, args=(x, y, lost, requests), daemon=True
                ).start()

    def _pump(
        self, a: socket.socket, b: socket.socket, lost: threading.Event, requests: bool
    ) -> None:
        try:
            while data := a.recv(1 << 16):
                if requests and self._lose is not None and data.startswith(self._lose):
                    self.seen += 1
                    if self.lost and self._then is not None:
                        a.sendall(self._then)  # and the request goes nowhere
                        return
                    if not self.lost:
                        self.lost += 1
                        lost.set()
                elif not requests and lost.is_set():  # the lost answer: dropped, both closed
                    return
                b.sendall(data)
                with self._lock:
                    if requests:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the port frees
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                # RST, not FIN: what a crashed or restarted server's kernel sends.
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                s.close()

    def restart(self) -> None:
        self.stop()
        self.start()


class SMBAnswerRelay(TCPRelay):
    """A TCPRelay that passes the server's answers message by message (SMB2 over TCP: a
    4-byte length, then the message) and offers each to `tamper` until it changes one: a
    man in the middle, a legitimate fault injector for the client's protection checks."""

    def __init__(self, target_port: int, tamper: Callable[[bytes], bytes | None]) -> None:
        super().__init__(target_port)
        self.tamper = tamper
        self.tampered = 0  # answers changed so far (at most one)

    def _pump(
        self, a: socket.socket, b: socket.socket, lost: threading.Event, requests: bool
    ) -> None:
        if requests:
            super()._pump(a, b, lost, requests)
            return
        buf = b""
        try:
            while data := a.recv(1 << 16):
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[1:4], "big"):
                    size = int.from_bytes(buf[1:4], "big")
                    msg, buf = buf[4 : 4 + size], buf[4 + size :]
                    if not self.tampered:
                        changed = self.tamper(msg)
                        if changed is not None:
                            msg = changed
                            self.tampered += 1
                    b.sendall(b"\0" + len(msg).to_bytes(3, "big") + msg)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
