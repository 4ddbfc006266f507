"""An updated regular file sent as a block delta (`ferry.mover.delta`): the destination
computes the signature of its current file where that file lives, this side reads the
source once (finding the matches, hashing the Ferry digest and counting progress in the
same read) and streams the encoded delta to the destination, which rebuilds the file under
a temporary name, checks the digest and renames it (`DeltaBasis`).

With `--delta auto`, `DeltaChoice` decides file by file whether the delta pays against
sending the file whole, by what the run measured (deltachoice.py).

A destination without a basis (it vanished, or is no longer a regular file) gets the
whole file. A basis that changes between its signature and the rebuild makes the attempt a
retryable SOURCE_CHANGED error: the retry takes a new signature (or, if the basis is gone,
sends the whole file); no attempt publishes a file whose digest is not the source's.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Iterator

from ferry.mover.backends.base import DeltaBasis, Entry, EntryType
from ferry.mover.engine.context import Context
from ferry.mover.engine.wholefile import copy_whole, open_source, with_retries
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import StreamHasher, file_digest
from ferry.mover.options import DELTA_MIN, Verify
from ferry.mover.plan import Action, Op

AHEAD = 8  # encoded pieces (a literal piece is at most 1 MiB) the source side may run ahead


class _Ahead:
    """Runs the source side (read, match, hash, encode) in a thread of its own, at most
    AHEAD pieces ahead of the basis side that consumes them (the rebuild, or the wire):
    the two overlap. NumPy, BLAKE3 and the file reads release the GIL. An error on the
    source side is raised where the pieces are consumed; `close` stops the source side."""

    _END = object()

    def __init__(self, produce: Iterator[bytes]) -> None:
        self._q: queue.Queue[object] = queue.Queue(maxsize=AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(produce,), name="ferry-delta", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)  # wakes to see `close`
                return True
            except queue.Full:
                continue
        return False

    def _run(self, produce: Iterator[bytes]) -> None:
        try:
            for piece in produce:
                if not self._put(piece):
                    return
            self._put(self._END)
        except BaseException as exc:
            self._put(exc)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def wanted(ctx: Context, a: Action) -> bool:
    """Whether `a` goes as a delta: an update of a regular file of at least DELTA_MIN by a
    regular file (or, with `--checksum`, one whose content may differ: CHECK), on a run
    that sends deltas to this destination (`Context.delta`)."""
    s, d = a.src, a.dst
    return (
        ctx.delta
        and a.op in (Op.UPDATE, Op.CHECK)
        and s is not None
        and d is not None
        and d.type == EntryType.FILE
        and d.size > 0
        and s.size >= DELTA_MIN
    )


def delta_file(ctx: Context, a: Action, s: Entry | None = None) -> None:
    """Send one updated file as a delta, with retries."""
    with_retries(ctx, a, s, send_delta)


def send_delta(ctx: Context, a: Action, s: Entry) -> None:
    """One attempt: signature there, diff here, rebuild there."""
    dst = ctx.dst
    assert isinstance(dst, DeltaBasis)  # Context.delta
    choice = ctx.delta_choice
    if choice is not None and not choice.pays(s.size, a.rel):
        copy_whole(ctx, a, s)
        return
    started = time.monotonic()
    basis = ctx.dst.stat(a.rel)
    if basis is None or basis.type != EntryType.FILE or basis.size == 0:
        copy_whole(ctx, a, s)
        return
    from ferry.mover import delta  # NumPy: loaded only when a delta runs

    if basis.size > delta.MAX_FILE_SIZE:  # 16 TiB: more blocks than a signature may hold
        copy_whole(ctx, a, s)
        return

    reader = open_source(ctx.src, a.read_rel or a.rel, s)
    try:
        if ctx.sparse and reader.data_ranges(s.size) is not None:
            copy_whole(ctx, a, s)  # a rebuild would write the holes out as data
            return
        sig = delta.decode_signature(
            dst.signature(a.rel, basis, None), delta.max_encoded_size(basis.size)
        )
        if ctx.xattrs:
            s = copy.copy(s)
            s.xattrs = reader.xattrs()
        progress, cancel = ctx.ledger.progress, ctx.cancel
        limiter = ctx.streamer.limiter
        hasher = StreamHasher()
        sent = [0]

        def observe(piece: bytes) -> None:
            if cancel.is_set():
                raise FerryError(ErrorKind.INTERRUPTED, "transfer interrupted")
            hasher.update(piece)
            progress.advance(len(piece))

        def final_digest() -> str:
            why = reader.changed()
            if why:
                raise FerryError(ErrorKind.SOURCE_CHANGED, why, a.rel)
            return hasher.hexdigest()

        def pieces() -> Iterator[bytes]:
            ops = delta.diff(sig, reader.read_at, s.size, observe)
            for chunk in delta.encode_ops(
                ops, block_size=sig.block_size, basis_size=sig.file_size, digest=final_digest
            ):
                if limiter:
                    limiter.take(len(chunk), cancel)
                sent[0] += len(chunk)
                yield chunk

        token = progress.begin(a.rel)
        ahead = _Ahead(pieces())
        try:
            reused = dst.apply_delta(a.rel, s, ahead, s.digest or "", ctx.options.preserve)
        except BaseException:
            ahead.close()
            progress.advance(-hasher.size)  # a retry reads these bytes again
            raise
        finally:
            ahead.close()
            progress.end(token)
    finally:
        reader.close()
    digest = hasher.hexdigest()
    if ctx.options.verify == Verify.FULL:
        now = ctx.dst.stat(a.rel)
        if now is None or file_digest(ctx.dst, a.rel, now) != digest:
            raise FerryError(
                ErrorKind.VERIFY_MISMATCH, "destination bytes do not match the source digest", a.rel
            )
    if choice is not None:
        choice.delta_done(s.size, time.monotonic() - started)
    ctx.ledger.committed(a, s, digest, transferred=sent[0], matched=reused)
