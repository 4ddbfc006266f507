"""smbprotocol failures as Ferry's error kinds."""

from __future__ import annotations

from smbprotocol import exceptions as smbexc

from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error

# STATUS_DISK_FULL, STATUS_QUOTA_EXCEEDED: smbprotocol gives them no errno.
FULL_STATUSES = {0xC000007F, 0xC0000044}


class MalformedAnswer(Exception):
    """A server answer that breaks the protocol (an offset or length outside the message, a
    wrong structure size): the connection is dropped and the operation may be retried."""


class UnprotectedAnswer(Exception):
    """An answer neither signed nor encrypted on a session whose requests are: tampered with
    on the way, or a broken server. Nothing it says is used; the connection is dropped."""


def classify(
    exc: BaseException,
    where: str,
    path: str | None = None,
    missing: ErrorKind = ErrorKind.SOURCE_NOT_FOUND,
) -> FerryError:
    """Map smbprotocol failures to FerryErrors that name the endpoint, never a secret."""
    if isinstance(exc, FerryError):
        return exc
    if isinstance(exc, UnprotectedAnswer):
        return FerryError(ErrorKind.AUTH_FAILED, f"{where}: {exc}; connection dropped", path)
    if isinstance(exc, MalformedAnswer):
        return FerryError(ErrorKind.TRANSIENT, f"{where}: malformed answer: {exc}", path)
    if isinstance(
        exc,
        (
            smbexc.LogonFailure,
            smbexc.WrongPassword,
            smbexc.PasswordExpired,
            smbexc.SMBAuthenticationError,
        ),
    ):
        return FerryError(ErrorKind.AUTH_FAILED, f"{where}: authentication failed", path)
    if isinstance(exc, smbexc.BadNetworkName):
        return FerryError(missing, f"{where}: share does not exist", path)
    if _status(exc) in FULL_STATUSES:
        return FerryError(ErrorKind.DESTINATION_FULL, f"{where}: no space left on the share", path)
    if isinstance(exc, smbexc.SMBOSError):
        err = as_ferry_error(exc, path)
        if err.kind == ErrorKind.SOURCE_NOT_FOUND:
            err.kind = missing
        err.args = (f"{where}: {exc.strerror or exc}",)
        return err
    if isinstance(exc, smbexc.AccessDenied):
        return FerryError(ErrorKind.PERMISSION, f"{where}: access denied", path)
    if isinstance(exc, (smbexc.ObjectNameNotFound, smbexc.ObjectPathNotFound, smbexc.NoSuchFile)):
        return FerryError(missing, f"{where}: no such file", path)
    if isinstance(
        exc,
        (
            smbexc.SMBConnectionClosed,
            ConnectionError,
            TimeoutError,
            EOFError,
            smbexc.InsufficientResources,
            smbexc.IOTimeout,
        ),
    ):
        return FerryError(
            ErrorKind.TRANSIENT, f"{where}: connection lost ({type(exc).__name__})", path
        )
    if isinstance(exc, ValueError) and "Failed to connect" in str(exc):
        return FerryError(ErrorKind.TRANSIENT, f"{where}: cannot connect", path)
    if isinstance(exc, OSError):
        err = as_ferry_error(exc, path)
        err.args = (f"{where}: {err.args[0]}",)
        return err
    if isinstance(exc, smbexc.SMBException):
        text = str(exc)
        if "credits" in text or "closed" in text.lower():
            return FerryError(ErrorKind.TRANSIENT, f"{where}: {text}", path)
        return FerryError(ErrorKind.IO_ERROR, f"{where}: {text}", path)
    return FerryError(ErrorKind.IO_ERROR, f"{where}: {type(exc).__name__}: {exc}", path)


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, smbexc.SMBOSError):
        return int(exc.ntstatus)
    if isinstance(exc, smbexc.SMBResponseException):
        return int(exc.status)
    return None
