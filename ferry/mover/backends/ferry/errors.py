"""Errors on the wire: a FerryError as an HTTP status plus `{"reason", "message"}`, and back.

The reason is the ErrorKind's name, so a refusal at the server keeps its kind (and with it
its exit code and retryability) at the client. A reply that is not such a document is the
peer's fault: PROTOCOL, or TRANSIENT for the statuses proxies and overloaded servers send.
"""

from __future__ import annotations

import http.client
import json
import ssl

from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error

STATUS = {
    ErrorKind.PROTOCOL: 400,
    ErrorKind.USAGE: 400,
    ErrorKind.UNSAFE_PATH: 403,
    ErrorKind.PERMISSION: 403,
    ErrorKind.SOURCE_NOT_FOUND: 404,
    ErrorKind.DESTINATION_NOT_FOUND: 404,
    ErrorKind.SOURCE_CHANGED: 409,
    ErrorKind.VERIFY_MISMATCH: 409,
    ErrorKind.DESTINATION_FULL: 507,
    ErrorKind.TRANSIENT: 503,
}
MAX_ERROR_BODY = 16 * 1024
_TRANSIENT_STATUS = {429, 502, 503, 504}
# TLS alerts a server sends when it refuses this client's certificate (TLS 1.3 reports them on
# the first read after the handshake).
_REFUSED_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_REVOKED",
    "DECRYPT_ERROR",
    "HANDSHAKE_FAILURE",
    "ACCESS_DENIED",
)


def status_of(kind: ErrorKind) -> int:
    return STATUS.get(kind, 500)


def error_document(err: FerryError) -> bytes:
    return json.dumps({"reason": err.kind.name, "message": str(err)}).encode()


def error_from_reply(status: int, body: bytes, where: str, path: str | None = None) -> FerryError:
    """The FerryError a non-200 reply stands for."""
    try:
        doc = json.loads(body[:MAX_ERROR_BODY])
        reason, message = doc["reason"], doc["message"]
        if not isinstance(reason, str) or not isinstance(message, str):
            raise TypeError
        kind = ErrorKind[reason]
    except (ValueError, TypeError, KeyError):
        kind = ErrorKind.TRANSIENT if status in _TRANSIENT_STATUS else ErrorKind.PROTOCOL
        return FerryError(kind, f"{where} answered HTTP {status} without a Ferry error", path)
    return FerryError(kind, f"{where}: {message[:1000]}", None)


def error_in_batch(doc: object, rel: str, where: str) -> FerryError:
    """One file's failure inside a batch reply."""
    if isinstance(doc, dict):
        reason, message = doc.get("reason"), doc.get("message")
        if isinstance(reason, str) and reason in ErrorKind.__members__ and isinstance(message, str):
            return FerryError(ErrorKind[reason], f"{where}: {message[:1000]}", rel)
    return FerryError(ErrorKind.PROTOCOL, f"{where}: a malformed outcome in a batch reply", rel)


def transport_error(exc: BaseException, where: str, path: str | None = None) -> FerryError:
    """A failure of the connection itself: a refused certificate is AUTH_FAILED (retrying
    cannot help), a dropped or reset connection TRANSIENT (the engine retries, and a rerun
    resumes from the server's journal)."""
    if isinstance(exc, FerryError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FerryError(
            ErrorKind.AUTH_FAILED,
            f"{where}: the server's certificate is not trusted ({exc.verify_message})",
            path,
        )
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if any(a in reason for a in _REFUSED_ALERTS):
            return FerryError(
                ErrorKind.AUTH_FAILED,
                f"{where} refused this client's TLS certificate ({reason.lower()}): "
                "check tls_cert, tls_key and tls_ca",
                path,
            )
        return FerryError(ErrorKind.TRANSIENT, f"{where}: TLS error ({reason or exc})", path)
    if isinstance(exc, (http.client.HTTPException, ConnectionError, TimeoutError, EOFError)):
        text = str(exc) or type(exc).__name__
        return FerryError(ErrorKind.TRANSIENT, f"{where}: connection lost ({text})", path)
    return as_ferry_error(exc, path)
