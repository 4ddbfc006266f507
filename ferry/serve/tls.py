"""The server's TLS context: TLS 1.3 only, and a client certificate from the CA required,
so a peer without one fails the handshake before any request is read."""

from __future__ import annotations

import ssl

from ferry.mover.backends.ferry.protocol import tls_reason
from ferry.mover.errors import ErrorKind, FerryError


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise FerryError(
            ErrorKind.USAGE, f"--tls-ca {ca!r}: cannot load it ({tls_reason(exc)})"
        ) from None
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise FerryError(
            ErrorKind.USAGE,
            f"--tls-cert {cert!r} / --tls-key {key!r}: cannot load them ({tls_reason(exc)})",
        ) from None
    return ctx
