"""What the SMB backend's own CREATEs (wire.messages) need: access masks and attributes,
compounds of related requests in one round trip, and the handle such a CREATE returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smbprotocol import exceptions as smbexc
from smbprotocol.file_info import FileEndOfFileInformation
from smbprotocol.open import (
    FilePipePrinterAccessMask,
    Open,
    ShareAccess,
    SMB2SetInfoRequest,
)

from ferry.mover.backends.smb.wire import messages
from ferry.mover.options import MiB

IO_MAX = MiB  # per request
DEPTH = 4  # requests in flight per handle
CREDITS_WANTED = 512
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
SHARE_ALL = (
    ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
)
READ_ACCESS = (
    FilePipePrinterAccessMask.FILE_READ_DATA | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
)
# Temp files are written, get their mtime and are renamed through the handle that wrote them.
WRITE_ACCESS = (
    FilePipePrinterAccessMask.FILE_READ_DATA
    | FilePipePrinterAccessMask.FILE_WRITE_DATA
    | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
    | FilePipePrinterAccessMask.FILE_WRITE_ATTRIBUTES
    | FilePipePrinterAccessMask.DELETE
)


def exchange(tree: Any, bodies: list[messages.Body]) -> list[Any]:
    """Send related requests (bodies packed by wire.messages) as one compound message, one
    round trip. Every answer is received (smbprotocol needs that): its body (bytes), or
    the exception of a failed one. A symlink on the path is an answer here
    (StoppedOnSymlink), not followed."""
    conn = tree.session.connection
    sent = conn.send_compound(bodies, tree.session.session_id, tree.tree_connect_id, related=True)
    out: list[Any] = []
    for request in sent:
        try:
            out.append(conn.receive(request, resolve_symlinks=False)["data"].get_value())
        except smbexc.SMBResponseException as exc:
            out.append(exc)
    return out


def _set_info_request(fd: Any, info: Any) -> tuple[Any, Callable[[Any], Any]]:
    req = SMB2SetInfoRequest()
    req["info_type"] = info.INFO_TYPE
    req["file_info_class"] = info.INFO_CLASS
    req["file_id"] = fd.file_id
    req["buffer"] = info
    return req, fd.connection.receive


class Handle:
    """A file this process opened for writing with a CREATE of its own (wire.messages): its
    id on the tree, and smbprotocol's Open for it, made on first use (larger writes and
    truncation go through smbprotocol)."""

    __slots__ = ("_fd", "file_id", "is_open", "name", "tree")

    def __init__(self, tree: Any, name: str, file_id: bytes) -> None:
        self.tree, self.name, self.file_id = tree, name, file_id
        self.is_open = True
        self._fd: Any = None

    @property
    def fd(self) -> Any:
        if self._fd is None:
            self._fd = Open(self.tree, self.name)
            self._fd.file_id = self.file_id
        return self._fd

    def close(self) -> None:
        if self.is_open:
            (answer,) = exchange(self.tree, [messages.close(self.file_id, attributes=False)])
            self.is_open = False
            if isinstance(answer, BaseException):
                raise answer

    def truncate(self, size: int) -> None:
        eof = FileEndOfFileInformation()
        eof["end_of_file"] = size
        req, recv = _set_info_request(self.fd, eof)
        recv(self.fd.connection.send(req, self.tree.session.session_id, self.tree.tree_connect_id))
