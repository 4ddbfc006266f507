"""Versity S3 Gateway: a real S3 server (Go) storing objects as files, built from the Go proxy.

`tests/servers/install.sh` builds the pinned release into Ferry's cache. Unlike
moto it keeps its data on disk (a restart loses nothing), keeps connections
alive and serves ranged reads from the file, so it is the server the
benchmarks time S3 clients against. It accepts but does not apply SSE and
storage classes: tests of those headers run against moto.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers.common import LOOPBACK, ServerError, free_port, need, port_open, wait_until
from tests.servers.s3api import REGION, S3ApiServer

VERSION = "v1.8.0"  # keep in sync with tests/servers/install.sh


def binary() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    cache = Path(os.environ.get("FERRY_CACHE") or Path(xdg) / "ferry")
    cand = cache / f"versitygw-{VERSION}" / "bin" / "versitygw"
    found = str(cand) if cand.exists() else shutil.which("versitygw")
    if not found:
        raise ServerError("versitygw not found (run: bash tests/servers/install.sh)")
    return found


class VersityServer(S3ApiServer):
    """One versitygw process with a posix backend under a temp dir, single-account mode."""

    def __init__(self, port: int | None = None, tls: bool = False, host: str = LOOPBACK) -> None:
        """With `tls`, HTTPS with a fresh self-signed certificate for `host` (`ca_bundle`).
        `host`: the address to listen on (pods on real nodes reach the host at another)."""
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-vgw-"))
        self.data = self.dir / "data"
        self.data.mkdir()
        self.log = self.dir / "versitygw.log"
        self.access_key = "FERRY" + secrets.token_hex(6).upper()
        self.secret_key = secrets.token_urlsafe(24)

    def start(self, timeout: float = 30.0) -> VersityServer:
        env = {
            **os.environ,
            "ROOT_ACCESS_KEY_ID": self.access_key,
            "ROOT_SECRET_ACCESS_KEY": self.secret_key,
        }
        cmd = [binary(), "--port", f"{self.host}:{self.port}", "--region", REGION]
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        if self.tls and not cert.exists():  # made once: a restart keeps what clients trust
            subprocess.run(
                [need("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN={self.host}",
                 "-addext", f"subjectAltName=IP:{self.host}", "-keyout", str(key), "-out", str(cert)],
                check=True,
                capture_output=True,
            )  # fmt: skip
        if self.tls:
            cmd += ["--cert", str(cert), "--key", str(key)]
            self.ca_bundle = str(cert)
        cmd += ["--keep-alive", "--quiet", "posix", str(self.data)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        wait_until(
            lambda: port_open(self.port, self.host), timeout, f"versitygw on {self.port}", self.proc
        )
        return self
