"""The delta stream: a versioned header, then copy and literal instructions, then an end
mark.

    header  "FDLT" u8 version u8x3 zero
    COPY    0x01 u32 index u32 count          consecutive basis blocks
    LITERAL 0x02 u32 length, length bytes     (length <= MAX_LITERAL)
    END     0x00 u64 literal bytes in the stream (a framing check)

It crosses the network from the sender to the basis side, so `decode` holds at most one
literal (<= 1 MiB) in memory whatever a peer sends, and refuses copy indices past the
basis's blocks, output other than the expected size, and bytes after END.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ferry.mover.delta.ops import Copy, Literal, Op
from ferry.mover.errors import ErrorKind, FerryError

MAGIC = b"FDLT"
VERSION = 1
MAX_LITERAL = 1 << 20
_HEADER = struct.Struct("<4sB3x")
_COPY = struct.Struct("<BII")
_LITERAL = struct.Struct("<BI")
_END = struct.Struct("<BQ")
T_END, T_COPY, T_LITERAL = 0, 1, 2
_BATCH = 64 << 10  # instructions are sent in pieces of about this size


@dataclass(frozen=True, slots=True)
class DeltaLimits:
    """What the basis side knows before reading a delta: its blocks and the expected size."""

    block_size: int
    basis_size: int
    size: int  # the new file's size: the output must be exactly this

    @property
    def block_count(self) -> int:
        return -(-self.basis_size // self.block_size)

    def copy_len(self, op: Copy) -> int:
        start = op.index * self.block_size
        return min(op.count * self.block_size, self.basis_size - start)


def encode_ops(ops: Iterable[Op]) -> Iterator[bytes]:
    """The encoded stream of `ops`: small instructions batched, literal data as is."""
    out = bytearray(_HEADER.pack(MAGIC, VERSION))
    total = 0
    for op in ops:
        if isinstance(op, Copy):
            out += _COPY.pack(T_COPY, op.index, op.count)
            continue
        data = op.data
        for at in range(0, len(data), MAX_LITERAL):
            piece = data[at : at + MAX_LITERAL]
            out += _LITERAL.pack(T_LITERAL, len(piece))
            yield bytes(out)
            out.clear()
            yield piece
        total += len(data)
        if len(out) >= _BATCH:
            yield bytes(out)
            out.clear()
    out += _END.pack(T_END, total)  # Copy bytes are added by the decoder against the basis
    yield bytes(out)


class _Stream:
    """Bytes from an iterable of chunks, taken in exact lengths."""

    def __init__(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.chunks = iter(chunks)
        self.buf = b""
        self.at = 0

    def take(self, n: int, what: str) -> bytes:
        if len(self.buf) - self.at >= n:
            self.at += n
            return self.buf[self.at - n : self.at]
        parts = [self.buf[self.at :]]
        have = len(parts[0])
        while have < n:
            chunk = next(self.chunks, None)
            if chunk is None:
                raise FerryError(ErrorKind.PROTOCOL, f"delta stream ends inside {what}")
            parts.append(bytes(chunk))
            have += len(chunk)
        self.buf = b"".join(parts)
        self.at = n
        return self.buf[:n]

    def at_end(self) -> bool:
        if self.at < len(self.buf):
            return False
        return all(not chunk for chunk in self.chunks)


def decode(chunks: Iterable[bytes | bytearray | memoryview], limits: DeltaLimits) -> Iterator[Op]:
    """The ops of a delta stream from a peer, checked against `limits` as they come."""
    s = _Stream(chunks)
    magic, version = _HEADER.unpack(s.take(_HEADER.size, "the header"))
    if magic != MAGIC:
        raise FerryError(ErrorKind.PROTOCOL, "not a delta stream (wrong magic)")
    if version != VERSION:
        raise FerryError(ErrorKind.PROTOCOL, f"delta stream version {version} unsupported")
    blocks = limits.block_count
    out = literal_total = 0
    while True:
        tag = s.take(1, "an instruction")[0]
        if tag == T_COPY:
            _, index, count = _COPY.unpack(bytes([tag]) + s.take(_COPY.size - 1, "a copy"))
            if count < 1 or index + count > blocks:
                raise FerryError(
                    ErrorKind.PROTOCOL,
                    f"delta copies blocks {index}..{index + count - 1} of a {blocks}-block basis",
                )
            copy = Copy(index, count)
            out += limits.copy_len(copy)
            op: Op = copy
        elif tag == T_LITERAL:
            (length,) = struct.unpack("<I", s.take(4, "a literal"))
            if not 0 < length <= MAX_LITERAL:
                raise FerryError(
                    ErrorKind.PROTOCOL, f"delta literal of {length} bytes (1..{MAX_LITERAL})"
                )
            out += length
            if out > limits.size:
                raise FerryError(
                    ErrorKind.PROTOCOL, f"delta output exceeds the expected {limits.size} bytes"
                )
            op = Literal(s.take(length, "literal data"))
            literal_total += length
        elif tag == T_END:
            (total,) = struct.unpack("<Q", s.take(8, "the end mark"))
            if total != literal_total:
                raise FerryError(
                    ErrorKind.PROTOCOL,
                    f"delta end mark says {total} literal bytes, the stream held {literal_total}",
                )
            if out != limits.size:
                raise FerryError(
                    ErrorKind.PROTOCOL, f"delta rebuilds {out} bytes, expected {limits.size}"
                )
            if not s.at_end():
                raise FerryError(ErrorKind.PROTOCOL, "bytes after the end of the delta stream")
            return
        else:
            raise FerryError(ErrorKind.PROTOCOL, f"unknown delta instruction {tag}")
        if out > limits.size:
            raise FerryError(
                ErrorKind.PROTOCOL, f"delta output exceeds the expected {limits.size} bytes"
            )
        yield op
