"""The end of every streamed file: check the source did not move, copy its xattrs,
verify (`--verify full` reads the destination back), commit, book."""

from __future__ import annotations

from ferry.mover.backends.base import Entry, Reader, Writer
from ferry.mover.engine.context import Context
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import BLOCK_SIZE, StreamHasher
from ferry.mover.options import Verify
from ferry.mover.plan import Action


def commit(
    ctx: Context,
    a: Action,
    s: Entry,
    reader: Reader,
    writer: Writer,
    digest: str | None,
    resumed: int = 0,
) -> None:
    """Publish the written file `a` (copied from source entry `s`) and book it."""
    why = reader.changed()
    if why:
        raise FerryError(ErrorKind.SOURCE_CHANGED, why, a.rel)
    if ctx.xattrs:
        attrs = reader.xattrs()
        if attrs:
            writer.set_xattrs(attrs)
    if (
        ctx.options.verify == Verify.FULL
        and digest
        and not read_back_matches(writer, s.size, digest)
    ):
        raise FerryError(
            ErrorKind.VERIFY_MISMATCH, "destination bytes do not match the source digest", a.rel
        )
    writer.commit(s, digest, ctx.options.preserve)
    ctx.ledger.committed(a, s, digest, resumed)


def read_back_matches(writer: Writer, size: int, digest: str) -> bool:
    hasher = StreamHasher()
    offset = 0
    while offset < size:
        data = writer.read_back(offset, min(BLOCK_SIZE, size - offset))
        if data is None:
            return True  # the backend verifies on its side (e.g. S3 checksums)
        if not data:
            break
        hasher.update(data)
        offset += len(data)
    return hasher.size == size and hasher.hexdigest() == digest
