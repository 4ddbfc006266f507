"""The bounded task queue and retries.

Work goes to a thread pool through a queue of at most `transfers * 2` tasks: the planner
blocks when that many wait. That bound, times the piece a worker streams through, is the
bound on memory in flight. Once the run is cancelled the queue takes nothing more.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error

log = logging.getLogger("ferry")

MAX_BACKOFF = 30.0


class Vanished(Exception):
    """The source file disappeared between the scan and the copy (not an error, as in rsync):
    an attempt that raises it ends its retries as done."""


class TaskQueue:
    """Worker threads fed through a bounded queue; `drain` waits until all are done."""

    def __init__(
        self, workers: int, cancel: threading.Event, on_crash: Callable[[FerryError], None]
    ) -> None:
        self.cancel = cancel
        self.on_crash = on_crash  # a task that raised: a bug, not a file error
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="ferry-copy")
        self._slots = threading.Semaphore(workers * 2)
        self._idle = threading.Condition()
        self._outstanding = 0

    def hold(self) -> bool:
        """Wait for room in the queue (backpressure). False if cancelled meanwhile. The
        slot is given back by `done(release_slot=True)`."""
        while not self._slots.acquire(timeout=0.5):
            if self.cancel.is_set():
                return False
        self.started()
        return True

    def started(self) -> None:
        with self._idle:
            self._outstanding += 1

    def done(self, release_slot: bool) -> None:
        if release_slot:
            self._slots.release()
        with self._idle:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.notify_all()

    def submit(self, fn: Callable[..., None], *args: object) -> bool:
        """Queue a task once there is a slot. False if cancelled meanwhile."""
        if not self.hold():
            return False
        self.pool.submit(self._run, fn, args)
        return True

    def submit_now(self, fn: Callable[..., None], *args: object) -> None:
        """Queue a task without waiting for a slot: for callers that must not block (the
        worker processes' result thread handing a retry back)."""
        self.started()
        self.pool.submit(self._run, fn, args, False)

    def _run(
        self, fn: Callable[..., None], args: tuple[object, ...], release_slot: bool = True
    ) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # a bug, not a file error: never lose it silently
            log.exception("internal error")
            self.on_crash(as_ferry_error(exc))
        finally:
            self.done(release_slot)

    def wait_idle(self) -> None:
        with self._idle:
            while self._outstanding:
                self._idle.wait()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass(slots=True, frozen=True)
class Retry:
    """How often and how patiently a retryable failure is tried again."""

    retries: int
    base_delay: float
    cancel: threading.Event
    on_retry: Callable[[str, int, FerryError], None] | None = None  # the audit log's

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter, capped. `random` is imported on the first
        retry: most runs never retry, and it is ~1 ms of start-up."""
        import random

        return min(MAX_BACKOFF, self.base_delay * 2**attempt) * random.uniform(0.5, 1.5)

    def run(
        self,
        rel: str,
        attempt_fn: Callable[[int], None],
        fail: Callable[[str, FerryError], None],
    ) -> bool:
        """Run attempt_fn(attempt) with backoff and jitter on retryable errors; a final
        failure goes to `fail`. True on success."""
        for attempt in range(self.retries + 1):
            try:
                attempt_fn(attempt)
                return True
            except Vanished:
                log.warning("%s: vanished from the source during the transfer; skipped", rel)
                return True
            except Exception as exc:
                err = as_ferry_error(exc, rel)
                if not err.kind.retryable or attempt == self.retries or self.cancel.is_set():
                    fail(rel, err)
                    return False
                delay = self.backoff(attempt)
                if self.on_retry is not None:
                    self.on_retry(rel, attempt, err)
                log.warning("%s: %s; retrying in %.1fs", rel, err, delay)
                if self.cancel.wait(delay):
                    fail(rel, FerryError(ErrorKind.INTERRUPTED, "transfer interrupted", rel))
                    return False
        return False
