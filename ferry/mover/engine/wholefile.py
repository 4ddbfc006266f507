"""One file as a whole: copied in one read and write or streamed, copied by the service
itself, compared by digest (`--compare checksum`), a symlink, metadata only, or a
directory in the way of a file.

Nothing here changes the Action it is given: a source entry that is read again or
completed before the write is a new Entry, passed along.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

from ferry.mover.backends.base import (
    Backend,
    Entry,
    EntryType,
    LazyMeta,
    Reader,
    ServerSideCopy,
    Symlinks,
)
from ferry.mover.engine.commit import commit
from ferry.mover.engine.context import Context
from ferry.mover.engine.tasks import Vanished
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import BLOCK_SIZE, digest_bytes, digest_from_blocks, file_digest
from ferry.mover.options import Mode, Options, Preserve, Verify
from ferry.mover.plan import Action

log = logging.getLogger("ferry")

PIECE = BLOCK_SIZE  # files up to this size are read and written in one call...
DIRECT_LOCAL = 64 * 1024  # ...or this size between local files (larger ones: kernel copy)


def direct_max_for(options: Options, src: Backend, dst: Backend) -> int:
    """Files up to this size go in one read and one write (-1: none; a rate limit or
    `--verify full` needs every byte to go through the stream)."""
    if options.bwtable is not None or options.verify == Verify.FULL:
        return -1
    return DIRECT_LOCAL if (src.fileno_capable and dst.fileno_capable) else PIECE


def open_source(src: Backend, rel: str, entry: Entry) -> Reader:
    try:
        return src.open_read(rel, entry)
    except FerryError as err:
        if err.kind == ErrorKind.SOURCE_NOT_FOUND:
            raise Vanished() from err
        raise


def read_whole(reader: Reader, entry: Entry, rel: str) -> bytes | memoryview:
    data = reader.read_at(0, entry.size) if entry.size else b""
    if len(data) != entry.size:
        raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while copying", rel)
    return data


def copy_small(
    src: Backend,
    dst: Backend,
    rel: str,
    read_rel: str,
    entry: Entry,
    hashing: bool,
    preserve: Preserve,
    xattrs: bool,
) -> str | None:
    """Copy one file in a single read and write; return its digest (None when not hashing).
    Takes no Context: the worker processes (procs.py) call it too."""
    reader = open_source(src, read_rel, entry)
    try:
        writer = dst.open_write(rel, entry)
        try:
            data = read_whole(reader, entry, rel)
            digest = digest_bytes(data) if hashing else None
            if data:
                writer.write_at(0, data)
            why = reader.changed()
            if why:
                raise FerryError(ErrorKind.SOURCE_CHANGED, why, rel)
            if xattrs:
                attrs = reader.xattrs()
                if attrs:
                    writer.set_xattrs(attrs)
            writer.commit(entry, digest, preserve)
            return digest
        except BaseException:
            writer.abort()
            raise
    finally:
        reader.close()


def refresh(ctx: Context, a: Action, s: Entry) -> Entry:
    """The source file as it is now, for another attempt (`s`: as the last one saw it)."""
    fresh = ctx.src.stat(a.read_rel or a.rel)
    if fresh is None or fresh.type != EntryType.FILE:
        raise Vanished()
    fresh.name, fresh.nlink, fresh.digest = s.name, s.nlink, None
    fresh.acls = s.acls  # as the planner read them (a stat reads none)
    ctx.ledger.planned(0, fresh.size - s.size)
    return fresh


def meta_first(ctx: Context, a: Action, s: Entry) -> Entry:
    """Complete the source entry before the write starts, for destinations that fix
    metadata then (S3 multipart; later it costs a server-side copy of the object): a
    lazy listing's metadata costs a HEAD; a local file's digest, one more read from the
    page cache (rclone does the same for its MD5). Returns the completed copy of `s`."""
    above = ctx.dst.limits.digest_first_above
    if not above or s.size <= above or s.digest:
        return s
    rel = a.read_rel or a.rel
    if isinstance(ctx.src, LazyMeta):
        s = copy.copy(s)
        ctx.src.fill_meta(rel.rpartition("/")[0], [s])
    elif ctx.hashing and ctx.src.fileno_capable:
        s = copy.copy(s)
        s.digest = file_digest(ctx.src, rel, s)
    return s


def with_retries(
    ctx: Context, a: Action, s: Entry | None, once: Callable[[Context, Action, Entry], None]
) -> None:
    """Run `once` with retries; each retry first reads the source entry again (it may have
    changed, or vanished). `s`: the source entry, when not `a.src`."""
    current = [s or a.src]

    def attempt(n: int) -> None:
        entry = current[0]
        assert entry is not None
        if n:
            entry = current[0] = refresh(ctx, a, entry)
        once(ctx, a, entry)

    ctx.retry.run(a.rel, attempt, ctx.ledger.fail)


def whole_file(ctx: Context, a: Action, s: Entry | None = None) -> None:
    """Copy one file whole, with retries."""
    with_retries(ctx, a, s, copy_whole)


def copy_whole(ctx: Context, a: Action, s: Entry) -> None:
    """One attempt: a single read and write, or a stream of pieces."""
    if s.size <= ctx.direct_max:
        digest = copy_small(
            ctx.src,
            ctx.dst,
            a.rel,
            a.read_rel or a.rel,
            s,
            ctx.hashing,
            ctx.options.preserve,
            ctx.xattrs,
        )
        ctx.ledger.committed(a, s, digest, counted=False)
        return
    s = meta_first(ctx, a, s)
    reader = open_source(ctx.src, a.read_rel or a.rel, s)
    progress = ctx.ledger.progress
    try:
        writer = ctx.dst.open_write(a.rel, s)
        try:
            token = progress.begin(a.rel)
            try:
                ranges = reader.data_ranges(s.size) if ctx.sparse else None
                if ranges is not None:
                    writer.set_size(s.size)
                blocks = ctx.streamer.copy(reader, writer, 0, s.size, ranges, fresh=True)
            finally:
                progress.end(token)
            digest = digest_from_blocks(s.size, blocks) if blocks is not None else None
            try:
                commit(ctx, a, s, reader, writer, digest)
            except BaseException:
                progress.advance(-s.size)  # streamed, not committed: a retry recounts
                raise
        except BaseException:
            writer.abort()
            raise
    finally:
        reader.close()


def server_copy(ctx: Context, a: Action, s: Entry | None = None) -> None:
    """Copy within one service: no bytes through us, and no digest of ours (the service
    checks its copy; a stored source digest is carried over)."""
    with_retries(ctx, a, s, copy_server_side)


def copy_server_side(ctx: Context, a: Action, s: Entry) -> None:
    """One attempt of `server_copy`."""
    assert isinstance(ctx.dst, ServerSideCopy)  # ctx.server_copy
    ctx.dst.copy_from(ctx.src, a.read_rel or a.rel, s, a.rel, ctx.options.preserve)
    ctx.ledger.committed(a, s, None, counted=False)


def same_content(src: Backend, dst: Backend, a: Action) -> bool:
    """`--compare checksum` for a file of the same size at both ends: equal digests."""
    assert a.src is not None and a.dst is not None
    return file_digest(src, a.read_rel or a.rel, a.src) == file_digest(dst, a.rel, a.dst)


def check(ctx: Context, a: Action, send: Callable[[Context, Action], None] | None = None) -> None:
    """A CHECK action's task: compare digests, then skip (fixing metadata) or copy (with
    `send` when given: deltafile's, for a destination that takes deltas)."""
    s, d = a.src, a.dst
    assert s is not None and d is not None
    try:
        same = same_content(ctx.src, ctx.dst, a)
    except Exception as exc:
        ctx.ledger.fail(a.rel, exc)
        return
    if same:
        ctx.ledger.planned(-1, -s.size)
        ctx.ledger.skipped(a)
        if ctx.meta_differs(s, d):
            ctx.dst.set_meta(a.rel, s, ctx.options.preserve)
            ctx.ledger.meta_written = True
        return
    (send or (server_copy if ctx.server_copy else whole_file))(ctx, a)


