"""The executor: each action of a plan goes to the module that carries it out.

Small files go in batches (batches.py), large ones in parallel chunks (chunks.py), updated
ones as block deltas where the run sends them (deltafile.py), the rest whole (wholefile.py); directories, metadata and symlinks are done here, inline, on
the planner's thread. Hard links, deletes, type replacements and directory metadata wait
until every copy has finished (deferred.py); deletes run only if nothing failed. The
planner blocks when the task queue is full (tasks.py): that is the bound on memory.

The executor never changes the actions it runs: per-run state lives in its own parts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ferry.mover.backends.base import Backend, DeltaBasis, Entry, EntryType, ServerSideCopy
from ferry.mover.bwtable import BwSchedule
from ferry.mover.engine import chunks, deltafile, wholefile
from ferry.mover.engine.audit import AuditLog
from ferry.mover.engine.batches import SMALL, Batcher
from ferry.mover.engine.context import Context
from ferry.mover.engine.deferred import Deferred
from ferry.mover.engine.deltachoice import DeltaChoice
from ferry.mover.engine.ledger import Ledger, Manifest
from ferry.mover.engine.stream import RateLimiter, Streamer
from ferry.mover.engine.tasks import Retry, TaskQueue
from ferry.mover.errors import FerryError
from ferry.mover.options import Delta, Options, Verify
from ferry.mover.plan import Action, Op, Planner
from ferry.mover.progress import Progress
from ferry.mover.result import Summary
from ferry.mover.tuning import worker_bytes


def sends_deltas(options: Options, dst: Backend) -> bool:
    """Whether updated files may go to `dst` as deltas: `--delta on` (transfer.py refused
    it where `dst` is no DeltaBasis), or `auto` where the destination says a delta may pay
    (then `DeltaChoice` decides file by file)."""
    if not isinstance(dst, DeltaBasis):
        return False
    return options.delta == Delta.ON or (options.delta == Delta.AUTO and dst.limits.delta_pays)


log = logging.getLogger("ferry")


def workers_for(options: Options, dst: Backend) -> int:
    """Workers to run: options.transfers, no more than options.max_in_flight_bytes holds
    (each worker's piece, plus the chunk a writer that buffers chunks keeps: S3's parts)."""
    limits = dst.limits
    held = (options.chunk_size or limits.default_chunk_size) if limits.default_chunk_size else 0
    each = worker_bytes(options.buffer_size, held)
    workers = max(1, min(options.transfers, options.max_in_flight_bytes // each))
    if workers < options.transfers:
        log.info(
            "running %d workers, not %d: %d bytes each fit the in-flight bound of %d bytes",
            workers,
            options.transfers,
            each,
            options.max_in_flight_bytes,
        )
    return workers


class Executor:
    def __init__(
        self,
        src: Backend,
        dst: Backend,
        options: Options,
        planner: Planner,
        progress: Progress,
        summary: Summary,
        cancel: threading.Event,
    ) -> None:
        manifest = Manifest(options.manifest) if options.manifest else None
        audit = AuditLog(options.audit_log) if options.audit_log is not None else None
        self.ledger = ledger = Ledger(
            summary, progress, options.error_policy, cancel, manifest, audit=audit
        )
        table = options.bwtable
        bw = BwSchedule(table) if table is not None else None  # one clock for both users
        limiter = RateLimiter(bw) if bw is not None else None
        hashing = options.verify != Verify.NONE
        delta = sends_deltas(options, dst)
        auto_delta = delta and options.delta == Delta.AUTO
        self.ctx = Context(
            src=src,
            dst=dst,
            options=options,
            cancel=cancel,
            ledger=ledger,
            tasks=TaskQueue(workers_for(options, dst), cancel, ledger.stop),
            retry=Retry(options.retries, options.retry_base_delay, cancel, ledger.retrying),
            streamer=Streamer(progress, cancel, hashing, limiter, options.buffer_size),
            meta_differs=planner.meta_differs,
            hashing=hashing,
            sparse=options.preserve.sparse and dst.holds.sparse,
            xattrs=options.preserve.xattrs and dst.holds.xattrs,
            server_copy=isinstance(dst, ServerSideCopy) and dst.same_service(src),
            delta=delta,
            delta_choice=DeltaChoice(dst, bw or 0) if auto_delta else None,
            direct_max=wholefile.direct_max_for(options, src, dst),
        )
        self.batches = Batcher(self.ctx)
        self.deferred = Deferred(self.ctx)
        planner.on_skipped = ledger.skipped_bulk

    @property
    def fatal(self) -> FerryError | None:
        return self.ledger.fatal

    @property
    def wrote(self) -> bool:
        return self.ledger.wrote

    def handle(self, a: Action) -> None:
        """Dispatch one action. Directory and metadata work happens here, inline; a failure
        of it is a failure of that entry, handled by the error policy like any other."""
        try:
            self._handle(a)
        except Exception as exc:
            self.ledger.fail(a.rel, exc, counts_file=False)

    def _handle(self, a: Action) -> None:
        ctx, op = self.ctx, a.op
        if op in (Op.COPY, Op.UPDATE):
            s = a.src
            assert s is not None
            ctx.ledger.planned(1, s.size)
            if ctx.server_copy:
                ctx.tasks.submit(wholefile.server_copy, ctx, a)
            elif deltafile.wanted(ctx, a):
                ctx.tasks.submit(deltafile.delta_file, ctx, a)
            elif s.size < SMALL:
                self.batches.add(a)
            else:
                chunk = chunks.chunk_size_for(ctx.options, ctx.src, ctx.dst, s.size)
                if s.size < 2 * chunk or not ctx.dst.limits.chunk_writer:
                    ctx.tasks.submit(wholefile.whole_file, ctx, a)
                else:
                    chunks.start(ctx, a, chunk)
        elif op == Op.SKIP:
            self._skipped(a)
        elif op == Op.MKDIR:
            assert a.src is not None
            ctx.dst.mkdir(a.rel)
            ctx.ledger.dir_created(a.rel)
            self.deferred.dirs.append((a.rel, a.src, None))
        elif op == Op.META:
            assert a.src is not None
            self._skipped(a)
            ctx.dst.set_meta(a.rel, a.src, ctx.options.preserve)
            ctx.ledger.meta_written = True
        elif op == Op.CHECK:
            assert a.src is not None
            ctx.ledger.planned(1, a.src.size)
            send = deltafile.delta_file if deltafile.wanted(ctx, a) else None
            ctx.tasks.submit(wholefile.check, ctx, a, send)
        elif op == Op.SYMLINK:
            wholefile.make_symlink(ctx, a)
        elif op == Op.HARDLINK:
            self.deferred.hardlinks.append(a)
        elif op == Op.DELETE:
            self.deferred.deletes.append(a)
        elif op == Op.REPLACE:
            wholefile.replace(ctx, a, self.deferred.replaces)
        elif op == Op.ERROR:
            assert a.error is not None
            ctx.ledger.fail(a.rel, a.error, counts_file=False)

    def add_root(self, pair: Callable[[], tuple[Entry, Entry | None] | None]) -> None:
        """The roots' (source, destination) from `pair()`, set last like any directory's
        metadata: the destination root's mode, times, owner and ACLs are the source's."""
        try:
            got = pair()
        except Exception as exc:
            self.ledger.fail("", exc, counts_file=False)
            return
        if got is not None:
            self.deferred.dirs.insert(0, ("", *got))

    def _skipped(self, a: Action) -> None:
        assert a.src is not None
        if a.src.type == EntryType.DIR:
            self.deferred.dirs.append((a.rel, a.src, a.dst))
        else:
            self.ctx.ledger.skipped(a)

    # ---- the end of the run --------------------------------------------------------------------

    def drain(self) -> None:
        """Send the last batch and wait until every queued task is done."""
        self.batches.flush()
        self.ctx.tasks.wait_idle()

    def finish_links(self) -> None:
        self.deferred.finish_links()

    def run_deletes(self) -> None:
        self.deferred.run_deletes()
        self.drain()

    def count_deletes(self, limit: int) -> int:
        return self.deferred.count_deletes(limit)

    def finish_dirs(self) -> None:
        self.deferred.finish_dirs()

    def close(self) -> None:
        self.batches.close()
        self.ctx.tasks.close()
        self.ledger.close()
