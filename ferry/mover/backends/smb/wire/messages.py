"""SMB2 request bodies for the small-file compounds, packed with struct, and their answers
parsed the same way (MS-SMB2 2.2.13-2.2.20).

smbprotocol builds and parses each message as a Structure of Field objects: ~1 ms of CPU
for a CREATE + READ + CLOSE, most of a small file's cost. Its connection only needs a
body's COMMAND, `pack()` and length (and, for a READ, the fields its credit charge comes
from), so these bodies go through `Connection.send_compound` like its own. The tests
compare their bytes with smbprotocol's Structures. The answers come from the server:
every offset, length and size in them is checked before use (MalformedAnswer).
"""

from __future__ import annotations

import struct
from typing import Any

from smbprotocol.header import Commands
from smbprotocol.structure import DateTimeField

from ferry.mover.backends.smb.errors import MalformedAnswer

RELATED = b"\xff" * 16  # the file id of a related compound's requests after its CREATE
_CREATE = struct.Struct("<HBBIQQIIIIIHHII")  # 56 bytes; the name follows at offset 64 + 56
_READ = struct.Struct("<HBBIQ16sIIIHHB")  # 49 bytes, the last one the empty buffer
_CLOSE = struct.Struct("<HHI16s")
_FLUSH = struct.Struct("<HHI16s")  # StructureSize, two reserved fields, FileId
_WRITE = struct.Struct("<HHIQ16sIIHHI")  # 48 bytes; the data follows at offset 64 + 48
_SET_INFO = struct.Struct("<HBBIHHI16s")  # 32 bytes; the information follows at 64 + 32
_BASIC = struct.Struct("<QQQQII")  # FileBasicInformation: times (0: unchanged), attributes
_RENAME = struct.Struct("<B7xQI")  # FileRenameInformation for SMB2, before the name
INFO_FILE = 1
BASIC_INFORMATION = 4
RENAME_INFORMATION = 10
_CREATE_ANSWER = struct.Struct("<HBBIQQQQQQII16s")  # up to FileId: times, sizes, attributes
_READ_ANSWER = struct.Struct("<HBBIII")  # StructureSize 17, DataOffset, DataLength, ...
_CLOSE_ANSWER = struct.Struct("<HHIQQQQQQI")
POSTQUERY_ATTRIB = 0x1
MAX_INT64 = 2**63 - 1


class Field:
    """A value read and set as smbprotocol's Field objects are (for its connection code)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def get_value(self) -> Any:
        return self.value

    def set_value(self, value: Any) -> None:
        self.value = value

    def has_flag(self, flag: int) -> bool:
        return bool(self.value & flag == flag)

    def set_flag(self, flag: int) -> None:
        self.value |= flag

    def __str__(self) -> str:
        return str(self.value)


class Body:
    """A request body as smbprotocol's connection sends it."""

    __slots__ = ("COMMAND", "data", "fields")

    def __init__(self, command: int = 0, data: bytes = b"", **fields: int) -> None:
        self.COMMAND = command
        self.data = data
        self.fields = fields  # what the credit charge reads (a READ's lengths)

    def pack(self) -> bytes:
        return self.data

    def unpack(self, data: bytes) -> bytes:  # smbprotocol may rebuild a sent body from bytes
        self.data = data
        return b""

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: str) -> Field:
        return Field(self.fields[key])


def create(
    name: str,
    access: int,
    attributes: int,
    share: int,
    disposition: int,
    options: int,
    impersonation: int,
) -> Body:
    path = name.encode("utf-16-le")
    head = _CREATE.pack(
        57, 0, 0, impersonation, 0, 0, access, attributes, share, disposition, options,
        64 + _CREATE.size, len(path), 0, 0,
    )  # fmt: skip
    return Body(Commands.SMB2_CREATE, head + (path or b"\0\0"))  # the share's root: no name


def read(offset: int, length: int, file_id: bytes = RELATED) -> Body:
    data = _READ.pack(49, 0x50, 0, length, offset, file_id, 0, 0, 0, 0, 0, 0)
    return Body(Commands.SMB2_READ, data, length=length, read_channel_info_length=0)


def write(offset: int, data: bytes | memoryview, file_id: bytes = RELATED) -> Body:
    head = _WRITE.pack(49, 64 + _WRITE.size, len(data), offset, file_id, 0, 0, 0, 0, 0)
    return Body(
        Commands.SMB2_WRITE, b"".join((head, data)), length=len(data), write_channel_info_length=0
    )


