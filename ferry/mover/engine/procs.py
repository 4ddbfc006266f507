"""Small files copied between two local trees in forked worker processes.

A small local file costs about ten system calls and no bandwidth. Threads
do not help with that in CPython: every call drops and retakes the GIL, and
with several threads that turns into futex traffic that costs more than the
calls themselves (measured: one thread beats two or four). Worker processes
each have their own GIL, so the calls really run on every core. They are
forked from the mover when the first batches of small files are ready (the
fork copies no data and takes milliseconds) and receive batches of
(path, entry); they answer with the digest or a classified error per file.
Everything else (counting, manifest, retries, error policy) stays in the
parent.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from ferry.mover.backends.base import Backend, Entry
from ferry.mover.engine.tasks import Vanished
from ferry.mover.engine.wholefile import copy_small
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.options import Preserve

if TYPE_CHECKING:
    from multiprocessing.pool import Pool

VANISHED = "VANISHED"
Item = tuple[str, str, Entry]  # (destination path, source path, source entry)
Outcome = tuple[str | None, str | None, str | None]  # (digest, error kind name, message)

_worker: tuple[Backend, Backend, bool, Preserve, bool] | None = None


def _init(src: Backend, dst: Backend, hashing: bool, preserve: Preserve, xattrs: bool) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker = (src, dst, hashing, preserve, xattrs)


def _copy_batch(items: list[Item]) -> list[Outcome]:
    assert _worker is not None
    src, dst, hashing, preserve, xattrs = _worker
    out: list[Outcome] = []
    for rel, read_rel, entry in items:
        try:
            out.append(
                (copy_small(src, dst, rel, read_rel, entry, hashing, preserve, xattrs), None, None)
            )
        except Vanished:
            out.append((None, VANISHED, None))
        except Exception as exc:
            err = as_ferry_error(exc, rel)
            out.append((None, err.kind.name, str(err)))
    return out


class SmallFilePool:
    def __init__(
        self,
        src: Backend,
        dst: Backend,
        workers: int,
        hashing: bool,
        preserve: Preserve,
        xattrs: bool,
    ) -> None:
        import multiprocessing  # only when a run has many small files: it costs start-up time

        ctx = multiprocessing.get_context("fork")
        self.pool: Pool = ctx.Pool(
            workers, initializer=_init, initargs=(src, dst, hashing, preserve, xattrs)
        )

    def submit(
        self,
        items: list[Item],
        done: Callable[[list[Outcome]], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        self.pool.apply_async(_copy_batch, (items,), callback=done, error_callback=failed)

    def close(self, cancel: bool) -> None:
        if cancel:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


def outcome_error(rel: str, kind: str, message: str) -> FerryError:
    return FerryError(ErrorKind[kind], message, rel)
