"""Parallel, chunked, bounded-memory execution of a plan.

Small files travel in batches (one task per few dozen files, so per-file
overhead is a handful of syscalls, not a thread hand-off); a remote backend
that takes batches (`put_small`, `get_small`) gets a whole one in a single
exchange, and a file that fails there goes again on its own. Large files are
cut into chunks written at their offsets by several workers at once; each
chunk's block digests go into the resume journal, and the last chunk to
finish assembles the file digest and commits. Bytes pass through user space
in 4 MiB pieces per worker (hashing inline, one read of the source), or not
at all when nothing needs hashing and both ends are local
(`copy_file_range`). The planner blocks when `transfers * 2` tasks are
queued: that bound, times the piece size, is the bound on memory in flight.

Deletes, hard links and replacements of directories wait until every copy
has finished; deletes run only if nothing failed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from ferry.mover.backends.base import (
    Backend,
    Entry,
    EntryType,
    GetSmall,
    Hardlinks,
    LazyMeta,
    PutSmall,
    Reader,
    Resumable,
    ServerSideCopy,
    SmallFile,
    Symlinks,
    Writer,
    check_name,
    thread_buffer,
)
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.integrity import BLOCK_SIZE, StreamHasher, digest_bytes, digest_from_blocks
from ferry.mover.options import DEFAULT_CHUNK_SIZE, Mode, Options, Verify
from ferry.mover.plan import Action, Op, Planner
from ferry.mover.progress import Progress
from ferry.mover.result import Summary
from ferry.mover.scan import list_tree
from ferry.mover.smallfiles import (
    VANISHED,
    Outcome,
    SmallFilePool,
    Vanished,
    copy_small,
    open_source,
    outcome_error,
    read_small,
    write_small,
)

log = logging.getLogger("ferry")

PIECE = BLOCK_SIZE  # files up to this size are read and written in one call...
DIRECT_LOCAL = 64 * 1024  # ...or this size between local files (larger ones: kernel copy)
PROCESS_THRESHOLD = 512  # small local files seen before worker processes are worth forking
LONG_READ_MAX = 1 << 30  # chunk cap for read_streams sources: resume granularity
# Larger ones stream through a per-worker buffer of this size. Each piece is read, hashed
# and then sent or written, three passes over it: 2 MiB stays in a core's L2 cache (2 MiB
# here) between them, 4 MiB did not (256 MiB SFTP upload -7%, SMB and local copies -3 to
# -5%, S3 unchanged; alternated runs).
STREAM_PIECE = 2 * BLOCK_SIZE
SMALL = 256 * 1024
BATCH_FILES = 128
BATCH_BYTES = 4 << 20
MAX_BACKOFF = 30.0
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}
# Kinds that make every further file fail too: stop at once whatever the error policy.
_STOP_ALL = {ErrorKind.DESTINATION_FULL, ErrorKind.AUTH_FAILED, ErrorKind.INTERRUPTED}


class RateLimiter:
    """A token bucket shared by all workers; `take` blocks until the bytes may pass."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = rate / 10  # at most a tenth of a second ahead of the limit
        self.tokens = 0.0
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int, cancel: threading.Event) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            cancel.wait(wait)


