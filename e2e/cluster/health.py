"""Wait for component health endpoints on loopback, with deadlines instead of sleeps."""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit


class NotReady(RuntimeError):
    """A component did not become healthy before its deadline."""


def get(url: str, ca: Path | None = None, cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
    """One GET; returns (status, body). TLS verified against `ca` when https."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], bool] | None = None
) -> None:
    """Poll `check` until true; fail early if `alive` says the component died."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            last = exc
        if alive is not None and not alive():
            raise NotReady(f"{what}: process exited (see its log)")
        time.sleep(0.2)
    raise NotReady(f"{what}: not ready after {timeout:.0f}s (last error: {last})")


def wait_http_ok(
    what: str,
    url: str,
    timeout: float,
    ca: Path | None = None,
    cert: tuple[Path, Path] | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Wait until `url` answers 200."""
    wait_until(what, lambda: get(url, ca, cert)[0] == 200, timeout, alive)
