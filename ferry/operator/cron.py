"""Cron arithmetic for TransferSchedules: zones, jitter, due and missed times.

Pure functions of (expression, zone, jitter, clock) so the schedule logic is
tested with a controlled clock and no cluster. Zones come from zoneinfo with
the `tzdata` package as a fallback, so a slim image without /usr/share/zoneinfo
still knows Europe/Berlin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

# Never enumerate more than this many scheduled times in one reconcile: a
# schedule of every second after a week of downtime must not spin the operator.
MAX_ENUMERATED = 10_000
# The longest gap between runs is looked for over this span (a week covers weekday-only
# schedules), over at least GAP_MIN_RUNS runs (a monthly one) and at most GAP_MAX_RUNS.
GAP_SPAN = timedelta(days=8)
GAP_MIN_RUNS = 13
GAP_MAX_RUNS = 2_000


def validate_cron(expr: str) -> None:
    """Raise ValueError unless `expr` is a 5-field (6 with seconds last) cron or a @macro."""
    fields = expr.split()
    if not expr.startswith("@") and len(fields) not in (5, 6):
        raise ValueError("must have 5 fields (6 with seconds)")
    if not croniter.is_valid(expr):
        raise ValueError(f"not a valid cron expression: {expr!r}")


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone `name` (UTC when None); ValueError names the unknown zone."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def jitter_offset(uid: str, jitter_seconds: int) -> int:
    """A stable offset in [0, jitter_seconds) derived from the object's uid.

    Stable across operator restarts and replicas, different between objects,
    so a thousand schedules at "0 2 * * *" do not all start at 02:00:00.
    """
    if jitter_seconds <= 0:
        return 0
    digest = hashlib.sha256(uid.encode()).digest()
    return int.from_bytes(digest[:8], "big") % jitter_seconds


class Cron:
    """A cron expression in a zone, shifted by a fixed jitter."""

    def __init__(self, expr: str, tz: str | None = None, offset_seconds: int = 0) -> None:
        validate_cron(expr)
        self.expr = expr
        self.tz = zone(tz)
        self.offset = timedelta(seconds=offset_seconds)

    def describe(self) -> str:
        parts = [self.expr]
        if self.offset:
            parts.append(f"+{int(self.offset.total_seconds())}s")
        parts.append(str(self.tz))
        return " ".join(parts)

    def times_after(self, start: datetime) -> Iterator[datetime]:
        """Scheduled times strictly after `start`, ascending, in UTC."""
        base = (start - self.offset).astimezone(self.tz)
        it = croniter(self.expr, base)
        while True:
            t: datetime = it.get_next(datetime)
            yield (t + self.offset).astimezone(UTC)

    def next_after(self, start: datetime) -> datetime:
        return next(self.times_after(start))

    def due(self, since: datetime, now: datetime) -> tuple[datetime | None, int]:
        """The latest scheduled time in (since, now] and how many earlier ones it skips over."""
        latest: datetime | None = None
        skipped = 0
        for n, t in enumerate(self.times_after(since)):
            if t > now:
                break
            if latest is not None:
                skipped += 1
            latest = t
            if n >= MAX_ENUMERATED:
                # Jump: count the rest coarsely by restarting near `now`.
                rest, _ = self.due(self._prev(now), now)
                return rest or latest, skipped
        return latest, skipped

    def _prev(self, now: datetime) -> datetime:
        base = (now - self.offset).astimezone(self.tz)
        t: datetime = croniter(self.expr, base).get_prev(datetime)
        return (t + self.offset).astimezone(UTC) - timedelta(seconds=1)

    def longest_gap(self, start: datetime) -> float:
        """Seconds of the longest wait between consecutive runs after `start`.

        What an alert on "no success within the expected interval" needs: a weekday-only
        schedule waits three days over a weekend, not one. Computed once per expression,
        zone and jitter (the answer hardly depends on `start`), so polls stay cheap.
        """
        return _longest_gap(self.expr, str(self.tz), self.offset, start)


# (expression, zone, jitter) -> longest gap; bounded, cleared when full.
_GAPS: dict[tuple[str, str, timedelta], float] = {}


def _longest_gap(expr: str, tz: str, offset: timedelta, start: datetime) -> float:
    key = (expr, tz, offset)
    if key not in _GAPS:
        if len(_GAPS) >= 4096:
            _GAPS.clear()
        c = Cron(expr, tz, int(offset.total_seconds()))
        longest, prev = 0.0, None
        for n, t in enumerate(c.times_after(start)):
            if prev is not None:
                longest = max(longest, (t - prev).total_seconds())
            if n >= GAP_MAX_RUNS or (n >= GAP_MIN_RUNS and t - start >= GAP_SPAN):
                break
            prev = t
        _GAPS[key] = longest
    return _GAPS[key]
