"""Small files in batches: one task per few dozen files, so per-file overhead is a handful
of system calls, not a thread hand-off.

A remote backend that takes batches (`put_small`, `get_small`) gets a whole one in a
single exchange, and a file that fails there goes again on its own. Between local trees,
past a threshold, batches go to forked worker processes (procs.py).
"""

from __future__ import annotations

import logging
import os

from ferry.mover.backends.base import Backend, Entry, GetSmall, PutSmall, SmallFile
from ferry.mover.engine.context import Context
from ferry.mover.engine.procs import VANISHED, Outcome, SmallFilePool, outcome_error
from ferry.mover.engine.wholefile import (
    copy_whole,
    open_source,
    read_whole,
    refresh,
    whole_file,
)
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import digest_bytes
from ferry.mover.options import Preserve
from ferry.mover.plan import Action

log = logging.getLogger("ferry")

SMALL = 256 * 1024  # files below this size travel in batches
BATCH_FILES = 128
BATCH_BYTES = 4 << 20
PROCESS_THRESHOLD = 512  # small local files seen before worker processes are worth forking


class Batcher:
    """Collects small files into batches (one directory per batch) and sends each off."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.batch: list[Action] = []
        self.batch_bytes = 0
        self.batch_dir = ""
        self.procs: SmallFilePool | None = None
        self._procs_wanted = (
            ctx.src.fileno_capable
            and ctx.dst.fileno_capable
            and ctx.direct_max > 0
            and ctx.options.transfers > 1
            and (os.cpu_count() or 1) > 1
        )
        self._small_seen = 0

    def add(self, a: Action) -> None:
        assert a.src is not None
        parent = a.rel.rpartition("/")[0]
        if parent != self.batch_dir:
            # One directory per batch: concurrent batches then create files in
            # different directories and do not queue on one directory's lock.
            self.flush()
            self.batch_dir = parent
        self.batch.append(a)
        self.batch_bytes += a.src.size
        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        ctx = self.ctx
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        if self._procs_wanted:
            self._small_seen += len(batch)
            if self.procs is None and self._small_seen >= PROCESS_THRESHOLD:
                workers = min(ctx.options.transfers, os.cpu_count() or 1)
                log.info("copying small files in %d worker processes", workers)
                self.procs = SmallFilePool(
                    ctx.src,
                    ctx.dst,
                    workers,
                    ctx.hashing,
                    ctx.options.preserve,
                    ctx.xattrs,
                )
        direct = [a for a in batch if a.src is not None and a.src.size <= ctx.direct_max]
        if self.procs is None or not direct:
            ctx.tasks.submit(batch_task, ctx, batch)
            return
        rest = [a for a in batch if a.src is not None and a.src.size > ctx.direct_max]
        if rest:
            ctx.tasks.submit(batch_task, ctx, rest)
        if not ctx.tasks.hold():
            return
        items = [(a.rel, a.read_rel or a.rel, a.src) for a in direct if a.src is not None]
        self.procs.submit(
            items,
            lambda outcomes: self._procs_done(direct, outcomes),
            lambda exc: self._procs_done(
                direct, [(None, "IO_ERROR", f"worker failed: {exc}")] * len(direct)
            ),
        )

    def _procs_done(self, batch: list[Action], outcomes: list[Outcome]) -> None:
        """Runs on the pool's result thread: book each file, hand retryable failures to a thread."""
        ctx = self.ctx
        try:
            for a, (digest, kind, message) in zip(batch, outcomes, strict=True):
                assert a.src is not None
                if kind is None:
                    ctx.ledger.committed(a, a.src, digest, counted=False)
                elif kind == VANISHED:
                    log.warning("%s: vanished from the source during the transfer; skipped", a.rel)
                elif ErrorKind[kind].retryable and ctx.options.retries and not ctx.cancel.is_set():
                    ctx.tasks.submit_now(whole_file, ctx, a)
                else:
                    ctx.ledger.fail(a.rel, outcome_error(a.rel, kind, message or kind))
        finally:
            ctx.tasks.done(release_slot=True)

    def close(self) -> None:
        if self.procs is not None:
            self.procs.close(cancel=self.ctx.cancel.is_set())


def batch_task(ctx: Context, batch: list[Action]) -> None:
    if ctx.direct_max > 0 and not ctx.xattrs:
        if isinstance(ctx.dst, PutSmall):
            batch = put_batch(ctx, batch)
        elif isinstance(ctx.src, GetSmall):
            batch = get_batch(ctx, batch)
    for a in batch:
        if ctx.cancel.is_set():
            return
        whole_file(ctx, a)


