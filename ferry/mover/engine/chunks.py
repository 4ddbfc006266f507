"""Large files in parallel chunks, resumable.

A file is cut into chunks written at their offsets by several workers at once; each
chunk's block digests go into the resume journal, and the last chunk to finish
assembles the file digest and commits. A partial file written for the same source
version, cut and hashed the same way, is resumed where it stopped.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from ferry.mover.backends.base import Backend, Entry, Reader, Resumable, Writer
from ferry.mover.engine.commit import commit
from ferry.mover.engine.context import Context
from ferry.mover.engine.tasks import Vanished
from ferry.mover.engine.wholefile import meta_first, open_source, whole_file
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.integrity import BLOCK_SIZE, digest_from_blocks
from ferry.mover.options import DEFAULT_CHUNK_SIZE, Options, Verify
from ferry.mover.plan import Action

log = logging.getLogger("ferry")

LONG_READ_MAX = 1 << 30  # chunk cap for read_streams sources: resume granularity


def chunk_size_for(o: Options, src: Backend, dst: Backend, size: int) -> int:
    """The chunk size a file of `size` bytes is cut into between these two backends."""
    limits = dst.limits
    chunk = o.chunk_size or limits.default_chunk_size or DEFAULT_CHUNK_SIZE
    chunk = max(chunk, limits.min_chunk_size)
    streams = src.limits.read_streams
    if streams:
        chunk = max(chunk, min(-(-size // streams), LONG_READ_MAX))
    if limits.max_chunks:
        chunk = max(chunk, -(-size // limits.max_chunks))
    if limits.max_chunk_size:
        chunk = min(chunk, limits.max_chunk_size)
    return -(-chunk // BLOCK_SIZE) * BLOCK_SIZE


def resume_key_for(s: Entry, chunk: int, verify: Verify) -> str:
    """What a partial must have been written for to be resumed: this source version, cut
    and hashed the same way."""
    return f"v1:{s.size}:{s.mtime_ns}:{chunk}:{verify.value}"


@dataclass(slots=True, eq=False)
class BigFile:
    """Shared state of one file copied as parallel chunks."""

    action: Action
    src: Entry  # the source entry being copied (completed before the write: meta_first)
    reader: Reader
    writer: Writer
    chunk: int
    digests: list[bytes | None]  # per chunk; None until written
    ranges: list[tuple[int, int]] | None  # data ranges when holes are kept
    fresh: bool = True  # no resumed partial: holes need not be written
    pending: int = 0  # chunks not finished yet; the last one to finish commits
    resumed: int = 0
    error: FerryError | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def halted(self) -> bool:
        return self.error is not None


def start(ctx: Context, a: Action, chunk: int) -> None:
    """Open the file, take what a partial already holds, and queue the missing chunks."""
    assert a.src is not None
    try:
        s = meta_first(ctx, a, a.src)
        reader = open_source(ctx.src, a.read_rel or a.rel, s)
    except Vanished:
        log.warning("%s: vanished from the source during the transfer; skipped", a.rel)
        return
    except Exception as exc:
        ctx.ledger.fail(a.rel, exc)
        return
    nchunks = -(-s.size // chunk)
    try:
        key = (
            resume_key_for(s, chunk, ctx.options.verify) if isinstance(ctx.dst, Resumable) else None
        )
        writer = ctx.dst.open_write(a.rel, s, resume_key=key)
        done = writer.done_chunks(chunk) if key else {}
    except Exception as exc:
        reader.close()
        ctx.ledger.fail(a.rel, exc)
        return
    ranges = reader.data_ranges(s.size) if ctx.sparse else None
    big = BigFile(a, s, reader, writer, chunk, [None] * nchunks, ranges, fresh=not done)
    if big.fresh:
        writer.set_size(s.size)
    resumed = 0
    for index, digests in done.items():
        if index < nchunks:
            big.digests[index] = digests
            resumed += min(chunk, s.size - index * chunk)
    if resumed:
        log.info("%s: resuming, %d of %d bytes already at the destination", a.rel, resumed, s.size)
        big.resumed = resumed
        ctx.ledger.resumed(resumed)
    todo = [i for i in range(nchunks) if big.digests[i] is None]
    big.pending = len(todo)
    if not todo:
        finish(ctx, big)
        return
    for n, i in enumerate(todo):
        if not ctx.tasks.submit(chunk_task, ctx, big, i):
            big.error = FerryError(ErrorKind.INTERRUPTED, "transfer interrupted", a.rel)
            with big.lock:
                big.pending -= len(todo) - n
                last = big.pending == 0
            if last:
                finish(ctx, big)
            break


def chunk_task(ctx: Context, big: BigFile, index: int) -> None:
    """Write one chunk, with retries of its own; the last chunk to end finishes the file."""
    size = big.src.size
    offset = index * big.chunk
    length = min(big.chunk, size - offset)
    retry = ctx.retry
    token = ctx.ledger.progress.begin(big.action.rel)
    try:
        for attempt in range(retry.retries + 1):
            try:
                digests = ctx.streamer.copy(
                    big.reader, big.writer, offset, length, big.ranges, big.fresh, big.halted
                )
                if digests is not None:
                    big.writer.record_chunk(index, digests)
                big.digests[index] = digests or b""
                break
            except Exception as exc:
                err = as_ferry_error(exc, big.action.rel)
                if big.error is not None:
                    break
                if not err.kind.retryable or attempt == retry.retries or ctx.cancel.is_set():
                    big.error = err
                    break
                delay = retry.backoff(attempt)
                if retry.on_retry is not None:
                    retry.on_retry(big.action.rel, attempt, err)
                if ctx.cancel.wait(delay):
                    big.error = FerryError(ErrorKind.INTERRUPTED, "transfer interrupted")
                    break
    finally:
        ctx.ledger.progress.end(token)
        with big.lock:
            big.pending -= 1
            last = big.pending == 0
        if last:
            finish(ctx, big)


def finish(ctx: Context, big: BigFile) -> None:
    """After the last chunk: commit with the digest assembled from the chunks', or keep
    the partial for a resume (unless the disk is full)."""
    a, s = big.action, big.src
    try:
        if big.error is not None:
            # Keep the partial for a resume, unless it holds space a full disk needs back.
            full = ErrorKind.DESTINATION_FULL
            fatal = ctx.ledger.fatal
            keep = big.error.kind != full and (fatal is None or fatal.kind != full)
            big.writer.abort(keep_partial=keep)
            ctx.ledger.fail(a.rel, big.error)
            return
        digest = None
        if ctx.options.verify != Verify.NONE:
            digest = digest_from_blocks(s.size, b"".join(d or b"" for d in big.digests))
        try:
            commit(ctx, a, s, big.reader, big.writer, digest, big.resumed)
        except FerryError as err:
            big.writer.abort(keep_partial=False)
            ctx.ledger.progress.advance(-s.size)  # every chunk was counted, none committed
            if err.kind.retryable:
                big.reader.close()
                whole_file(ctx, a, s)  # the source changed: start over, sequentially, with retries
            else:
                ctx.ledger.fail(a.rel, err)
        except Exception as exc:
            big.writer.abort(keep_partial=True)
            ctx.ledger.fail(a.rel, exc)
    finally:
        big.reader.close()