class Manifest:
    """JSON lines of path, size, mtime and digest for every file at the destination."""

    def __init__(self, path: str) -> None:
        self.f: IO[str] = open(path, "w", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        self.lock = threading.Lock()

    def add(self, rel: str, e: Entry, digest: str | None) -> None:
        line = json.dumps(
            {"path": rel, "size": e.size, "mtimeNs": e.mtime_ns, "digest": digest},
            ensure_ascii=False,
        )
        with self.lock:
            self.f.write(line + "\n")

    def close(self) -> None:
        self.f.close()


class BigFile:
    """Shared state of one file copied as parallel chunks."""

    def __init__(
        self, action: Action, reader: Reader, writer: Writer, chunk: int, nchunks: int
    ) -> None:
        self.action = action
        self.reader = reader
        self.writer = writer
        self.chunk = chunk
        self.digests: list[bytes | None] = [None] * nchunks
        self.pending = 0
        self.error: FerryError | None = None
        self.fresh = True
        self.resumed = 0
        self.lock = threading.Lock()


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
        self.src = src
        self.dst = dst
        self.o = options
        self.planner = planner
        self.progress = progress
        self.summary = summary
        self.cancel = cancel
        self.pool = ThreadPoolExecutor(options.transfers, thread_name_prefix="ferry-copy")
        self._slots = threading.Semaphore(options.transfers * 2)
        self._idle = threading.Condition()
        self._outstanding = 0
        self._lock = threading.Lock()
        self.batch: list[Action] = []
        self.batch_bytes = 0
        self.batch_dir = ""
        self.deletes: list[Action] = []
        self.replaces: list[Action] = []
        self.hardlinks: list[Action] = []
        self.dirs: list[tuple[str, Entry, Entry | None]] = []
        self.touched: set[str] = set()
        self._meta_written = False
        self.fatal: FerryError | None = None
        self.limiter = RateLimiter(options.bwlimit) if options.bwlimit else None
        self.manifest = Manifest(options.manifest) if options.manifest else None
        self.verify = options.verify
        self.kernel_copy = hasattr(os, "copy_file_range")
        self._tls = threading.local()
        self.sparse = options.preserve.sparse and dst.holds.sparse
        self.xattrs = options.preserve.xattrs and dst.holds.xattrs
        local_pair = src.fileno_capable and dst.fileno_capable
        # One read and one write per file up to this size (larger local ones: kernel copy).
        self.direct_max = (
            -1
            if (self.limiter or options.verify == Verify.FULL)
            else (DIRECT_LOCAL if local_pair else PIECE)
        )
        self.procs: SmallFilePool | None = None
        self._procs_wanted = (
            local_pair
            and self.direct_max > 0
            and options.transfers > 1
            and (os.cpu_count() or 1) > 1
        )
        self._small_seen = 0
        self.server_copy = isinstance(dst, ServerSideCopy) and dst.same_service(src)
        planner.on_skipped = self._skipped_bulk

    def _skipped_bulk(self, files: int, nbytes: int) -> None:
        self.summary.files_skipped += files
        self.summary.bytes_skipped += nbytes
        self.progress.skipped(files, nbytes)

    # ---- task plumbing -------------------------------------------------------------------------

    def _acquire_slot(self) -> bool:
        """Wait for room in the queue (backpressure). False if cancelled meanwhile."""
        while not self._slots.acquire(timeout=0.5):
            if self.cancel.is_set():
                return False
        self._task_started()
        return True

    def _task_started(self) -> None:
        with self._idle:
            self._outstanding += 1

    def _task_done(self, release_slot: bool) -> None:
        if release_slot:
            self._slots.release()
        with self._idle:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.notify_all()

    def _submit(self, fn: Callable[..., None], *args: object) -> bool:
        """Queue a task once there is a slot. False if cancelled meanwhile."""
        if not self._acquire_slot():
            return False
        self.pool.submit(self._run_task, fn, args)
        return True

    def _run_task(
        self, fn: Callable[..., None], args: tuple[object, ...], release_slot: bool = True
    ) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # a bug, not a file error: never lose it silently
            log.exception("internal error")
            self._stop(as_ferry_error(exc))
        finally:
            self._task_done(release_slot)

    def drain(self) -> None:
        self._flush_batch()
        with self._idle:
            while self._outstanding:
                self._idle.wait()

    def close(self) -> None:
        if self.procs is not None:
            self.procs.close(cancel=self.cancel.is_set())
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.manifest:
            self.manifest.close()

    def _stop(self, err: FerryError) -> None:
        with self._lock:
            if self.fatal is None:
                self.fatal = err
        self.cancel.set()

    def _fail(self, rel: str, err: FerryError, counts_file: bool = True) -> None:
        err = as_ferry_error(err, rel)
        with self._lock:
            if counts_file:
                self.summary.files_failed += 1
            self.summary.add_error(err)
        if err.kind == ErrorKind.INTERRUPTED and self.cancel.is_set():
            return
        log.error("%s", err)
        if self.o.error_policy.value == "abort" or err.kind in _STOP_ALL:
            self._stop(err)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise FerryError(ErrorKind.INTERRUPTED, "transfer interrupted")

    def _touch(self, rel: str) -> None:
        self.touched.add(rel.rpartition("/")[0])

    @property
    def wrote(self) -> bool:
        """Whether anything at the destination changed (a no-op run skips the flush)."""
        return bool(self.touched) or self._meta_written

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter, capped. `random` is imported on the first retry:
        most runs never retry, and it is ~1 ms of start-up."""
        import random

        return min(MAX_BACKOFF, self.o.retry_base_delay * 2**attempt) * random.uniform(0.5, 1.5)

    def _retrying(self, rel: str, attempt_fn: Callable[[int], None]) -> bool:
        """Run attempt_fn(attempt) with backoff and jitter on retryable errors. True on success."""
        for attempt in range(self.o.retries + 1):
            try:
                attempt_fn(attempt)
                return True
            except Vanished:
                log.warning("%s: vanished from the source during the transfer; skipped", rel)
                return True
            except Exception as exc:
                err = as_ferry_error(exc, rel)
                if not err.kind.retryable or attempt == self.o.retries or self.cancel.is_set():
                    self._fail(rel, err)
                    return False
                delay = self._backoff(attempt)
                log.warning("%s: %s; retrying in %.1fs", rel, err, delay)
                if self.cancel.wait(delay):
                    self._fail(rel, FerryError(ErrorKind.INTERRUPTED, "transfer interrupted", rel))
                    return False
        return False

    # ---- dispatch (planner thread) -------------------------------------------------------------

    def handle(self, a: Action) -> None:
        """Dispatch one action. Directory and metadata work happens here, inline; a failure
        of it is a failure of that entry, handled by the error policy like any other."""
        try:
            self._handle(a)
        except Exception as exc:
            self._fail(a.rel, as_ferry_error(exc, a.rel), counts_file=False)

    def _handle(self, a: Action) -> None:
        op = a.op
        if op in (Op.COPY, Op.UPDATE):
            assert a.src is not None
            self.progress.planned(1, a.src.size)
            if self.server_copy:
                self._submit(self._server_copy, a)
            elif a.src.size < SMALL:
                parent = a.rel.rpartition("/")[0]
                if parent != self.batch_dir:
                    # One directory per batch: concurrent batches then create files in
                    # different directories and do not queue on one directory's lock.
                    self._flush_batch()
                    self.batch_dir = parent
                self.batch.append(a)
                self.batch_bytes += a.src.size
                if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
                    self._flush_batch()
            else:
                self._start_file(a)
        elif op == Op.SKIP:
            self._skipped(a)
        elif op == Op.MKDIR:
            assert a.src is not None
            self.dst.mkdir(a.rel)
            self.summary.dirs_created += 1
            self._touch(a.rel)
            self.dirs.append((a.rel, a.src, None))
        elif op == Op.META:
            assert a.src is not None
            self._skipped(a)
            self.dst.set_meta(a.rel, a.src, self.o.preserve)
            self._meta_written = True
        elif op == Op.CHECK:
            assert a.src is not None
            self.progress.planned(1, a.src.size)
            self._submit(self._check_task, a)
        elif op == Op.SYMLINK:
            self._make_symlink(a)
        elif op == Op.HARDLINK:
            self.hardlinks.append(a)
        elif op == Op.DELETE:
            self.deletes.append(a)
        elif op == Op.REPLACE:
            self._replace(a)
        elif op == Op.ERROR:
            assert a.error is not None
            self._fail(a.rel, a.error, counts_file=False)

    def _skipped(self, a: Action) -> None:
        assert a.src is not None
        if a.src.type == EntryType.DIR:
            self.dirs.append((a.rel, a.src, a.dst))
            return
        self.summary.files_skipped += 1
        self.summary.bytes_skipped += a.src.size
        self.progress.skipped(1, a.src.size)
        if self.manifest and a.src.type == EntryType.FILE:
            self.manifest.add(
                a.rel, a.src, a.src.digest if a.dst and a.src.digest == a.dst.digest else None
            )

    def _make_symlink(self, a: Action) -> None:
        assert a.src is not None and a.src.target is not None
        try:
            if not isinstance(self.dst, Symlinks):
                raise FerryError(
                    ErrorKind.USAGE, f"{self.dst.describe()} cannot hold symlinks", a.rel
                )
            self.dst.symlink(a.rel, a.src.target)
            self.dst.set_meta(a.rel, a.src, self.o.preserve)
            self.summary.links_created += 1
            self._touch(a.rel)
        except Exception as exc:
            self._fail(a.rel, as_ferry_error(exc, a.rel))

    def _replace(self, a: Action) -> None:
        assert a.dst is not None and a.src is not None
        if a.dst.type != EntryType.DIR:
            # A file or link where the source has a directory: removing it is part of the update.
            self.dst.remove(a.rel, a.dst)
            return
        if self.o.mode != Mode.SYNC:
            self._fail(
                a.rel,
                FerryError(
                    ErrorKind.USAGE,
                    "destination has a directory where the source has a file; use sync to replace it",
                    a.rel,
                ),
            )
            return
        self.replaces.append(a)

    def _flush_batch(self) -> None:
        if not self.batch:
            return
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        if self._procs_wanted:
            self._small_seen += len(batch)
            if self.procs is None and self._small_seen >= PROCESS_THRESHOLD:
                workers = min(self.o.transfers, os.cpu_count() or 1)
                log.info("copying small files in %d worker processes", workers)
                self.procs = SmallFilePool(
                    self.src,
                    self.dst,
                    workers,
                    self.verify != Verify.NONE,
                    self.o.preserve,
                    self.xattrs,
                )
        direct = [a for a in batch if a.src is not None and a.src.size <= self.direct_max]
        if self.procs is None or not direct:
            self._submit(self._batch_task, batch)
            return
        rest = [a for a in batch if a.src is not None and a.src.size > self.direct_max]
        if rest:
            self._submit(self._batch_task, rest)
        if not self._acquire_slot():
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
        try:
            for a, (digest, kind, message) in zip(batch, outcomes, strict=True):
                if kind is None:
                    self._count(a, digest, counted=False)
                elif kind == VANISHED:
                    log.warning("%s: vanished from the source during the transfer; skipped", a.rel)
                elif ErrorKind[kind].retryable and self.o.retries and not self.cancel.is_set():
                    self._task_started()
                    self.pool.submit(self._run_task, self._whole_file, (a,), False)
                else:
                    self._fail(a.rel, outcome_error(a.rel, kind, message or kind))
        finally:
            self._task_done(release_slot=True)

    # ---- small and medium files ----------------------------------------------------------------

    def _batch_task(self, batch: list[Action]) -> None:
        if self.direct_max > 0 and not self.xattrs:
            if isinstance(self.dst, PutSmall):
                batch = self._put_batch(batch)
            elif isinstance(self.src, GetSmall):
                batch = self._get_batch(batch)
        for a in batch:
            if self.cancel.is_set():
                return
            self._whole_file(a)

    def _fetch(self, batch: list[Action]) -> tuple[list[tuple[Action, bytes]], list[Action]]:
        """The batch's small files read whole: in one exchange where the source takes batches
        (a few round trips for all of them), else one by one. Returns (action, bytes) pairs
        and the actions that go the one-at-a-time way (which reads again, retries and
        reports)."""
        small = [a for a in batch if a.src is not None and a.src.size <= self.direct_max]
        alone = [a for a in batch if a.src is not None and a.src.size > self.direct_max]
        if self.cancel.is_set():
            return [], batch
        got: list[bytes | None] = []
        if isinstance(self.src, GetSmall):
            try:
                got = self.src.get_small([(a.read_rel or a.rel, a.src) for a in small if a.src])
            except Exception as exc:
                log.debug("batch of %d files failed: %s", len(small), exc)
                return [], batch
        else:
            for a in small:
                assert a.src is not None
                try:
                    got.append(read_small(self.src, a.rel, a.read_rel or a.rel, a.src))
                except Exception:
                    got.append(None)
        pairs = []
        for a, data in zip(small, got, strict=True):
            if data is None:
                alone.append(a)
            else:
                pairs.append((a, data))
        return pairs, alone

    def _put_batch(self, batch: list[Action]) -> list[Action]:
        """Hand the batch's files to the destination at once; return those that go the
        one-at-a-time way."""
        pairs, alone = self._fetch(batch)
        hashing = self.verify != Verify.NONE
        files = [
            SmallFile(a.rel, a.src, data, digest_bytes(data) if hashing else None)
            for a, data in pairs
            if a.src is not None
        ]
        if not files or self.cancel.is_set():
            return alone + [a for a, _ in pairs]
        assert isinstance(self.dst, PutSmall)  # _batch_task sends batches only there
        try:
            outcomes = self.dst.put_small(files, self.o.preserve)
        except Exception as exc:
            log.debug("batch of %d files failed: %s", len(files), exc)
            return alone + [a for a, _ in pairs]
        for (a, _), f, err in zip(pairs, files, outcomes, strict=True):
            if err is None:
                self._count(a, f.digest, counted=False)
            else:
                log.debug("%s: batched write failed: %s", a.rel, err)
                alone.append(a)
        return alone

    def _get_batch(self, batch: list[Action]) -> list[Action]:
        """Read the batch's files from the source at once and write each; return those that
        go the one-at-a-time way."""
        pairs, alone = self._fetch(batch)
        hashing = self.verify != Verify.NONE
        for a, data in pairs:
            if self.cancel.is_set():
                alone.append(a)
                continue

            def attempt(n: int, a: Action = a, data: bytes = data) -> None:
                if n:  # a failed write: the one-at-a-time way, from a fresh read
                    self._refresh(a)
                    self._copy_whole(a)
                    return
                assert a.src is not None
                digest = write_small(self.dst, a.rel, a.src, data, hashing, self.o.preserve)
                self._count(a, digest, counted=False)

            self._retrying(a.rel, attempt)
        return alone

    def _whole_file(self, a: Action) -> None:
        def attempt(n: int) -> None:
            if n:
                self._refresh(a)
            self._copy_whole(a)

        self._retrying(a.rel, attempt)

    def _server_copy(self, a: Action) -> None:
        """Copy within one service: no bytes through us, and no digest of ours (the service
        checks its copy; a stored source digest is carried over)."""

        def attempt(n: int) -> None:
            if n:
                self._refresh(a)  # a new a.src
            assert a.src is not None and isinstance(self.dst, ServerSideCopy)  # server_copy
            self.dst.copy_from(self.src, a.read_rel or a.rel, a.src, a.rel, self.o.preserve)
            self._count(a, None, counted=False)

        self._retrying(a.rel, attempt)

    def _meta_first(self, a: Action) -> None:
        """Complete the source entry before the write starts, for destinations that fix
        metadata then (S3 multipart; later it costs a server-side copy of the object): a
        lazy listing's metadata costs a HEAD; a local file's digest, one more read from the
        page cache (rclone does the same for its MD5)."""
        s = a.src
        assert s is not None
        above = self.dst.limits.digest_first_above
        if not above or s.size <= above or s.digest:
            return
        rel = a.read_rel or a.rel
        if isinstance(self.src, LazyMeta):
            self.src.fill_meta(rel.rpartition("/")[0], [s])
        elif self.verify != Verify.NONE and self.src.fileno_capable:
            s.digest = file_digest(self.src, rel, s)

    def _refresh(self, a: Action) -> None:
        fresh = self.src.stat(a.read_rel or a.rel)
        if fresh is None or fresh.type != EntryType.FILE:
            raise Vanished()
        assert a.src is not None
        fresh.name, fresh.nlink, fresh.digest = a.src.name, a.src.nlink, None
        self.progress.planned(0, fresh.size - a.src.size)
        a.src = fresh

    def _open_reader(self, a: Action) -> Reader:
        assert a.src is not None
        return open_source(self.src, a.read_rel or a.rel, a.src)

    def _copy_whole(self, a: Action) -> None:
        s = a.src
        assert s is not None
        if s.size <= self.direct_max:
            digest = copy_small(
                self.src,
                self.dst,
                a.rel,
                a.read_rel or a.rel,
                s,
                self.verify != Verify.NONE,
                self.o.preserve,
                self.xattrs,
            )
            self._count(a, digest, counted=False)
            return
        self._meta_first(a)
        reader = self._open_reader(a)
        try:
            writer = self.dst.open_write(a.rel, s)
            try:
                token = self.progress.begin(a.rel)
                try:
                    ranges = reader.data_ranges(s.size) if self.sparse else None
                    if ranges is not None:
                        writer.set_size(s.size)
                    blocks = self._stream(reader, writer, 0, s.size, ranges, fresh=True)
                finally:
                    self.progress.end(token)
                digest = digest_from_blocks(s.size, blocks) if blocks is not None else None
                try:
                    self._finish(a, reader, writer, digest)
                except BaseException:
                    self.progress.advance(-s.size)  # streamed, not committed: a retry recounts
                    raise
            except BaseException:
                writer.abort()
                raise
        finally:
            reader.close()

    def _finish(
        self,
        a: Action,
        reader: Reader,
        writer: Writer,
        digest: str | None,
        resumed: int = 0,
        counted: bool = True,
    ) -> None:
        """Check the source did not move under us, verify, commit, count."""
        s = a.src
        assert s is not None
        why = reader.changed()
        if why:
            raise FerryError(ErrorKind.SOURCE_CHANGED, why, a.rel)
        if self.o.preserve.xattrs and self.dst.holds.xattrs:
            attrs = reader.xattrs()
            if attrs:
                writer.set_xattrs(attrs)
        if (
            self.verify == Verify.FULL
            and digest
            and not self._read_back_matches(writer, s.size, digest)
        ):
            raise FerryError(
                ErrorKind.VERIFY_MISMATCH, "destination bytes do not match the source digest", a.rel
            )
        writer.commit(s, digest, self.o.preserve)
        self._count(a, digest, resumed, counted)

    def _count(self, a: Action, digest: str | None, resumed: int = 0, counted: bool = True) -> None:
        """Book a committed file: summary, progress (its bytes unless already counted), manifest."""
        s = a.src
        assert s is not None
        with self._lock:
            if a.op == Op.COPY:
                self.summary.files_copied += 1
            else:
                self.summary.files_updated += 1
            self.summary.bytes_transferred += s.size - resumed
            if digest is not None:
                self.summary.files_verified += 1
        self.progress.advance(0 if counted else s.size, 1)
        self._touch(a.rel)
        if self.manifest:
            self.manifest.add(a.rel, s, digest)

    def _read_back_matches(self, writer: Writer, size: int, digest: str) -> bool:
        hasher = StreamHasher()
        offset = 0
        while offset < size:
            data = writer.read_back(offset, min(PIECE, size - offset))
            if data is None:
                return True  # the backend verifies on its side (e.g. S3 checksums)
            if not data:
                break
            hasher.update(data)
            offset += len(data)
        return hasher.size == size and hasher.hexdigest() == digest

    def _stream(
        self,
        reader: Reader,
        writer: Writer,
        offset: int,
        length: int,
        ranges: list[tuple[int, int]] | None,
        fresh: bool,
        big: BigFile | None = None,
    ) -> bytes | None:
        """Copy [offset, offset+length) and return its block digests (None when not hashing).

        Holes (from `ranges`) are neither read nor written when the writer is fresh and
        pre-sized; their digests are added as zero blocks."""
        hashing = self.verify != Verify.NONE
        hasher = StreamHasher() if hashing else None
        end = offset + length
        segments = (
            _segments(offset, end, ranges)
            if ranges is not None and fresh
            else [(offset, end, True)]
        )
        rfd, wfd = reader.fileno(), writer.fileno()
        moved = [0]

        def advance(n: int) -> None:
            moved[0] += n
            self.progress.advance(n)

        try:
            for seg_start, seg_end, is_data in segments:
                if not is_data:
                    if hasher:
                        hasher.update_zeros(seg_end - seg_start)
                    advance(seg_end - seg_start)
                    continue
                pos = seg_start
                if self.kernel_copy and rfd is not None and wfd is not None:
                    pos = self._kernel_copy(rfd, wfd, seg_start, seg_end, big, hasher, advance)
                    if pos == seg_end:
                        continue
                for piece in reader.iter_range(pos, seg_end - pos, STREAM_PIECE):
                    if self.cancel.is_set() or (big is not None and big.error is not None):
                        raise FerryError(ErrorKind.INTERRUPTED, "transfer interrupted")
                    if hasher:
                        hasher.update(piece)
                    if self.limiter:
                        self.limiter.take(len(piece), self.cancel)
                    writer.write_at(pos, piece)
                    pos += len(piece)
                    advance(len(piece))
                if pos != seg_end:
                    raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while copying")
        except BaseException:
            self.progress.advance(-moved[0])  # a retry moves these bytes again
            raise
        return hasher.block_digests() if hasher else None

    def _kernel_copy(
        self,
        rfd: int,
        wfd: int,
        start: int,
        end: int,
        big: BigFile | None,
        hasher: StreamHasher | None,
        advance: Callable[[int], None],
    ) -> int:
        """Copy in the kernel (no bytes through user space); when hashing, hash the bytes as
        they now are at the destination, read back from the page cache. On this kind of
        machine that is several times faster than read + write, and it checks the write.
        Returns how far it got: short of `end` only when the filesystem cannot do it."""
        step = STREAM_PIECE if (hasher is not None or self.limiter) else 64 << 20
        view = thread_buffer(self._tls, STREAM_PIECE) if hasher is not None else None
        pos = start
        while pos < end:
            if self.cancel.is_set() or (big is not None and big.error is not None):
                raise FerryError(ErrorKind.INTERRUPTED, "transfer interrupted")
            want = min(end - pos, step)
            if self.limiter:
                self.limiter.take(want, self.cancel)
            try:
                n = os.copy_file_range(rfd, wfd, want, pos, pos)
            except OSError as exc:
                if exc.errno in _NO_KERNEL_COPY:
                    self.kernel_copy = False
                    return pos
                raise
            if n == 0:
                raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while copying")
            if view is not None and hasher is not None:
                got = os.preadv(wfd, [view[:n]], pos)
                if got != n:
                    raise FerryError(
                        ErrorKind.VERIFY_MISMATCH, "destination shorter than what was written"
                    )
                hasher.update(view[:n])
            pos += n
            advance(n)
        return pos

    # ---- large files in parallel chunks --------------------------------------------------------

    def _chunk_size(self, size: int) -> int:
        return chunk_size_for(self.o, self.src, self.dst, size)

    def _start_file(self, a: Action) -> None:
        s = a.src
        assert s is not None
        chunk = self._chunk_size(s.size)
        if s.size < 2 * chunk or not self.dst.limits.chunk_writer:
            self._submit(self._whole_file, a)
            return
        try:
            self._meta_first(a)
            reader = self._open_reader(a)
        except Vanished:
            log.warning("%s: vanished from the source during the transfer; skipped", a.rel)
            return
        except Exception as exc:
            self._fail(a.rel, as_ferry_error(exc, a.rel))
            return
        nchunks = -(-s.size // chunk)
        try:
            key = resume_key_for(s, chunk, self.verify) if isinstance(self.dst, Resumable) else None
            writer = self.dst.open_write(a.rel, s, resume_key=key)
            done = writer.done_chunks(chunk) if key else {}
        except Exception as exc:
            reader.close()
            self._fail(a.rel, as_ferry_error(exc, a.rel))
            return
        big = BigFile(a, reader, writer, chunk, nchunks)
        big.fresh = not done
        ranges = reader.data_ranges(s.size) if self.sparse else None
        if big.fresh:
            writer.set_size(s.size)
        resumed = 0
        for index, digests in done.items():
            if index < nchunks:
                big.digests[index] = digests
                resumed += min(chunk, s.size - index * chunk)
        if resumed:
            log.info(
                "%s: resuming, %d of %d bytes already at the destination", a.rel, resumed, s.size
            )
            self.summary.bytes_resumed += resumed
            big.resumed = resumed
            self.progress.advance(resumed)
        todo = [i for i in range(nchunks) if big.digests[i] is None]
        big.pending = len(todo)
        if not todo:
            self._finish_big(big)
            return
        for n, i in enumerate(todo):
            if not self._submit(self._chunk_task, big, i, ranges):
                big.error = FerryError(ErrorKind.INTERRUPTED, "transfer interrupted", a.rel)
                with big.lock:
                    big.pending -= len(todo) - n
                    last = big.pending == 0
                if last:
                    self._finish_big(big)
                break

    def _chunk_task(self, big: BigFile, index: int, ranges: list[tuple[int, int]] | None) -> None:
        s = big.action.src
        assert s is not None
        offset = index * big.chunk
        length = min(big.chunk, s.size - offset)
        token = self.progress.begin(big.action.rel)
        try:
            for attempt in range(self.o.retries + 1):
                try:
                    digests = self._stream(
                        big.reader, big.writer, offset, length, ranges, big.fresh, big
                    )
                    if digests is not None:
                        big.writer.record_chunk(index, digests)
                    big.digests[index] = digests or b""
                    break
                except Exception as exc:
                    err = as_ferry_error(exc, big.action.rel)
                    if big.error is not None:
                        break
                    if not err.kind.retryable or attempt == self.o.retries or self.cancel.is_set():
                        big.error = err
                        break
                    delay = self._backoff(attempt)
                    if self.cancel.wait(delay):
                        big.error = FerryError(ErrorKind.INTERRUPTED, "transfer interrupted")
                        break
        finally:
            self.progress.end(token)
            with big.lock:
                big.pending -= 1
                last = big.pending == 0
            if last:
                self._finish_big(big)

    def _finish_big(self, big: BigFile) -> None:
        a, s = big.action, big.action.src
        assert s is not None
        try:
            if big.error is not None:
                # Keep the partial for a resume, unless it holds space a full disk needs back.
                full = ErrorKind.DESTINATION_FULL
                keep = big.error.kind != full and (self.fatal is None or self.fatal.kind != full)
                big.writer.abort(keep_partial=keep)
                self._fail(a.rel, big.error)
                return
            digest = None
            if self.verify != Verify.NONE:
                digest = digest_from_blocks(s.size, b"".join(d or b"" for d in big.digests))
            try:
                self._finish(a, big.reader, big.writer, digest, big.resumed)
            except FerryError as err:
                big.writer.abort(keep_partial=False)
                self.progress.advance(-s.size)  # every chunk was counted, none committed
                if err.kind.retryable:
                    big.reader.close()
                    self._whole_file(
                        a
                    )  # the source changed: start over, sequentially, with retries
                else:
                    self._fail(a.rel, err)
            except Exception as exc:
                big.writer.abort(keep_partial=True)
                self._fail(a.rel, as_ferry_error(exc, a.rel))
        finally:
            big.reader.close()

    # ---- checksum comparison -------------------------------------------------------------------

    def _check_task(self, a: Action) -> None:
        s, d = a.src, a.dst
        assert s is not None and d is not None
        try:
            same = file_digest(self.src, a.read_rel or a.rel, s) == file_digest(self.dst, a.rel, d)
        except Exception as exc:
            self._fail(a.rel, as_ferry_error(exc, a.rel))
            return
        if same:
            self.progress.planned(-1, -s.size)
            self._skipped(a)
            if self.planner.meta_differs(s, d):
                self.dst.set_meta(a.rel, s, self.o.preserve)
                self._meta_written = True
            return
        a.op = Op.UPDATE
        (self._server_copy if self.server_copy else self._whole_file)(a)

    # ---- after the copies ----------------------------------------------------------------------

    def finish_links(self) -> None:
        for a in self.hardlinks:
            if self.cancel.is_set():
                return
            try:
                assert a.link_to is not None
                if not isinstance(self.dst, Hardlinks):
                    raise FerryError(
                        ErrorKind.USAGE, f"{self.dst.describe()} cannot hold hard links", a.rel
                    )
                self.dst.hardlink(a.rel, a.link_to)
                self.summary.links_created += 1
                self._touch(a.rel)
            except Exception as exc:
                self._fail(a.rel, as_ferry_error(exc, a.rel))

    def run_deletes(self) -> None:
        """Sync's last step: remove what the source does not have, then type replacements."""
        for a in self.deletes + self.replaces:
            if self.cancel.is_set():
                return
            assert a.dst is not None
            try:
                self._delete_entry(a.rel, a.dst)
            except Exception as exc:
                self._fail(a.rel, as_ferry_error(exc, a.rel), counts_file=False)
                return
        for a in self.replaces:
            assert a.src is not None
            if a.src.type == EntryType.SYMLINK:
                self._make_symlink(a)
            else:
                a.op = Op.UPDATE
                self.progress.planned(1, a.src.size)
                self._submit(self._whole_file, a)
        self.drain()

    def count_deletes(self, limit: int) -> int:
        """Entries run_deletes would remove (a directory with everything in it), counted
        until the count passes `limit`: a huge doomed tree is not listed to the end."""
        n = 0
        stack: list[str] = []
        for a in self.deletes + self.replaces:
            assert a.dst is not None
            n += 1
            if a.dst.type == EntryType.DIR:
                stack.append(a.rel)
            while stack and n <= limit:
                rel = stack.pop()
                for e in self.dst.list_dir(rel):
                    check_name(e.name, rel)
                    n += 1
                    if e.type == EntryType.DIR:
                        stack.append(f"{rel}/{e.name}")
            if n > limit:
                break
        return n

    def _delete_entry(self, rel: str, e: Entry) -> None:
        if e.type == EntryType.DIR:
            for child_rel, child in list_tree(self.dst, rel):
                self._delete_one(child_rel, child)
        self._delete_one(rel, e)

    def _delete_one(self, rel: str, e: Entry) -> None:
        self.dst.remove(rel, e)
        self._touch(rel)
        if e.type != EntryType.DIR:
            self.summary.files_deleted += 1
            self.summary.bytes_deleted += e.size

    def finish_dirs(self) -> None:
        """Directory metadata last, deepest first, so adding contents cannot undo it."""
        for rel, s, d in reversed(self.dirs):
            if d is None or rel in self.touched or self.planner.meta_differs(s, d):
                try:
                    self.dst.set_meta(rel, s, self.o.preserve)
                    self._meta_written = True
                except Exception as exc:
                    self._fail(rel, as_ferry_error(exc, rel), counts_file=False)


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


def _segments(start: int, end: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """Split [start, end) into data and hole segments."""
    out: list[tuple[int, int, bool]] = []
    pos = start
    for off, length in ranges:
        a, b = max(off, start), min(off + length, end)
        if a >= b:
            continue
        if a > pos:
            out.append((pos, a, False))
        out.append((a, b, True))
        pos = b
    if pos < end:
        out.append((pos, end, False))
    return out


def file_digest(backend: Backend, rel: str, e: Entry) -> str:
    """The Ferry digest of a file as stored: the backend's kept digest, or a full read."""
    if e.digest:
        return e.digest
    reader = backend.open_read(rel, e)
    try:
        hasher = StreamHasher()
        for piece in reader.iter_range(0, e.size, 4 * PIECE):
            hasher.update(piece)
        if hasher.size != e.size:
            raise FerryError(ErrorKind.SOURCE_CHANGED, "size changed while reading", rel)
        return hasher.hexdigest()
    finally:
        reader.close()
