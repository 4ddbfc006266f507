"""The ledger: what a run did, booked in one place — the summary's counters, progress,
the manifest and the error policy.

A real run and a dry run (`ferry plan`, `--dry-run`) book through the same methods, so
their numbers cannot drift apart. A dry run moves no progress (nothing is done) and
never stops on an error (a plan lists every problem it finds).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import IO

from ferry.mover.backends.base import Entry, EntryType
from ferry.mover.engine.audit import AuditLog
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.options import ErrorPolicy
from ferry.mover.plan import Action, Op
from ferry.mover.progress import Progress
from ferry.mover.result import Summary

log = logging.getLogger("ferry")

# Kinds that make every further file fail too: stop at once whatever the error policy.
_STOP_ALL = {ErrorKind.DESTINATION_FULL, ErrorKind.AUTH_FAILED, ErrorKind.INTERRUPTED}


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


class Ledger:
    """Counts, progress, manifest and error policy of one run, shared by its workers."""

    def __init__(
        self,
        summary: Summary,
        progress: Progress,
        error_policy: ErrorPolicy,
        cancel: threading.Event,
        manifest: Manifest | None = None,
        dry_run: bool = False,
        audit: AuditLog | None = None,
    ) -> None:
        self.summary = summary
        self.progress = progress
        self.error_policy = error_policy
        self.cancel = cancel
        self.manifest = manifest
        self.live = not dry_run  # a real run: progress moves and errors may stop it
        self.fatal: FerryError | None = None
        self.touched: set[str] = set()  # directories whose contents changed
        self.meta_written = False
        self._lock = threading.Lock()
        self.audit = audit
        self._done = "done" if self.live else "planned"  # an audit line's result
        self._attempts: dict[str, int] = {}  # paths retried: the attempt that is running

    def retrying(self, rel: str, attempt: int, err: FerryError) -> None:
        """An attempt failed and another follows (`attempt` counts from 0; a chunked
        file's chunks retry on their own: the file's is the most any chunk took)."""
        with self._lock:
            self._attempts[rel] = max(self._attempts.get(rel, 1), attempt + 2)
        if self.audit:
            self.audit.write("retry", rel, "retrying", error=str(err), attempt=attempt + 1)

    def _attempt(self, rel: str) -> int:
        if not self._attempts:
            return 1
        with self._lock:
            return self._attempts.pop(rel, 1)

    @property
    def wrote(self) -> bool:
        """Whether anything at the destination changed (a no-op run skips the flush)."""
        return bool(self.touched) or self.meta_written

    def touch(self, rel: str) -> None:
        self.touched.add(rel.rpartition("/")[0])

    # ---- errors --------------------------------------------------------------------------------

    def stop(self, err: FerryError) -> None:
        """End the run: the first such error is the run's fatal one."""
        with self._lock:
            if self.fatal is None:
                self.fatal = err
        self.cancel.set()

    def fail(self, rel: str, err: Exception, counts_file: bool = True) -> None:
        """Book a failure of one entry (a failed file when `counts_file`); the error policy
        decides whether the run goes on."""
        err = as_ferry_error(err, rel)
        with self._lock:
            if counts_file:
                self.summary.files_failed += 1
            self.summary.add_error(err)
        if self.audit:
            self.audit.write("error", rel, "failed", error=str(err), attempt=self._attempt(rel))
        if not self.live or (err.kind == ErrorKind.INTERRUPTED and self.cancel.is_set()):
            return
        log.error("%s", err)
        if self.error_policy == ErrorPolicy.ABORT or err.kind in _STOP_ALL:
            self.stop(err)

    # ---- what was done -------------------------------------------------------------------------

    def planned(self, files: int, nbytes: int) -> None:
        self.progress.planned(files, nbytes)

    def committed(
        self,
        a: Action,
        s: Entry,
        digest: str | None,
        resumed: int = 0,
        counted: bool = True,
        transferred: int | None = None,
        matched: int = 0,
    ) -> None:
        """Book a committed file `s` (the source entry it was copied from): summary,
        progress (its bytes unless the stream `counted` them already), manifest. A file sent
        as a delta says what crossed (`transferred`) and what the basis gave (`matched`)."""
        crossed = s.size - resumed if transferred is None else transferred
        with self._lock:
            if a.op == Op.COPY:
                self.summary.files_copied += 1
            else:
                self.summary.files_updated += 1
            self.summary.bytes_transferred += crossed
            self.summary.bytes_matched += matched
            if digest is not None:
                self.summary.files_verified += 1
        if self.live:
            self.progress.advance(0 if counted else s.size, 1)
        self.touch(a.rel)
        if self.manifest:
            self.manifest.add(a.rel, s, digest)
        if self.audit:
            op = "copy" if a.op == Op.COPY else "update"
            self.audit.write(
                op,
                a.rel,
                self._done,
                size=s.size,
                nbytes=crossed,
                digest=digest,
                attempt=self._attempt(a.rel),
            )

    def resumed(self, nbytes: int) -> None:
        """Bytes a partial from an earlier run already holds: done without moving them."""
        self.summary.bytes_resumed += nbytes
        if self.live:
            self.progress.advance(nbytes)

    def skipped(self, a: Action) -> None:
        """Book an entry that needs no copy (not a directory)."""
        s = a.src
        assert s is not None
        self.summary.files_skipped += 1
        self.summary.bytes_skipped += s.size
        if self.live:
            self.progress.skipped(1, s.size)
        if self.manifest and s.type == EntryType.FILE:
            self.manifest.add(a.rel, s, s.digest if a.dst and s.digest == a.dst.digest else None)
        if self.audit:
            op = "meta" if a.op == Op.META else "skip"
            self.audit.write(op, a.rel, self._done, size=s.size)

    def skipped_bulk(self, files: int, nbytes: int) -> None:
        """Unchanged files the planner counted without an action each."""
        self.summary.files_skipped += files
        self.summary.bytes_skipped += nbytes
        if self.live:
            self.progress.skipped(files, nbytes)

    def dir_created(self, rel: str) -> None:
        self.summary.dirs_created += 1
        self.touch(rel)
        if self.audit:
            self.audit.write("mkdir", rel, self._done)

    def dir_meta_fixed(self, rel: str) -> None:
        """An existing directory's mode, owner or time set again (not a counter)."""
        if self.audit:
            self.audit.write("dirmeta", rel, self._done)

    def link_created(self, rel: str) -> None:
        self.summary.links_created += 1
        self.touch(rel)
        if self.audit:
            self.audit.write("link", rel, self._done)

    def deleted(self, rel: str, e: Entry) -> None:
        self.touch(rel)
        if e.type != EntryType.DIR:
            self.summary.files_deleted += 1
            self.summary.bytes_deleted += e.size
        if self.audit:
            op = "rmdir" if e.type == EntryType.DIR else "delete"
            self.audit.write(op, rel, self._done, size=None if op == "rmdir" else e.size)

    def close(self) -> None:
        if self.manifest:
            self.manifest.close()
        if self.audit:
            self.audit.close()
