"""One transfer from start to finish: the engine's entry point for the CLI and `ferry run`."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from ferry.mover.backends import check_compress, open_backend
from ferry.mover.backends.base import Backend, DeltaBasis, Durability, EntryType
from ferry.mover.endpoints import Endpoint
from ferry.mover.engine.audit import AuditLog, protect_own
from ferry.mover.engine.dryrun import DryRun
from ferry.mover.engine.executor import Executor
from ferry.mover.engine.ledger import Ledger
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.options import Delta, Fsync, Mode, Options
from ferry.mover.plan import Action, Planner, check_roots
from ferry.mover.progress import Progress, Reporter, Sink
from ferry.mover.result import Summary
from ferry.mover.scan import PairLister
from ferry.mover.shard import BIG, path_shard
from ferry.mover.single import Opened, open_pair
from ferry.mover.space import SpaceNeed, check_space, fits_whole_source, room_share

log = logging.getLogger("ferry")


@contextlib.contextmanager
def _interruptible(cancel: threading.Event, summary: Summary) -> Iterator[None]:
    """SIGINT/SIGTERM stop the transfer cleanly: partial files stay for resume, temps go."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: object) -> None:
        if summary.fatal is None:
            summary.fatal = FerryError(
                ErrorKind.INTERRUPTED, f"interrupted by {signal.Signals(signum).name}"
            )
        cancel.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _prescan_shards(src: Backend, planner: Planner, options: Options) -> None:
    """Every shard walks the source once to agree on where the big files go."""
    assert planner.sharder is not None
    small = [0] * options.shard_count
    big: list[tuple[str, int]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        for e in src.list_dir(rel):
            child = f"{rel}/{e.name}" if rel else e.name
            if planner.excluded(child, e):
                continue
            if e.type == EntryType.DIR:
                stack.append(child)
            elif e.type == EntryType.FILE:
                if e.size >= BIG:
                    big.append((child, e.size))
                else:
                    small[path_shard(child, options.shard_count)] += e.size
    planner.sharder.balance(small, big)


def check_delta(options: Options, dst: Backend) -> None:
    """`--delta on` needs a destination that rebuilds files where they are stored; elsewhere
    the basis of every delta would have to be downloaded first."""
    if options.delta == Delta.ON and not isinstance(dst, DeltaBasis):
        raise FerryError(
            ErrorKind.USAGE,
            f"--delta on (spec.delta On): {dst.describe()} cannot rebuild files from a delta "
            "where they are stored (each basis would be downloaded first); use --delta auto "
            "or off",
        )


def run_transfer(
    src_ep: Endpoint,
    dst_ep: Endpoint,
    options: Options,
    sink: Sink | None = None,
    on_action: Callable[[Action], None] | None = None,
) -> Summary:
    """Copy or sync (or, with options.dry_run, only plan). Never raises for transfer errors:
    they are in the returned Summary, whose exit_code the CLI returns."""
    opened: list[Backend] = []

    def open_both() -> Opened:
        durability = Durability(
            fsync_each=options.fsync == Fsync.FILE, direct_writes=options.fsync != Fsync.NONE
        )
        check_compress(options.compress, src_ep, dst_ep)
        return open_pair(
            src_ep,
            dst_ep,
            lambda ep: open_backend(
                ep, accelerators=options.accelerators, compress=options.compress
            ),
            lambda ep: open_backend(ep, durability, options.accelerators, options.compress),
            opened,
            options,
        )

    try:
        return transfer_between(open_both, options, sink, on_action)
    finally:
        for b in opened:
            with contextlib.suppress(Exception):
                b.close()


def transfer_between(
    backends: Callable[[], tuple[Backend, Backend] | Opened],
    options: Options,
    sink: Sink | None = None,
    on_action: Callable[[Action], None] | None = None,
) -> Summary:
    """The transfer between two backends made by `backends()` (tests pass wrapped ones;
    run_transfer passes what `single.open_pair` found, a file source included)."""
    operation = options.mode.value if not options.dry_run else "plan"
    summary = Summary(operation=operation, dry_run=options.dry_run)
    if options.tuning is not None:
        chosen = dict(options.tuning)
        why = chosen.pop("from", {})
        summary.tuning = chosen
        log.info(
            "tuning: %s",
            ", ".join(f"{k} {v} ({why[k]})" if k in why else f"{k} {v}" for k, v in chosen.items()),
        )
    sink = sink or Sink()
    progress = Progress()
    cancel = threading.Event()
    started = time.monotonic()
    try:
        with _interruptible(cancel, summary), Reporter(progress, sink):
            got = backends()
            pair = got if isinstance(got, Opened) else Opened(*got)
            _run(pair, options, summary, progress, cancel, sink, on_action)
    except FerryError as err:
        summary.fatal = summary.fatal or err
    except Exception as exc:
        log.debug("transfer failed", exc_info=True)
        summary.fatal = summary.fatal or as_ferry_error(exc)
    summary.elapsed_seconds = time.monotonic() - started
    sink.finish(summary)
    return summary


def _run(
    pair: Opened,
    options: Options,
    summary: Summary,
    progress: Progress,
    cancel: threading.Event,
    sink: Sink,
    on_action: Callable[[Action], None] | None,
) -> None:
    src, dst, one = pair.src, pair.dst, pair.one
    options = protect_own(options, dst)  # an audit log written inside the destination
    check_delta(options, dst)
    dst_exists = check_roots(src, dst, options, summary.operation, one, pair.src_type)
    planner = Planner(src, dst, options, dst_exists=dst_exists, one=one)
    if (
        options.mode == Mode.SYNC
        and one is None
        and not options.allow_empty_source
        and not src.list_dir("")
    ):
        raise FerryError(
            ErrorKind.USAGE,
            "source is empty: refusing to sync, which would delete everything at the destination "
            "(pass --allow-empty-source if that is what you want)",
            src.describe(),
        )
    if planner.sharder is not None:
        _prescan_shards(src, planner, options)
    if planner.rename and one is None:
        planner.check_renames()  # a collision stops the run before anything is written
    space = dst.free_space() if options.preflight else None
    need = SpaceNeed(src, dst, options, space.block) if space is not None else None
    rename = planner.rename if planner.rename else None
    listers = [PairLister(src, dst, workers=4, rename=rename)]
    try:
        if options.dry_run:
            with sink.phase("plan") as attrs:
                audit = AuditLog(options.audit_log) if options.audit_log is not None else None
                ledger = Ledger(
                    summary, progress, options.error_policy, cancel, dry_run=True, audit=audit
                )
                try:
                    _dry_run(planner, listers[0], src, dst, ledger, on_action, need)
                finally:
                    ledger.close()
                attrs.update(files=progress.files_total, bytes=progress.bytes_total)
            if need is not None and space is not None and not cancel.is_set():
                check_space(need, space, options, dst.describe(), room_share(planner.sharder))
            return
        actions: Iterable[Action] = planner.walk(listers[0])
        if (
            need is not None
            and space is not None
            # A local source is scanned twice when it does not fit; a remote one would pay
            # the listing's round trips twice, so it goes straight to the exact count.
            and not (one is None and src.fileno_capable and fits_whole_source(src, space, options))
        ):
            progress.phase = "preflight"
            with sink.phase("preflight") as attrs:
                held = _count_need(actions, need, cancel)
                attrs.update(bytes=need.total)
            if cancel.is_set():
                return
            check_space(need, space, options, dst.describe(), room_share(planner.sharder))
            if held is not None:
                actions = held
            else:  # too many to hold: walk again, afresh, for the transfer
                sharder = planner.sharder
                planner = Planner(src, dst, options, dst_exists=dst_exists, one=one)
                planner.sharder = sharder
                listers.append(PairLister(src, dst, workers=4, rename=rename))
                actions = planner.walk(listers[-1])
        if not dst_exists:
            dst.prepare_destination()
        executor = Executor(src, dst, options, planner, progress, summary, cancel)
        executor.add_root(planner.root_pair)
        if planner.skipped_files and planner.on_skipped is not None:
            planner.on_skipped(planner.skipped_files, planner.skipped_bytes)  # the counting walk's
        try:
            progress.phase = "transfer"
            with sink.phase("transfer") as attrs:
                for action in actions:
                    if cancel.is_set():
                        break
                    if on_action:
                        on_action(action)
                    executor.handle(action)
                progress.scan_complete = True
                executor.drain()
                executor.finish_links()
                attrs.update(
                    files=summary.files_copied + summary.files_updated,
                    bytes=summary.bytes_transferred,
                )
            durable = options.fsync != Fsync.NONE
            if options.mode == Mode.SYNC and executor.deferred.has_deletes:
                if summary.error_count or cancel.is_set():
                    log.warning("not deleting anything at the destination: the copy had errors")
                elif _deletes_allowed(executor, options, summary, dst):
                    if durable and executor.wrote:
                        dst.flush()  # what was copied is on disk before anything is deleted
                    progress.phase = "delete"
                    with sink.phase("delete") as attrs:
                        executor.run_deletes()
                        attrs.update(files=summary.files_deleted)
            if not cancel.is_set():
                executor.finish_dirs()
                if durable and executor.wrote:  # deletes and directory times count too
                    dst.flush()
        finally:
            executor.close()
        if executor.fatal is not None and summary.fatal is None:
            summary.fatal = executor.fatal
    finally:
        summary.preserve_dropped = planner.dropped_flags()
        for lister in listers:
            lister.close()
        progress.scan_complete = True
        progress.phase = "done"


# Actions the space check's walk keeps for the transfer, which then need not list both trees
# again: ~0.55 KiB each (the action, its entries, its path; measured), so at most ~27 MiB.
# A larger plan is walked a second time.
PREFLIGHT_HOLD = 50_000


def _count_need(
    actions: Iterable[Action], need: SpaceNeed, cancel: threading.Event
) -> list[Action] | None:
    """Walk the whole plan adding up its need; return its actions while they are few enough
    to hold (None when there were more: the caller walks again)."""
    held: list[Action] | None = []
    for a in actions:
        if cancel.is_set():
            break
        need.add(a)
        if held is not None:
            held.append(a)
            if len(held) > PREFLIGHT_HOLD:
                held = None
    return held


def _deletes_allowed(executor: Executor, options: Options, summary: Summary, dst: Backend) -> bool:
    """--max-delete: when the deletes would remove more entries than allowed, none runs."""
    limit = options.max_delete
    if limit is None:
        return True
    try:
        n = executor.count_deletes(limit)
    except Exception as exc:
        summary.fatal = summary.fatal or as_ferry_error(exc, dst.describe())
        return False
    if n <= limit:
        return True
    summary.fatal = summary.fatal or FerryError(
        ErrorKind.DELETE_LIMIT,
        f"sync would delete at least {n} entries, more than --max-delete / maxDelete "
        f"{limit} allows: nothing was deleted; the copies are done. Check that the source "
        "is what you meant, or raise the limit",
        dst.describe(),
    )
    return False


def _dry_run(
    planner: Planner,
    lister: PairLister,
    src: Backend,
    dst: Backend,
    ledger: Ledger,
    on_action: Callable[[Action], None] | None,
    need: SpaceNeed | None = None,
) -> None:
    """Book the plan in `ledger` as a copy would, and refuse a sync past --max-delete."""
    dry = DryRun(src, dst, planner.o, ledger)
    planner.on_skipped = ledger.skipped_bulk
    for a in planner.walk(lister):
        resolved = dry.handle(a)
        if need is not None:
            need.add(resolved)
        if on_action:
            on_action(resolved)
    limit = planner.o.max_delete
    if limit is not None and dry.deletes > limit:
        raise FerryError(
            ErrorKind.DELETE_LIMIT,
            f"sync would delete {dry.deletes} entries, more than --max-delete / maxDelete "
            f"{limit}: it would delete nothing and stop after the copies",
            dst.describe(),
        )
