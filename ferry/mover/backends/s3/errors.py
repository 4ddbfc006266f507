"""S3 failures as Ferry's error kinds, and botocore's exception classes loaded only when a
client is built (runs the wire carries alone never import botocore)."""

from __future__ import annotations

import ssl
from typing import Any

from ferry.mover.errors import ErrorKind, FerryError

AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}
TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "InternalError",
    "503",
    "500",
    "502",
    "504",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
}
MISSING_BUCKET = {"NoSuchBucket"}
MISSING_KEY = {"NoSuchKey", "404", "NotFound"}


class _NotLoaded(Exception):
    """Stands for a botocore exception class until botocore is loaded: nothing raises it."""


class Boto:
    """botocore's exception classes, once a client is being built. Nothing can raise them
    before, and runs that never build one (the wire carries their calls) skip botocore's
    import (~20 ms of every run's start)."""

    ClientError: type[Exception] = _NotLoaded
    BotoCoreError: type[Exception] = _NotLoaded
    NoCredentialsError: type[Exception] = _NotLoaded

    @classmethod
    def load(cls) -> None:
        from botocore import exceptions as e

        cls.ClientError, cls.BotoCoreError = e.ClientError, e.BotoCoreError
        cls.NoCredentialsError = e.NoCredentialsError


def untrusted_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind `exc`, if that is what it is: botocore keeps it in
    `kwargs["error"]`, the wire path in the exception chain. Retrying cannot fix it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        inner = (getattr(e, "kwargs", None) or {}).get("error")
        todo += [e.__cause__, e.__context__, inner if isinstance(inner, BaseException) else None]
    return None


def classify(
    exc: BaseException,
    where: str,
    path: str | None = None,
    missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
) -> FerryError:
    """Map a boto3/botocore failure to a FerryError naming `where` (never a secret)."""
    if isinstance(exc, FerryError):
        return exc
    if isinstance(exc, Boto.NoCredentialsError):
        return FerryError(ErrorKind.AUTH_FAILED, f"{where}: no AWS credentials found", path)
    if isinstance(exc, Boto.ClientError):
        response: dict[str, Any] = getattr(exc, "response", {})
        err = response.get("Error", {})
        code = str(err.get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        msg = f"{where}: {code or status} {err.get('Message', '')}".rstrip()
        if code in AUTH_CODES:
            return FerryError(
                ErrorKind.AUTH_FAILED, f"{where}: credentials rejected ({code})", path
            )
        if code in TRANSIENT_CODES or status in (500, 502, 503, 504):
            return FerryError(ErrorKind.TRANSIENT, msg, path)
        if code in MISSING_BUCKET:
            return FerryError(missing, f"{where}: bucket does not exist", path)
        if code in MISSING_KEY:
            return FerryError(missing, msg, path)
        if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            return FerryError(ErrorKind.PERMISSION, msg, path)
        if code in ("PreconditionFailed", "412") or status == 412:
            return FerryError(
                ErrorKind.SOURCE_CHANGED, f"{where}: object changed while reading", path
            )
        if code in ("EntityTooLarge", "QuotaExceeded"):
            return FerryError(ErrorKind.DESTINATION_FULL, msg, path)
        return FerryError(ErrorKind.IO_ERROR, msg, path)
    bad_cert = untrusted_certificate(exc)
    if bad_cert is not None:
        return FerryError(
            ErrorKind.AUTH_FAILED,
            f"{where}: the server's TLS certificate is not trusted ({bad_cert.verify_message}); "
            "give its CA (AWS_CA_BUNDLE, or spec.pod.caBundle in a TransferJob)",
            path,
        )
    if isinstance(exc, (Boto.BotoCoreError, ConnectionError, TimeoutError, OSError)):
        # EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, IncompleteRead ...
        return FerryError(ErrorKind.TRANSIENT, f"{where}: {type(exc).__name__}: {exc}", path)
    return FerryError(ErrorKind.IO_ERROR, f"{where}: {type(exc).__name__}: {exc}", path)


def error_code(exc: Exception) -> str:
    """The error code of a botocore ClientError."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
