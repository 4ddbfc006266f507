"""`--audit-log FILE|-`: one JSON line per decision and action, append-only, flushed per
line, so a crash leaves every line written before it and a collector tailing the file (or
stdout) sees each as it happens. Fed by the ledger, the one place every executor path and
the dry run book through; messages pass `redact` (no credential ever reaches the log)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from typing import IO, TYPE_CHECKING

from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.redact import redact

if TYPE_CHECKING:
    from ferry.mover.backends.base import Backend
    from ferry.mover.options import Options


class AuditLog:
    """Lines of {time, op, path, size, bytes, digest, result, error, attempt}."""

    def __init__(self, target: str) -> None:
        self._own = target != "-"
        try:
            self.f: IO[str] = (
                open(target, "a", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
                if self._own
                else sys.stdout
            )
        except OSError as exc:
            raise FerryError(
                ErrorKind.USAGE, f"--audit-log: cannot open {target!r}: {exc.strerror}"
            ) from exc
        self._lock = threading.Lock()

    def write(
        self,
        op: str,
        path: str,
        result: str,
        *,
        size: int | None = None,
        nbytes: int | None = None,
        digest: str | None = None,
        error: str | None = None,
        attempt: int = 1,
    ) -> None:
        line = json.dumps(
            {
                "time": time.time(),
                "op": op,
                "path": path or ".",  # the root itself (its metadata), as verify names it
                "size": size,
                "bytes": nbytes,
                "digest": digest,
                "result": result,
                "error": redact(error) if error is not None else None,
                "attempt": attempt,
            },
            ensure_ascii=False,
        )
        with self._lock:
            self.f.write(line + "\n")
            self.f.flush()

    def close(self) -> None:
        if self._own:
            self.f.close()
        else:
            self.f.flush()


def protect_own(options: Options, dst: Backend) -> Options:
    """`options` with the audit log's own file protected when it lies in a local destination:
    a sync must not compare, overwrite or delete the file it is writing."""
    from ferry.mover.backends.local import LocalBackend

    if options.audit_log in (None, "-") or not isinstance(dst, LocalBackend):
        return options
    root = os.path.realpath(dst.root)
    path = os.path.realpath(str(options.audit_log))
    if os.path.commonpath([root, path]) != root or path == root:
        return options
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    if rel in options.protect:
        return options
    return dataclasses.replace(options, protect=(*options.protect, rel))
