"""Rebuild a file from its basis and a delta, hashing what is written (the basis side)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ferry.mover.delta.ops import Copy, Op
from ferry.mover.delta.signature import ReadAt
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import StreamHasher

COPY_PIECE = 1 << 20  # below the 4 MiB past which `ferry` has malloc map memory afresh

WriteAt = Callable[[int, bytes | memoryview], None]


def apply(
    basis_read_at: ReadAt,
    basis_size: int,
    sig_block_size: int,
    ops: Iterable[Op],
    write_at: WriteAt,
    on_copy: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Write the file the ops describe through `write_at`; return (size, Ferry digest).
    `on_copy` is told the bytes each copy reused from the basis. The caller compares the digest with the source's: a basis that
    changed since its signature was taken gives a different digest (or a short read here)."""
    hasher = StreamHasher()
    out = 0
    for op in ops:
        if isinstance(op, Copy):
            start = op.index * sig_block_size
            end = min(start + op.count * sig_block_size, basis_size)
            if op.count < 1 or start >= end:
                raise FerryError(ErrorKind.PROTOCOL, f"delta copies past the basis ({op})")
            for at in range(start, end, COPY_PIECE):
                want = min(COPY_PIECE, end - at)
                data = basis_read_at(at, want)
                if len(data) != want:
                    raise FerryError(
                        ErrorKind.SOURCE_CHANGED, "the delta's basis shrank while rebuilding"
                    )
                view = memoryview(data)
                write_at(out, view)
                hasher.update(view)
                out += want
            if on_copy is not None:
                on_copy(end - start)
        else:
            if op.data:
                write_at(out, op.data)
                hasher.update(op.data)
                out += len(op.data)
    return out, hasher.hexdigest()