def set_mtime(file_id: bytes, mtime_ns: int) -> Body:
    """SET_INFO FileBasicInformation: last write and last access time, nothing else."""
    ft = filetime(mtime_ns)
    return _set_info(file_id, BASIC_INFORMATION, _BASIC.pack(0, ft, ft, 0, 0, 0))


def set_rename(file_id: bytes, share_rel: str) -> Body:
    """SET_INFO FileRenameInformation: to `share_rel` on the same share, replacing it."""
    name = share_rel.encode("utf-16-le")
    return _set_info(file_id, RENAME_INFORMATION, _RENAME.pack(1, 0, len(name)) + name)


def _set_info(file_id: bytes, info_class: int, info: bytes) -> Body:
    head = _SET_INFO.pack(33, INFO_FILE, info_class, len(info), 64 + _SET_INFO.size, 0, 0, file_id)
    return Body(Commands.SMB2_SET_INFO, head + info)


def flush(file_id: bytes) -> Body:
    """FLUSH: the server writes the file's data to its disk (smbd: fsync) before it answers."""
    return Body(Commands.SMB2_FLUSH, _FLUSH.pack(24, 0, 0, file_id))


def close(file_id: bytes = RELATED, attributes: bool = True) -> Body:
    data = _CLOSE.pack(24, POSTQUERY_ATTRIB if attributes else 0, 0, file_id)
    return Body(Commands.SMB2_CLOSE, data)


def _fields(answer: bytes, shape: struct.Struct, size: int, what: str) -> tuple[Any, ...]:
    """The fixed part of an answer, checked to be there and to declare its StructureSize."""
    if len(answer) < shape.size:
        raise MalformedAnswer(f"{what} answer of {len(answer)} bytes, under {shape.size}")
    fields = shape.unpack_from(answer, 0)
    if fields[0] != size:
        raise MalformedAnswer(f"{what} answer with StructureSize {fields[0]}, not {size}")
    return fields


def _signed64(value: int, what: str) -> int:
    """FILETIMEs and sizes are signed 64-bit on the wire (MS-FSCC): above that is nonsense."""
    if value > MAX_INT64:
        raise MalformedAnswer(f"{what} {value} out of range")
    return value


def created_file_id(answer: bytes) -> bytes:
    return bytes(_fields(answer, _CREATE_ANSWER, 89, "CREATE")[12])


def created_attributes(answer: bytes) -> tuple[int, int, int]:
    """(FileAttributes, EndOfFile, LastWriteTime in ns since the epoch) of a CREATE."""
    f = _fields(answer, _CREATE_ANSWER, 89, "CREATE")
    size = _signed64(f[9], "CREATE EndOfFile")
    return f[10], size, _unix_ns(_signed64(f[6], "CREATE LastWriteTime"))


def read_data(answer: bytes, limit: int) -> bytes:
    """The data of a READ answer, at most `limit` bytes (what was asked for). DataOffset and
    DataLength are the server's word: checked against the message before slicing."""
    _, offset, _, length, _, _ = _fields(answer, _READ_ANSWER, 17, "READ")
    if length > limit:
        raise MalformedAnswer(f"READ answer with {length} bytes, {limit} asked for")
    if length == 0:
        return b""
    start = offset - 64  # DataOffset counts from the start of the SMB2 header
    if start < _READ_ANSWER.size or start + length > len(answer):
        raise MalformedAnswer(
            f"READ answer's data ({length} bytes at offset {offset}) outside its "
            f"{64 + len(answer)}-byte message"
        )
    return answer[start : start + length]


def closed_size_mtime(answer: bytes) -> tuple[int, int]:
    """(EndOfFile, LastWriteTime in ns since the epoch) from a CLOSE with post-query
    attributes."""
    _, _, _, _, _, last_write, _, _, end_of_file, _ = _fields(answer, _CLOSE_ANSWER, 60, "CLOSE")
    size = _signed64(end_of_file, "CLOSE EndOfFile")
    return size, _unix_ns(_signed64(last_write, "CLOSE LastWriteTime"))


def filetime(unix_ns: int) -> int:
    """ns since the Unix epoch as a FILETIME (100 ns units since 1601)."""
    return unix_ns // 100 + DateTimeField.EPOCH_FILETIME


def _unix_ns(ft: int) -> int:
    """A FILETIME (100 ns units since 1601) as ns since the Unix epoch."""
    return (ft - DateTimeField.EPOCH_FILETIME) * 100
