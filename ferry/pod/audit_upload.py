"""A TransferJob's file audit log at a remote destination (s3, sftp, smb, ferry): the mover
appends the lines to a temp file in the pod as it goes, and uploads that file through the
destination's backend when the run ends (success, failure or dry run). An object store
cannot append, so each run replaces the previous file. The upload's failure is reported,
redacted, and does not fail a transfer that succeeded: the data is where it should be."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ferry.mover.backends import open_backend
from ferry.mover.backends.base import Backend, Entry, EntryType
from ferry.mover.endpoints import Endpoint
from ferry.mover.errors import FerryError, as_ferry_error
from ferry.mover.options import Preserve
from ferry.mover.redact import redact

PIECE = 8 << 20  # what one write_at carries: the file is streamed, never held whole


@contextmanager
def temp_file() -> Iterator[str]:
    """A fresh file in the pod's writable temp dir for the lines; removed afterwards."""
    fd, path = tempfile.mkstemp(prefix="ferry-audit-", suffix=".jsonl")
    os.close(fd)
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def upload(local: str, endpoint: Endpoint, rel: str) -> None:
    """Put the file `local` at `rel` under the destination `endpoint`'s root, replacing
    whatever is there; directories are created where the storage has them."""
    dst = open_backend(endpoint)
    try:
        _put(dst, local, rel)
    finally:
        dst.close()


def _put(dst: Backend, local: str, rel: str) -> None:
    dst.prepare_destination()  # a dry run, or a run that failed early, made no root
    parts = rel.split("/")
    for i in range(1, len(parts)):
        dst.mkdir("/".join(parts[:i]))
    size = os.path.getsize(local)
    entry = Entry(parts[-1], EntryType.FILE, size=size, mtime_ns=time.time_ns(), mode=0o644)
    writer = dst.open_write(rel, entry)
    try:
        with open(local, "rb") as f:
            offset = 0
            while offset < size:
                data = f.read(min(PIECE, size - offset))
                if not data:
                    break
                writer.write_at(offset, data)
                offset += len(data)
        if offset != size:
            writer.set_size(offset)
            entry.size = offset
        writer.commit(entry, None, Preserve(times=True, perms=True, owners=False))
    except BaseException:
        writer.abort()
        raise


def failure(exc: BaseException, where: str) -> str:
    """What the run's result says when the audit log could not be kept: no credential."""
    err = exc if isinstance(exc, FerryError) else as_ferry_error(exc)
    return redact(f"auditLog: the audit log could not be kept at {where}: {err}")
