"""Small files: copied in worker processes between two local trees, and read or
written whole for the batches remote backends take (`read_small`, `write_small`).

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

from ferry.mover.backends.base import Backend, Entry, Reader
from ferry.mover.errors import ErrorKind, FerryError, as_ferry_error
from ferry.mover.integrity import digest_bytes
from ferry.mover.options import Preserve

if TYPE_CHECKING:
    from multiprocessing.pool import Pool

VANISHED = "VANISHED"
Item = tuple[str, str, Entry]  # (destination path, source path, source entry)
Outcome = tuple[str | None, str | None, str | None]  # (digest, error kind name, message)

_worker: tuple[Backend, Backend, bool, Preserve, bool] | None = None


class Vanished(Exception):
    """The source file disappeared between the scan and the copy (not an error, as in rsync)."""


def open_source(src: Backend, rel: str, entry: Entry) -> Reader:
    try:
        return src.open_read(rel, entry)
    except FerryError as err:
        if err.kind == ErrorKind.SOURCE_NOT_FOUND:
            raise Vanished() from err
        raise


def copy_small(
    src: Backend,
    dst: Backend,
    rel: str,
    read_rel: str,
    entry: Entry,
    hashing: bool,
    preserve: Preserve,
    xattrs: bool,
) -> str | None:
    """Copy one file in a single read and write; return its digest (None when not hashing)."""
    reader = open_source(src, read_rel, entry)
    try:
        writer = dst.open_write(rel, entry)
        try:
            data = _read_whole(reader, entry, rel)
            digest = digest_bytes(data) if hashing else None
            if data:
                writer.write_at(0, data)
            why = reader.changed()
            if why:
                raise FerryError(ErrorKind.SOURCE_CHANGED, why, rel)
            if xattrs:
                attrs = reader.xattrs()
                if attrs:
                    writer.set_xattrs(attrs)
            writer.commit(entry, digest, preserve)
            return digest
        except BaseException:
            writer.abort()
            raise
    finally:
        reader.close()


def read_small(src: Backend, rel: str, read_rel: str, entry: Entry) -> bytes:
    """A whole small file in one read, checked against changes while it was read, for a
    batch (`Backend.put_small`)."""
    reader = open_source(src, read_rel, entry)
    try:
        data = bytes(_read_whole(reader, entry, rel))
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


def _read_whole(reader: Reader, entry: Entry, rel: str) -> bytes | memoryview:
    data = reader.read_at(0, entry.size) if entry.size else b""
    if len(data) != entry.size:
        raise FerryError(ErrorKind.SOURCE_CHANGED, "file shrank while copying", rel)
    return data


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