def read_small(src: Backend, rel: str, read_rel: str, entry: Entry) -> bytes:
    """A whole small file in one read, checked against changes while it was read, for a
    batch (`Backend.put_small`)."""
    reader = open_source(src, read_rel, entry)
    try:
        data = bytes(read_whole(reader, entry, rel))
        why = reader.changed()
        if why:
            raise FerryError(ErrorKind.SOURCE_CHANGED, why, rel)
    finally:
        reader.close()
    return data


def write_small(
    dst: Backend, rel: str, entry: Entry, data: bytes, hashing: bool, preserve: Preserve
) -> str | None:
    """Write a small file already read (`Backend.get_small`); return its digest."""
    digest = digest_bytes(data) if hashing else None
    writer = dst.open_write(rel, entry)
    try:
        if data:
            writer.write_at(0, data)
        writer.commit(entry, digest, preserve)
    except BaseException:
        writer.abort()
        raise
    return digest


def fetch(ctx: Context, batch: list[Action]) -> tuple[list[tuple[Action, bytes]], list[Action]]:
    """The batch's small files read whole: in one exchange where the source takes batches
    (a few round trips for all of them), else one by one. Returns (action, bytes) pairs
    and the actions that go the one-at-a-time way (which reads again, retries and
    reports)."""
    small = [a for a in batch if a.src is not None and a.src.size <= ctx.direct_max]
    alone = [a for a in batch if a.src is not None and a.src.size > ctx.direct_max]
    if ctx.cancel.is_set():
        return [], batch
    got: list[bytes | None] = []
    if isinstance(ctx.src, GetSmall):
        try:
            got = ctx.src.get_small([(a.read_rel or a.rel, a.src) for a in small if a.src])
        except Exception as exc:
            log.debug("batch of %d files failed: %s", len(small), exc)
            return [], batch
    else:
        for a in small:
            assert a.src is not None
            try:
                got.append(read_small(ctx.src, a.rel, a.read_rel or a.rel, a.src))
            except Exception:
                got.append(None)
    pairs = []
    for a, data in zip(small, got, strict=True):
        if data is None:
            alone.append(a)
        else:
            pairs.append((a, data))
    return pairs, alone


def put_batch(ctx: Context, batch: list[Action]) -> list[Action]:
    """Hand the batch's files to the destination at once; return those that go the
    one-at-a-time way."""
    pairs, alone = fetch(ctx, batch)
    files = [
        SmallFile(a.rel, a.src, data, digest_bytes(data) if ctx.hashing else None)
        for a, data in pairs
        if a.src is not None
    ]
    if not files or ctx.cancel.is_set():
        return alone + [a for a, _ in pairs]
    assert isinstance(ctx.dst, PutSmall)  # batch_task sends batches only there
    try:
        outcomes = ctx.dst.put_small(files, ctx.options.preserve)
    except Exception as exc:
        log.debug("batch of %d files failed: %s", len(files), exc)
        return alone + [a for a, _ in pairs]
    for (a, _), f, err in zip(pairs, files, outcomes, strict=True):
        if err is None:
            assert a.src is not None
            ctx.ledger.committed(a, a.src, f.digest, counted=False)
        else:
            log.debug("%s: batched write failed: %s", a.rel, err)
            alone.append(a)
    return alone


def get_batch(ctx: Context, batch: list[Action]) -> list[Action]:
    """Read the batch's files from the source at once and write each; return those that
    go the one-at-a-time way."""
    pairs, alone = fetch(ctx, batch)
    for a, data in pairs:
        if ctx.cancel.is_set():
            alone.append(a)
            continue
        current = [a.src]

        def attempt(
            n: int, a: Action = a, data: bytes = data, current: list[Entry | None] = current
        ) -> None:
            entry = current[0]
            assert entry is not None
            if n:  # a failed write: the one-at-a-time way, from a fresh read
                entry = current[0] = refresh(ctx, a, entry)
                copy_whole(ctx, a, entry)
                return
            digest = write_small(ctx.dst, a.rel, entry, data, ctx.hashing, ctx.options.preserve)
            ctx.ledger.committed(a, entry, digest, counted=False)

        ctx.retry.run(a.rel, attempt, ctx.ledger.fail)
    return alone
