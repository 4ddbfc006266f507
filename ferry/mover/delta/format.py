"""The delta stream: a versioned header naming the basis it was made against, copy and
literal instructions, and an end mark carrying the new file's Ferry digest.

    header  "FDLT" u8 version u8x3 zero u32 block_size u64 basis_size
    COPY    0x01 u32 index u32 count          consecutive basis blocks
    LITERAL 0x02 u32 length, length bytes     (1 <= length <= MAX_LITERAL)
    END     0x00 u64 literal bytes in the stream, 32 bytes: the Ferry digest of the output

The digest travels at the end because the sender computes it in the same read that finds
the matches. The stream crosses the network from the sender to the basis side, so `open`
holds at most one literal (<= 1 MiB) in memory whatever a peer sends, and refuses a block
size out of range, copy indices past the basis's blocks, output other than the expected
size, a wrong literal count, and bytes after END.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ferry.mover.delta.ops import Copy, Literal, Op
from ferry.mover.delta.signature import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import DIGEST_LEN, PREFIX, is_digest

MAGIC = b"FDLT"
VERSION = 1
MAX_LITERAL = 1 << 20
_HEADER = struct.Struct("<4sB3xIQ")
_COPY = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
_END = struct.Struct(f"<Q{DIGEST_LEN}s")
T_END, T_COPY, T_LITERAL = 0, 1, 2
_BATCH = 64 << 10  # instructions are sent in pieces of about this size

Chunks = Iterable[bytes | bytearray | memoryview]


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


def encode_ops(
    ops: Iterable[Op], *, block_size: int, basis_size: int, digest: Callable[[], str]
) -> Iterator[bytes]:
    """The encoded stream of `ops`, made against a basis of `basis_size` bytes in blocks of
    `block_size`: small instructions batched, literal data as is. `digest()` is asked for
    the output's Ferry digest once the ops are exhausted."""
    out = bytearray(_HEADER.pack(MAGIC, VERSION, block_size, basis_size))
    total = 0
    for op in ops:
        if isinstance(op, Copy):
            out.append(T_COPY)
            out += _COPY.pack(op.index, op.count)
        else:
            data = op.data
            for at in range(0, len(data), MAX_LITERAL):
                piece = data[at : at + MAX_LITERAL]
                out.append(T_LITERAL)
                out += _LENGTH.pack(len(piece))
                yield bytes(out)
                out.clear()
                yield piece
            total += len(data)
        if len(out) >= _BATCH:
            yield bytes(out)
            out.clear()
    text = digest()
    if not is_digest(text):
        raise FerryError(ErrorKind.PROTOCOL, f"not a Ferry digest: {text!r}")
    out.append(T_END)
    out += _END.pack(total, bytes.fromhex(text[len(PREFIX) :]))
    yield bytes(out)


class _Stream:
    """Bytes from an iterable of chunks, taken in exact lengths."""

    def __init__(self, chunks: Chunks) -> None:
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


class DeltaStream:
    """A delta from a peer: the header is read and checked when opened (`block_size`,
    `basis_size`); iterating gives the ops, each checked as it comes; `digest` is the end
    mark's, set once the iteration has finished."""

    def __init__(self, chunks: Chunks, basis_size: int, size: int) -> None:
        self._s = _Stream(chunks)
        magic, version, block_size, claimed = _HEADER.unpack(
            self._s.take(_HEADER.size, "the header")
        )
        if magic != MAGIC:
            raise FerryError(ErrorKind.PROTOCOL, "not a delta stream (wrong magic)")
        if version != VERSION:
            raise FerryError(ErrorKind.PROTOCOL, f"delta stream version {version} unsupported")
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise FerryError(
                ErrorKind.PROTOCOL,
                f"delta block size {block_size} outside {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}",
            )
        if claimed != basis_size:
            raise FerryError(
                ErrorKind.SOURCE_CHANGED,
                f"the delta's basis changed since its signature ({claimed} bytes then, "
                f"{basis_size} now)",
            )
        self.limits = DeltaLimits(block_size, basis_size, size)
        self.digest: str | None = None

    @property
    def block_size(self) -> int:
        return self.limits.block_size

    def __iter__(self) -> Iterator[Op]:
        s, limits = self._s, self.limits
        blocks = limits.block_count
        out = literal_total = 0
        while True:
            tag = s.take(1, "an instruction")[0]
            if tag == T_COPY:
                index, count = _COPY.unpack(s.take(_COPY.size, "a copy"))
                if count < 1 or index + count > blocks:
                    raise FerryError(
                        ErrorKind.PROTOCOL,
                        f"delta copies blocks {index}..{index + count - 1} of a "
                        f"{blocks}-block basis",
                    )
                copy = Copy(index, count)
                out += limits.copy_len(copy)
                op: Op = copy
            elif tag == T_LITERAL:
                (length,) = _LENGTH.unpack(s.take(_LENGTH.size, "a literal"))
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
                total, raw = _END.unpack(s.take(_END.size, "the end mark"))
                if total != literal_total:
                    raise FerryError(
                        ErrorKind.PROTOCOL,
                        f"delta end mark says {total} literal bytes, the stream held "
                        f"{literal_total}",
                    )
                if out != limits.size:
                    raise FerryError(
                        ErrorKind.PROTOCOL, f"delta rebuilds {out} bytes, expected {limits.size}"
                    )
                if not s.at_end():
                    raise FerryError(ErrorKind.PROTOCOL, "bytes after the end of the delta stream")
                self.digest = PREFIX + raw.hex()
                return
            else:
                raise FerryError(ErrorKind.PROTOCOL, f"unknown delta instruction {tag}")
            if out > limits.size:
                raise FerryError(
                    ErrorKind.PROTOCOL, f"delta output exceeds the expected {limits.size} bytes"
                )
            yield op


def open_delta(chunks: Chunks, basis_size: int, size: int) -> DeltaStream:
    """A delta stream from a peer against a basis of `basis_size` bytes, rebuilding `size`."""
    return DeltaStream(chunks, basis_size, size)


def decode(chunks: Chunks, limits: DeltaLimits) -> Iterator[Op]:
    """The ops of a delta stream made against exactly the basis `limits` describes."""
    stream = DeltaStream(chunks, limits.basis_size, limits.size)
    if stream.block_size != limits.block_size:
        raise FerryError(
            ErrorKind.PROTOCOL,
            f"delta made in {stream.block_size}-byte blocks, the signature had {limits.block_size}",
        )
    yield from stream