def make_symlink(ctx: Context, a: Action) -> None:
    assert a.src is not None and a.src.target is not None
    try:
        if not isinstance(ctx.dst, Symlinks):
            raise FerryError(ErrorKind.USAGE, f"{ctx.dst.describe()} cannot hold symlinks", a.rel)
        ctx.dst.symlink(a.rel, a.src.target)
        ctx.dst.set_meta(a.rel, a.src, ctx.options.preserve)
        ctx.ledger.link_created(a.rel)
    except Exception as exc:
        ctx.ledger.fail(a.rel, exc)


def replace(ctx: Context, a: Action, later: list[Action]) -> None:
    """The destination has another type where the source has `a`: a file or link in the
    way goes now (part of the update); a directory only in a sync, after the copies
    (appended to `later`)."""
    assert a.dst is not None and a.src is not None
    if a.dst.type != EntryType.DIR:
        ctx.dst.remove(a.rel, a.dst)
        return
    refused = replace_refused(ctx.options, a)
    if refused is not None:
        ctx.ledger.fail(a.rel, refused)
        return
    later.append(a)


def replace_refused(options: Options, a: Action) -> FerryError | None:
    """Why a directory at the destination may not give way to the file `a` (None: it
    may): only a sync removes a directory."""
    if options.mode == Mode.SYNC:
        return None
    return FerryError(
        ErrorKind.USAGE,
        "destination has a directory where the source has a file; use sync to replace it",
        a.rel,
    )
