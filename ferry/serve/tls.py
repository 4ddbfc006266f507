"""The server's TLS context: TLS 1.3 only, and a client certificate from the CA required,
so a peer without one fails the handshake before any request is read."""

from __future__ import annotations

import ssl

from ferry.mover.errors import ErrorKind, FerryError


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise FerryError(
            ErrorKind.USAGE, f"--tls-ca {ca!r}: cannot load it ({_why(exc)})"
        ) from None
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise FerryError(
            ErrorKind.USAGE,
            f"--tls-cert {cert!r} / --tls-key {key!r}: cannot load them ({_why(exc)})",
        ) from None
    return ctx


def _why(exc: BaseException) -> str:
    """The reason, never the file's contents."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or "not a PEM certificate or key")
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
