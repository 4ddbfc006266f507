"""Failure classification shared by the engine, the CLI and the operator.

Every failure Ferry reports has a kind. The kind fixes the process exit code,
whether retrying can help, and the condition reason the operator shows, so a
`kubectl describe` and a shell `$?` tell the same story.
"""

from __future__ import annotations

import errno
from enum import Enum
from typing import Any

from ferry.mover.redact import redact


class ErrorKind(Enum):
    """(exit code, condition reason, retryable)."""

    PARTIAL = (1, "PartialFailure", False)
    USAGE = (2, "InvalidSpec", False)
    SOURCE_NOT_FOUND = (3, "SourceNotFound", False)
    OVERLAP = (4, "InvalidSpec", False)
    PERMISSION = (5, "PermissionDenied", False)
    DESTINATION_FULL = (6, "DestinationFull", False)
    SOURCE_CHANGED = (7, "SourceChanged", True)
    UNSAFE_PATH = (8, "UnsafePath", False)
    VERIFY_MISMATCH = (9, "VerifyMismatch", False)
    IO_ERROR = (10, "IOError", False)
    TRANSIENT = (11, "Transient", True)
    AUTH_FAILED = (12, "AuthFailed", False)
    DESTINATION_NOT_FOUND = (13, "DestinationNotFound", False)
    DELETE_LIMIT = (14, "DeleteLimitExceeded", False)  # sync would delete more than maxDelete
    PROTOCOL = (15, "ProtocolError", False)  # a peer sent malformed or out-of-bounds data
    INTERRUPTED = (130, "Interrupted", True)

    @property
    def exit_code(self) -> int:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]

    @property
    def retryable(self) -> bool:
        return self.value[2]


class FerryError(Exception):
    """An error with a kind and, where there is one, the path it concerns.

    Its text is finalised here, and only here, through `redact`: whatever a library or a
    server put into the message, no URL password or loaded secret leaves as part of it."""

    def __init__(self, kind: ErrorKind, message: str, path: str | None = None) -> None:
        super().__init__(redact(message))
        self.kind = kind
        self.path = path

    def __str__(self) -> str:
        msg = super().__str__()
        return redact(f"{self.path}: {msg}" if self.path and self.path not in msg else msg)

    def to_json(self) -> dict[str, Any]:
        """The document a run that failed before it had a summary prints (`--json`) and a
        mover pod leaves as its termination message: the summary's status keys only."""
        return {
            "status": "failed",
            "reason": self.kind.reason,
            "exitCode": self.kind.exit_code,
            "message": str(self),
        }


_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EINTR,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
    errno.ESTALE,
}
_ERRNO_KINDS = {
    errno.ENOENT: ErrorKind.SOURCE_NOT_FOUND,
    errno.EACCES: ErrorKind.PERMISSION,
    errno.EPERM: ErrorKind.PERMISSION,
    errno.EROFS: ErrorKind.PERMISSION,
    errno.ENOSPC: ErrorKind.DESTINATION_FULL,
    errno.EDQUOT: ErrorKind.DESTINATION_FULL,
    errno.EFBIG: ErrorKind.DESTINATION_FULL,
    errno.ELOOP: ErrorKind.UNSAFE_PATH,
    errno.EIO: ErrorKind.IO_ERROR,
}


def classify_os_error(exc: OSError) -> ErrorKind:
    if exc.errno in _TRANSIENT_ERRNOS:
        return ErrorKind.TRANSIENT
    return _ERRNO_KINDS.get(exc.errno or 0, ErrorKind.IO_ERROR)


def as_ferry_error(exc: BaseException, path: str | None = None) -> FerryError:
    """Wrap any exception raised while handling `path` into a classified FerryError."""
    if isinstance(exc, FerryError):
        if exc.path is None and path is not None:
            exc.path = path
        return exc
    if isinstance(exc, OSError):
        kind = classify_os_error(exc)
        text = exc.strerror or str(exc)
        return FerryError(kind, f"{text} (errno {exc.errno})" if exc.errno else text, path)
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return FerryError(ErrorKind.TRANSIENT, str(exc) or type(exc).__name__, path)
    return FerryError(ErrorKind.IO_ERROR, f"{type(exc).__name__}: {exc}", path)
