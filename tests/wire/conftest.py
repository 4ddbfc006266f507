"""`ferry serve` as a real process on loopback, with certificates made per session."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FERRY
from tests.wire.certs import Certs, Pair, make_certs

READY = re.compile(r"listening on ([\d.]+):(\d+)")


def wait_for(cond: Any, what: str, deadline: float = 30.0, every: float = 0.02) -> Any:
    """Poll `cond` until it returns something true, or fail naming `what`."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Server:
    """One `ferry serve ROOT` process; restartable on the same port."""

    def __init__(self, root: Path, certs: Certs, log: Path, *args: str) -> None:
        self.root, self.certs, self.log_path = root, certs, log
        self.args = args  # more of `ferry serve`'s flags
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        listen = f"127.0.0.1:{self.port}"
        self.log_path.write_bytes(b"")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *FERRY,
                "serve",
                str(self.root),
                "--listen",
                listen,
                "--tls-cert",
                str(self.certs.server.cert),
                "--tls-key",
                str(self.certs.server.key),
                "--tls-ca",
                str(self.certs.ca),
                *self.args,
            ],
            stdout=log,
            stderr=log,
        )
        log.close()

        def ready() -> re.Match[str] | None:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            return READY.search(self.log())

        m = wait_for(ready, "ferry serve to listen")
        self.port = int(m.group(2))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def url(self, path: str = "", pair: Pair | None = None, **extra: str) -> str:
        pair = pair or self.certs.client
        q = f"tls_cert={pair.cert}&tls_key={pair.key}&tls_ca={self.certs.ca}"
        for k, v in extra.items():
            q += f"&{k}={v}"
        return f"ferry://127.0.0.1:{self.port}/{path}?{q}"

    def connect(self, pair: Pair | None = None) -> http.client.HTTPSConnection:
        """A raw mutual-TLS HTTP connection, for requests no Ferry client would send."""
        pair = pair or self.certs.client
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.certs.ca))
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=30)

    def stats(self) -> dict[str, int]:
        conn = self.connect()
        try:
            conn.request("GET", "/v1/stats")
            return dict(json.loads(conn.getresponse().read()))
        finally:
            conn.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def server(tmp_path: Path, certs: Certs) -> Iterator[Server]:
    root = tmp_path / "served" / "root"
    root.mkdir(parents=True)
    s = Server(root, certs, tmp_path / "serve.log").start()
    try:
        yield s
    finally:
        s.stop()
