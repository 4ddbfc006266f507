"""The Ferry file digest, defined once.

A file's digest is BLAKE3 over a small header (a domain tag and the file
size) followed by the BLAKE3 digests of its consecutive 1 MiB blocks:

    digest = "b3m1:" + hex(BLAKE3("ferry-digest-v1\\0" || le64(size) || B3(block0) || B3(block1) ...))

Blocks make the value independent of how a transfer is cut up: chunks are
whole numbers of blocks, so parallel chunk workers, a resumed run and a plain
sequential read all produce the same block list and so the same digest.
Resume journals keep block digests, so a resumed file never needs re-reading
at the source to finish its digest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from blake3 import blake3

from ferry.mover.errors import ErrorKind, FerryError

if TYPE_CHECKING:
    from ferry.mover.backends.base import Backend, Entry

BLOCK_SIZE = 1 << 20
DIGEST_LEN = 32
PREFIX = "b3m1:"
_TAG = b"ferry-digest-v1\x00"


_ZEROS = bytes(BLOCK_SIZE)
ZERO_BLOCK_DIGEST = blake3(_ZEROS).digest()


def block_digests(data: bytes | bytearray | memoryview) -> bytes:
    """Digests of the blocks of `data`, which must start on a block boundary."""
    view = memoryview(data)
    if len(view) <= BLOCK_SIZE:
        return blake3(view).digest() if len(view) else b""
    return b"".join(
        blake3(view[i : i + BLOCK_SIZE]).digest() for i in range(0, len(view), BLOCK_SIZE)
    )


def digest_from_blocks(size: int, blocks: bytes | Iterable[bytes]) -> str:
    h = blake3(_TAG)
    h.update(size.to_bytes(8, "little"))
    if isinstance(blocks, (bytes, bytearray, memoryview)):
        h.update(blocks)
    else:
        for b in blocks:
            h.update(b)
    return PREFIX + h.hexdigest()


def digest_bytes(data: bytes | bytearray | memoryview) -> str:
    return digest_from_blocks(len(data), block_digests(data))


class StreamHasher:
    """The digest of bytes fed in order, in pieces of any size."""

    def __init__(self) -> None:
        self._blocks = bytearray()
        self._cur = blake3()
        self._fill = 0
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.size += len(view)
        while view:
            take = min(BLOCK_SIZE - self._fill, len(view))
            self._cur.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == BLOCK_SIZE:
                self._blocks += self._cur.digest()
                self._cur = blake3()
                self._fill = 0

    def update_zeros(self, n: int) -> None:
        """Feed n zero bytes (a hole) without hashing whole zero blocks again."""
        if self._fill == 0 and n >= BLOCK_SIZE:
            whole = n // BLOCK_SIZE
            self._blocks += ZERO_BLOCK_DIGEST * whole
            self.size += whole * BLOCK_SIZE
            n -= whole * BLOCK_SIZE
        while n > 0:
            take = min(n, len(_ZEROS))  # update() cuts at block boundaries
            self.update(_ZEROS[:take])
            n -= take

    def block_digests(self) -> bytes:
        tail = self._cur.digest() if self._fill else b""
        return bytes(self._blocks) + tail

    def hexdigest(self) -> str:
        return digest_from_blocks(self.size, self.block_digests())


def is_digest(text: str | None) -> bool:
    return (
        text is not None and text.startswith(PREFIX) and len(text) == len(PREFIX) + 2 * DIGEST_LEN
    )


def file_digest(backend: Backend, rel: str, e: Entry) -> str:
    """The Ferry digest of a file as stored: the backend's kept digest, or a full read."""
    if e.digest:
        return e.digest
    reader = backend.open_read(rel, e)
    try:
        hasher = StreamHasher()
        for piece in reader.iter_range(0, e.size, 4 * BLOCK_SIZE):
            hasher.update(piece)
        if hasher.size != e.size:
            raise FerryError(ErrorKind.SOURCE_CHANGED, "size changed while reading", rel)
        return hasher.hexdigest()
    finally:
        reader.close()
