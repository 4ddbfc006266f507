"""The final summary of one transfer, as the CLI prints it and the operator stores it.

camelCase keys so `ferry copy --json`, the mover's termination message and a
TransferJob's `status.result` are the same document.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from ferry.mover.errors import ErrorKind, FerryError

MAX_REPORTED_ERRORS = 20


class ErrorRecord(NamedTuple):
    path: str | None
    kind: ErrorKind
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.kind.reason, "message": self.message}


class Summary:
    """A run's counters, filled in as it goes; the defaults below are the starting values."""

    files_copied: int = 0
    files_updated: int = 0
    files_skipped: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    dirs_created: int = 0
    links_created: int = 0
    bytes_transferred: int = 0
    bytes_skipped: int = 0
    bytes_deleted: int = 0
    bytes_resumed: int = 0
    files_verified: int = 0
    differences: int = 0
    elapsed_seconds: float = 0.0
    error_count: int = 0
    fatal: FerryError | None = None

    def __init__(self, operation: str = "copy", *, dry_run: bool = False, **counts: float) -> None:
        self.operation, self.dry_run = operation, dry_run
        self.errors: list[ErrorRecord] = []
        # Preserved properties (options.PRESERVE_FLAGS) the destination did not keep.
        self.preserve_dropped: list[str] = []
        for name, value in counts.items():
            if not isinstance(getattr(Summary, name, None), int | float):
                raise TypeError(f"Summary has no counter {name!r}")
            setattr(self, name, value)

    def add_error(self, err: FerryError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(ErrorRecord(err.path, err.kind, str(err)))

    @property
    def throughput(self) -> float:
        return self.bytes_transferred / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.fatal is not None:
            return self.fatal.kind.exit_code
        if self.error_count or self.differences or self.files_failed:
            return ErrorKind.PARTIAL.exit_code
        return 0

    @property
    def reason(self) -> str:
        if self.fatal is not None:
            return self.fatal.kind.reason
        return "PartialFailure" if self.exit_code else "Completed"

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "status": "ok" if self.exit_code == 0 else "failed",
            "reason": self.reason,
            "exitCode": self.exit_code,
            "retryable": self.fatal.kind.retryable if self.fatal else False,
            "message": str(self.fatal) if self.fatal else None,
            "dryRun": self.dry_run,
            "filesCopied": self.files_copied,
            "filesUpdated": self.files_updated,
            "filesSkipped": self.files_skipped,
            "filesDeleted": self.files_deleted,
            "filesFailed": self.files_failed,
            "dirsCreated": self.dirs_created,
            "linksCreated": self.links_created,
            "filesVerified": self.files_verified,
            "differences": self.differences,
            "bytesTransferred": self.bytes_transferred,
            "bytesSkipped": self.bytes_skipped,
            "bytesResumed": self.bytes_resumed,
            "bytesDeleted": self.bytes_deleted,
            "elapsedSeconds": round(self.elapsed_seconds, 3),
            "bytesPerSecond": round(self.throughput),
            "errorCount": self.error_count,
            "errors": [e.to_json() for e in self.errors],
            "preserveDropped": self.preserve_dropped,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))
