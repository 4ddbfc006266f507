"""The final summary of one transfer, as the CLI prints it and the operator stores it.

camelCase keys so `ferry copy --json`, the mover's termination message and a
TransferJob's `status.result` are the same document. The counters are declared
once, here: the operator sums every `int` field of `Summary` over its shards
(`COUNTERS`) and builds the CRD's result model from `NUMBERS`.
"""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any

from ferry.mover.errors import ErrorKind, FerryError

MAX_REPORTED_ERRORS = 20


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    path: str | None
    kind: ErrorKind
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.kind.reason, "message": self.message}


@dataclass(slots=True)
class Summary:
    """A run's counters, filled in as it goes; the defaults are the starting values.

    The numbers are declared in the order of the JSON document. Every `int` is a counter
    that adds up over shards; `elapsed_seconds` does not (shards run side by side)."""

    operation: str = "copy"
    _: KW_ONLY
    dry_run: bool = False
    files_copied: int = 0
    files_updated: int = 0
    files_skipped: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    dirs_created: int = 0
    links_created: int = 0
    files_verified: int = 0
    differences: int = 0
    # What crossed: whole files' bytes, and a delta-sent file's encoded delta (literal data
    # plus instructions); bytes_matched: what delta-sent files reused from the basis.
    bytes_transferred: int = 0
    bytes_matched: int = 0
    bytes_skipped: int = 0
    bytes_resumed: int = 0
    bytes_deleted: int = 0
    elapsed_seconds: float = 0.0
    error_count: int = 0
    fatal: FerryError | None = None
    errors: list[ErrorRecord] = field(default_factory=list)
    # Preserved properties (options.PRESERVE_FLAGS) the destination did not keep.
    preserve_dropped: list[str] = field(default_factory=list)
    # What the run chose (tuning.Tuning.report, without the "from" details -v logs).
    tuning: dict[str, Any] | None = None

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
        out: dict[str, Any] = {
            "operation": self.operation,
            "status": "ok" if self.exit_code == 0 else "failed",
            "reason": self.reason,
            "exitCode": self.exit_code,
            "retryable": self.fatal.kind.retryable if self.fatal else False,
            "message": str(self.fatal) if self.fatal else None,
            "dryRun": self.dry_run,
        }
        for name in NUMBERS:
            if name == "elapsed_seconds":
                out["elapsedSeconds"] = round(self.elapsed_seconds, 3)
                out["bytesPerSecond"] = round(self.throughput)  # derived, after the time
            else:
                out[wire_name(name)] = getattr(self, name)
        out["errors"] = [e.to_json() for e in self.errors]
        out["preserveDropped"] = self.preserve_dropped
        if self.tuning is not None:
            out["tuning"] = self.tuning
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))


def wire_name(name: str) -> str:
    """files_copied -> filesCopied: a field's name in the JSON document."""
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


# `from __future__ import annotations` leaves each field's type as its source text.
NUMBERS: tuple[str, ...] = tuple(f.name for f in fields(Summary) if f.type in ("int", "float"))
COUNTERS: tuple[str, ...] = tuple(f.name for f in fields(Summary) if f.type == "int")
