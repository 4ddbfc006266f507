"""Ferry's file metadata in S3 user metadata (x-amz-meta-ferry-*, plus rclone's `mtime`), both
ways, and S3's timestamps."""

from __future__ import annotations

import datetime
from typing import Any

from ferry.mover.backends.base import Entry
from ferry.mover.integrity import is_digest
from ferry.mover.options import Preserve

META_DIGEST, META_MTIME, META_MODE, META_RCLONE_MTIME = (
    "ferry-digest",
    "ferry-mtime-ns",
    "ferry-mode",
    "mtime",
)


def object_meta(entry: Entry, digest: str | None, preserve: Preserve | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    if preserve is None or preserve.times:
        meta[META_MTIME] = str(entry.mtime_ns)
        meta[META_RCLONE_MTIME] = f"{entry.mtime_ns // 10**9}.{entry.mtime_ns % 10**9:09d}"
    if entry.mode and (preserve is None or preserve.perms):
        meta[META_MODE] = f"{entry.mode & 0o7777:o}"
    if digest and is_digest(digest):
        meta[META_DIGEST] = digest
    return meta


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}


def parse_timestamp(text: str) -> datetime.datetime:
    """S3's two timestamp forms without dateutil (botocore's default parser, which costs
    more than the rest of a listing entry): ISO 8601 in XML, RFC 1123 in headers."""
    try:
        if text[:1].isdigit():
            return datetime.datetime.fromisoformat(text)
        _, day, month, year, hms, zone = text.split()  # "Sun, 06 Nov 1994 08:49:37 GMT"
        h, m, sec = hms.split(":")
        if zone != "GMT":
            raise ValueError(text)
        return datetime.datetime(
            int(year), _MONTHS[month], int(day), int(h), int(m), int(sec), tzinfo=datetime.UTC
        )
    except (ValueError, TypeError, IndexError, KeyError):
        from ferry.mover.backends.s3.client import parse_timestamp as botocore_parse

        return botocore_parse(text)


def ts_ns(ts: Any) -> int:
    if ts is None:
        return 0
    return int(ts.timestamp()) * 10**9


def apply_meta(e: Entry, meta: dict[str, str]) -> None:
    if meta.get(META_MTIME, "").isdigit():
        e.mtime_ns = int(meta[META_MTIME])
    elif META_RCLONE_MTIME in meta:
        try:
            sec, _, frac = meta[META_RCLONE_MTIME].partition(".")
            e.mtime_ns = int(sec) * 10**9 + int((frac + "000000000")[:9] or 0)
        except ValueError:
            pass
    try:
        e.mode = int(meta.get(META_MODE, "0"), 8)
    except ValueError:
        e.mode = 0
    d = meta.get(META_DIGEST)
    e.digest = d if is_digest(d) else None
