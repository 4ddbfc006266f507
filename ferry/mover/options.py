"""The engine's own view of one transfer's options.

Dataclasses: the command line builds them directly (no pydantic on the start-up
path); `spec.py` validates the same fields at the Kubernetes boundary and converts
to these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from ferry.mover.bwtable import BwTable
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.sizes import GiB as GiB
from ferry.mover.sizes import KiB as KiB
from ferry.mover.sizes import MiB, parse_size

DEFAULT_CHUNK_SIZE = 16 * MiB
# S3's default part (the S3 backend's chunks): each transfer holds one until it is sent, so
# the tuning counts it before the backend is opened.
S3_UPLOAD_CHUNK = 8 * MiB
MIN_BUFFER, MAX_BUFFER = 64 * KiB, 16 * MiB

PRESERVE_FLAGS = ("times", "perms", "owners", "xattrs", "links", "hardlinks", "sparse", "acls")
DEFAULT_PRESERVE = ("times", "perms", "links", "hardlinks", "sparse")


class Mode(StrEnum):
    COPY = "copy"
    SYNC = "sync"


class Compare(StrEnum):
    SIZE_MTIME = "size-mtime"
    CHECKSUM = "checksum"
    SIZE = "size"  # --size-only: equal sizes are the same file, whatever their mtimes


class ErrorPolicy(StrEnum):
    ABORT = "abort"
    SKIP = "skip"


class Verify(StrEnum):
    """none: trust the write; inline: digest from the one source read, source re-stat;
    full: additionally read the destination back and compare digests."""

    NONE = "none"
    INLINE = "inline"
    FULL = "full"


class Fsync(StrEnum):
    """end: one filesystem flush before deletes and before success is reported;
    file: also each file's data before it is published (power-cut-safe, slowest);
    none: leave write-back to the kernel, as cp and rsync do."""

    END = "end"
    FILE = "file"
    NONE = "none"


class Compress(StrEnum):
    """zstd per chunk on a ferry:// wire. auto: try each file's first chunks and stop when
    they do not shrink; on: try every chunk; off: never. A chunk crosses compressed only
    when that makes it smaller (see backends/ferry/protocol.SHRINK)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Delta(StrEnum):
    """How an updated regular file is sent. auto: where the destination may gain from one
    (`Limits.delta_pays`: across the ferry:// wire), as a block delta when the run's
    measurements say the link is slower than the delta (engine/deltachoice.py), else
    whole; on: as a
    delta wherever the destination can rebuild files from one (`DeltaBasis`), for files of
    at least DELTA_MIN; off: always whole."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


# Smaller updated files go whole: a signature and a round trip cost more than they save.
DELTA_MIN = 64 * 1024


class SymlinkPolicy(StrEnum):
    PRESERVE = "preserve"
    FOLLOW = "follow"
    SKIP = "skip"


class Preserve(NamedTuple):
    times: bool = True
    perms: bool = True
    owners: bool = False
    xattrs: bool = False
    links: bool = True
    hardlinks: bool = True
    sparse: bool = True
    acls: bool = False  # POSIX ACLs (ferry.mover.acl): local paths only

    @classmethod
    def parse(cls, text: str) -> Preserve:
        """`times,perms` sets exactly those; `+owners,-sparse` adjusts the defaults; `all`
        is every flag but acls (as rsync's -a leaves out -A), adjusted by what follows it
        (`all,+acls`, `all,-owners`)."""
        words = [w.strip() for w in text.split(",") if w.strip()]
        if not words:
            raise FerryError(
                ErrorKind.USAGE, f"--preserve {text!r} names no flag (say 'none' to keep nothing)"
            )
        if words == ["none"]:
            return cls(**dict.fromkeys(PRESERVE_FLAGS, False))
        everything = words[0] == "all"
        if everything:
            words = words[1:]
        relative = all(w[0] in "+-" for w in words)
        if not relative and any(w[0] in "+-" for w in words):
            raise FerryError(ErrorKind.USAGE, f"--preserve {text!r}: mix of absolute and +/- flags")
        if everything and not relative:
            raise FerryError(
                ErrorKind.USAGE, f"--preserve {text!r}: after 'all' give +flag or -flag"
            )
        chosen = dict.fromkeys(PRESERVE_FLAGS, False)
        if everything:
            chosen.update((f, f != "acls") for f in PRESERVE_FLAGS)
        elif relative:
            chosen.update(dict.fromkeys(DEFAULT_PRESERVE, True))
        for w in words:
            name = w.lstrip("+-")
            if name not in PRESERVE_FLAGS:
                raise FerryError(
                    ErrorKind.USAGE,
                    f"--preserve: unknown flag {name!r} (choose from {', '.join(PRESERVE_FLAGS)})",
                )
            chosen[name] = not w.startswith("-")
        return cls(**chosen)

    def flags(self) -> list[str]:
        return [f for f in PRESERVE_FLAGS if getattr(self, f)]


_PRESERVE = Preserve()  # immutable: one serves as every Options' default


class MinFree(NamedTuple):
    """The free space a transfer leaves at the destination: a size, or a percentage of the
    destination's total size."""

    size: int = 0
    percent: float = 0.0

    def reserve(self, total: int) -> int:
        """The reserve in bytes on a destination of `total` bytes."""
        return self.size if not self.percent else int(total * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else format_size(self.size)

    @classmethod
    def parse(cls, text: str, what: str = "--min-free") -> MinFree:
        """`5%` or `0.5%` of the destination's size, or a size such as `2G`; `0` for none."""
        t = text.strip()
        if not t.endswith("%"):
            return cls(size=parse_size(t, what))
        try:
            percent = float(t[:-1])
        except ValueError:
            percent = -1.0
        if not 0 <= percent < 100:
            raise FerryError(
                ErrorKind.USAGE,
                f"{what} {text!r} is not a percentage from 0% to below 100%, like 5%",
            )
        return cls(percent=percent)


# 1% of the destination: it scales from a small PVC to a large share, covers what the
# estimate leaves out (directories grown, filesystem metadata) and leaves an application
# that shares the volume room for its logs and temp files. `--min-free 0` keeps none.
DEFAULT_MIN_FREE = MinFree(percent=1.0)


@dataclass(slots=True, kw_only=True)
class Options:
    """One transfer's options, checked when built (the CLI and the mover spec build them)."""

    mode: Mode = Mode.COPY
    compare: Compare = Compare.SIZE_MTIME
    verify: Verify = Verify.INLINE
    fsync: Fsync = Fsync.END
    preserve: Preserve = _PRESERVE
    symlinks: SymlinkPolicy = SymlinkPolicy.PRESERVE
    delta: Delta = Delta.AUTO
    filters: tuple[str, ...] = ()
    transfers: int = 8
    chunk_size: int = 0  # 0: the destination's default_chunk_size, else DEFAULT_CHUNK_SIZE
    # Bytes/s (0: none), or a timetable (`ferry.mover.bwtable`); `bwtable` reads either.
    bwlimit: int | BwTable = 0
    retries: int = 3
    retry_base_delay: float = 0.5
    error_policy: ErrorPolicy = ErrorPolicy.ABORT
    dry_run: bool = False
    allow_empty_source: bool = False
    # File data in flight at once (ferry/mover/tuning.worker_bytes per worker): the engine
    # runs no more workers than this holds. The CLI and the mover's spec set it from the
    # memory limit (ferry/mover/host.py).
    max_in_flight_bytes: int = 128 * MiB
    # The piece each worker streams a file through (read, hashed, written): --buffer-size.
    buffer_size: int = 2 * MiB
    # What the run chose and why (tuning.Tuning.report): the summary's `tuning`, -v's log.
    tuning: dict[str, Any] | None = None
    manifest: str | None = None
    shard_index: int = 0
    shard_count: int = 1
    preflight: bool = True
    # Anything but the default object itself counts as asked for (refused with --no-preflight).
    min_free: MinFree = DEFAULT_MIN_FREE
    max_delete: int | None = None
    # False: every backend on its library path, no hand-written wire/ code (and so does
    # FERRY_ACCELERATORS=off in the environment: ferry.mover.backends.accelerators_on).
    accelerators: bool = True
    compress: Compress = Compress.AUTO  # ferry:// endpoints only
    rename: tuple[str, ...] = ()  # 's/REGEX/REPLACEMENT/' rules for destination names
    # --files-from: only these source-relative paths (and all below a listed directory).
    files_from: tuple[str, ...] | None = None
    delete_excluded: bool = False  # sync: what the filters leave out is deleted at the destination
    update: bool = False  # --update: a file newer at the destination is left as it is
    # --min-size/--max-size (bytes) and --min-age/--max-age (seconds): files outside them
    # are filtered (neither copied nor deleted), as rclone's.
    min_size: int | None = None
    max_size: int | None = None
    min_age: float | None = None
    max_age: float | None = None
    chmod: str | None = None  # rsync's --chmod list, applied to what is written
    chown: str | None = None  # rsync's --chown USER:GROUP, applied to what is written
    audit_log: str | None = None  # a file to append JSON lines to, '-' for stdout
    # Destination-relative paths a run never copies onto, compares or deletes (a TransferJob's
    # audit log kept in its destination), as the engine's own `.~ferry.` names.
    protect: tuple[str, ...] = ()

    @property
    def bwtable(self) -> BwTable | None:
        """The bandwidth limit as a timetable; None when it never limits."""
        table = (
            self.bwlimit if isinstance(self.bwlimit, BwTable) else BwTable.constant(self.bwlimit)
        )
        return table if table.limited else None

    def __post_init__(self) -> None:
        if self.transfers < 1:
            raise FerryError(ErrorKind.USAGE, "transfers must be at least 1")
        if self.chunk_size and (self.chunk_size < MiB or self.chunk_size % MiB):
            raise FerryError(
                ErrorKind.USAGE, "chunk size must be a whole number of MiB (at least 1M)"
            )
        if not MIN_BUFFER <= self.buffer_size <= MAX_BUFFER or self.buffer_size % (64 * KiB):
            raise FerryError(
                ErrorKind.USAGE,
                "buffer size must be a multiple of 64K from 64K to 16M (--buffer-size)",
            )
        if self.max_in_flight_bytes < self.buffer_size:
            raise FerryError(ErrorKind.USAGE, "the in-flight bound must hold one buffer")
        if self.retries < 0:
            raise FerryError(ErrorKind.USAGE, "retries must not be negative")
        if isinstance(self.bwlimit, int) and self.bwlimit < 0:
            raise FerryError(ErrorKind.USAGE, "bandwidth limit must not be negative")
        if not 0 <= self.shard_index < self.shard_count:
            raise FerryError(ErrorKind.USAGE, "shard index must be in [0, shard count)")
        if self.max_delete is not None and self.max_delete < 0:
            raise FerryError(ErrorKind.USAGE, "--max-delete must not be negative")
        if self.max_delete is not None and self.mode != Mode.SYNC:
            raise FerryError(ErrorKind.USAGE, "--max-delete applies only to sync (plan --sync)")
        for lo, hi, what in (
            (self.min_size, self.max_size, "size"),
            (self.min_age, self.max_age, "age"),
        ):
            for v, flag in ((lo, f"--min-{what}"), (hi, f"--max-{what}")):
                if v is not None and v < 0:
                    raise FerryError(ErrorKind.USAGE, f"{flag} must not be negative")
            if lo is not None and hi is not None and lo > hi:
                raise FerryError(
                    ErrorKind.USAGE, f"--min-{what} is above --max-{what}: no file could match"
                )
        if self.delete_excluded:
            if self.mode != Mode.SYNC:
                raise FerryError(
                    ErrorKind.USAGE, "--delete-excluded applies only to sync (plan --sync)"
                )
            bounds = (self.min_size, self.max_size, self.min_age, self.max_age)
            if not self.filters and self.files_from is None and all(b is None for b in bounds):
                raise FerryError(
                    ErrorKind.USAGE,
                    "--delete-excluded without a filter (--include/--exclude/--filter-from, "
                    "--files-from, --min/--max-size or -age) has nothing to delete",
                )
        if self.rename:
            from ferry.mover.rename import Renamer

            Renamer(self.rename)  # a malformed rule is refused here, naming it
        if self.chmod is not None or self.chown is not None:
            from ferry.mover.metaxform import Chmod, Chown

            # A malformed spec is refused here, naming the flag and the part.
            if self.chmod is not None:
                Chmod(self.chmod)
            if self.chown is not None:
                Chown.parse(self.chown)
            # A transform is a property written: it is kept (and compared) as preserved.
            if self.chmod is not None:
                self.preserve = self.preserve._replace(perms=True)
            if self.chown is not None:
                self.preserve = self.preserve._replace(owners=True)
        if not self.preflight and self.min_free is not DEFAULT_MIN_FREE:
            raise FerryError(
                ErrorKind.USAGE, "--min-free has no effect with --no-preflight: pass one of them"
            )


_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "M": 30 * 86400,
    "y": 365 * 86400,
}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d|w|M|y)")


def parse_duration(text: str, what: str = "duration") -> float:
    """`30s`, `5m`, `2h`, `7d`, `1h30m`, a bare number of seconds: rclone's units (`M` a
    30-day month, `y` 365 days). Seconds, as a float."""
    t = text.strip() if text else ""
    try:
        return _checked_seconds(float(t))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for m in _DURATION.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not t or pos != len(t):
        raise FerryError(
            ErrorKind.USAGE, f"{what} {text!r} is not a duration like 30s, 5m, 2h or 7d"
        )
    return total


def _checked_seconds(value: float) -> float:
    if not 0 <= value < float("inf"):
        raise ValueError(value)
    return value


def format_size(n: float) -> str:
    """`1.5 GiB`, `512 B`: binary units, for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)
