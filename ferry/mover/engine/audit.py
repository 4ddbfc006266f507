"""`--audit-log FILE|-`: one JSON line per decision and action, append-only, flushed per
line, so a crash leaves every line written before it and a collector tailing the file (or
stdout) sees each as it happens. Fed by the ledger, the one place every executor path and
the dry run book through; messages pass `redact` (no credential ever reaches the log)."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO

from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.redact import redact


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
                "path": path,
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
