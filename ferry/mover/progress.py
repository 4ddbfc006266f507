"""Progress: counters the engine bumps, snapshots, and sinks that show them.

Workers only add to counters under one lock; a reporter thread turns them
into snapshots at each sink's own pace, so a slow sink (a terminal, the
Kubernetes API) never slows the copy. The sink that patches a TransferJob's
status lives in ferry.pod and is plugged in by `ferry run`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry.mover.result import Summary

RATE_WINDOW_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    elapsed: float
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    bytes_skipped: int
    files_skipped: int
    bytes_per_second: float
    eta_seconds: float | None
    scan_complete: bool
    phase: str
    current: list[str]

    def to_json(self) -> dict[str, Any]:
        """The wire shape, `SNAPSHOT_FIELDS` in that order."""
        return {
            "bytesDone": self.bytes_done,
            "bytesTotal": self.bytes_total,
            "filesDone": self.files_done,
            "filesTotal": self.files_total,
            "bytesSkipped": self.bytes_skipped,
            "filesSkipped": self.files_skipped,
            "bytesPerSecond": round(self.bytes_per_second),
            "etaSeconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "scanComplete": self.scan_complete,
            "phase": self.phase,
            "elapsedSeconds": round(self.elapsed, 3),
            "current": self.current,
        }


# A snapshot on the wire: each JSON field and its type (None allowed where a value may be
# missing). JSON lines carry all of them; a TransferJob's `status.progress.shards[i]` all but
# `current` (the status sink sends them, the CRD's ShardProgress is built from this table).
SNAPSHOT_FIELDS: dict[str, type] = {
    "bytesDone": int,
    "bytesTotal": int,
    "filesDone": int,
    "filesTotal": int,
    "bytesSkipped": int,
    "filesSkipped": int,
    "bytesPerSecond": int,
    "etaSeconds": float,
    "scanComplete": bool,
    "phase": str,
    "elapsedSeconds": float,
    "current": list,
}
SHARD_PROGRESS_FIELDS = tuple(k for k in SNAPSHOT_FIELDS if k != "current")


class Sink:
    """Receives snapshots; `phase` brackets scan / transfer / delete / verify (spans hook in here)."""

    interval: float = 1.0

    def update(self, snap: Snapshot) -> None:
        return None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        """Yield a dict the engine fills with counts for this phase (span attributes)."""
        yield {}

    def finish(self, summary: Summary) -> None:
        return None


class MultiSink(Sink):
    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self.interval = min((s.interval for s in sinks), default=1.0)

    def update(self, snap: Snapshot) -> None:
        for s in self.sinks:
            s.update(snap)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        attrs: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            parts = [stack.enter_context(s.phase(name)) for s in self.sinks]
            yield attrs
            for p in parts:
                p.update(attrs)

    def finish(self, summary: Summary) -> None:
        for s in self.sinks:
            s.finish(summary)


class JsonLinesSink(Sink):
    """One JSON object a line: for machines, logs and `ferry run` inside a pod."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        interval: float = 1.0,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.fields = fields or {}  # e.g. a JSON log line's level, message and object

    def update(self, snap: Snapshot) -> None:
        line = {**self.fields, "event": "progress", **snap.to_json()}
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()


class Progress:
    """Thread-safe counters plus the bookkeeping for rate and ETA."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.start = time.monotonic()
        self.bytes_done = 0
        self.bytes_total = 0
        self.files_done = 0
        self.files_total = 0
        self.bytes_skipped = 0
        self.files_skipped = 0
        self.scan_complete = False
        self.phase = "scan"
        self._current: dict[int, str] = {}
        self._next_token = 0
        self._samples: deque[tuple[float, int]] = deque()

    def planned(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.files_total += files
            self.bytes_total += nbytes

    def skipped(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.files_skipped += files
            self.bytes_skipped += nbytes

    def advance(self, nbytes: int, files: int = 0) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.files_done += files

    def begin(self, path: str) -> int:
        with self._lock:
            self._next_token += 1
            self._current[self._next_token] = path
            return self._next_token

    def end(self, token: int) -> None:
        with self._lock:
            self._current.pop(token, None)

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        with self._lock:
            done, total = self.bytes_done, self.bytes_total
            self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
                self._samples.popleft()
            t0, b0 = self._samples[0]
            elapsed = now - self.start
            rate = (
                (done - b0) / (now - t0)
                if now - t0 > 0.2
                else (done / elapsed if elapsed > 0 else 0.0)
            )
            eta = (total - done) / rate if rate > 0 and self.scan_complete else None
            return Snapshot(
                elapsed=elapsed,
                bytes_done=done,
                bytes_total=total,
                files_done=self.files_done,
                files_total=self.files_total,
                bytes_skipped=self.bytes_skipped,
                files_skipped=self.files_skipped,
                bytes_per_second=rate,
                eta_seconds=eta,
                scan_complete=self.scan_complete,
                phase=self.phase,
                current=list(self._current.values())[:4],
            )


class Reporter:
    """Feeds a sink snapshots from a daemon thread until stopped."""

    def __init__(self, progress: Progress, sink: Sink) -> None:
        self.progress = progress
        self.sink = sink
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ferry-progress", daemon=True)

    def __enter__(self) -> Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sink.update(self.progress.snapshot())

    def _run(self) -> None:
        while not self._stop.wait(self.sink.interval):
            self.sink.update(self.progress.snapshot())


class BarSink(Sink):
    """A rich progress display for terminals: bytes, files, rate, ETA and current files."""

    interval = 0.2

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True)
        self.bar = RichProgress(
            TextColumn("[bold]{task.fields[phase]}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TextColumn("{task.fields[files]}"),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("[dim]{task.fields[current]}"),
            console=self.console,
            transient=False,
        )
        self.task = self.bar.add_task("ferry", total=None, phase="scan", files="", current="")
        self.bar.start()

    def update(self, snap: Snapshot) -> None:
        files = f"{snap.files_done}/{snap.files_total}{'' if snap.scan_complete else '+'} files"
        current = snap.current[0] if snap.current else ""
        self.bar.update(
            self.task,
            completed=snap.bytes_done,
            total=snap.bytes_total if snap.scan_complete else max(snap.bytes_total, 1),
            phase=snap.phase,
            files=files,
            current=current[-40:],
        )

    def finish(self, summary: Summary) -> None:
        self.bar.stop()


class StatsSink(Sink):
    """--stats INTERVAL: one summary line every INTERVAL on its stream, for long runs
    whose logs outlive a terminal (rclone's --stats). It keeps its own pace when beside a
    faster sink (MultiSink updates all at the fastest one's interval)."""

    def __init__(self, interval: float, stream: IO[str] | None = None) -> None:
        self.interval = interval
        self.stream = stream or sys.stderr
        self._due = interval

    def update(self, snap: Snapshot) -> None:
        if snap.elapsed < self._due:
            return
        self._due = snap.elapsed + self.interval
        from ferry.mover.options import format_size

        more = "" if snap.scan_complete else "+"
        eta = "" if snap.eta_seconds is None else f", ETA {snap.eta_seconds:.0f}s"
        self.stream.write(
            f"ferry: stats: {snap.phase}: {format_size(snap.bytes_done)} of "
            f"{format_size(snap.bytes_total)}{more}, {snap.files_done} of {snap.files_total}"
            f"{more} files, {format_size(snap.bytes_per_second)}/s{eta}, "
            f"{snap.elapsed:.0f}s elapsed\n"
        )
        self.stream.flush()
