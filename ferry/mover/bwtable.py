"""Bandwidth timetables: rclone's `--bwlimit` grammar, read against a wall clock.

`10M` (a rate all the time; `off` or `0`: no limit), or entries `HH:MM,RATE` separated by
spaces or semicolons (`08:00,512K 12:00,10M 18:00,off`: repeated every day), or all with a
weekday (`Mon-08:00,512K Sat-10:00,off`: repeated every week; mixed with those, an entry
without a weekday holds on every day, as rclone's). The entry in force at a
time is the last one at or before it, wrapping round to the previous day or week. Rates are
Ferry's sizes (binary units; a bare number is bytes/s, where rclone reads KiB/s). rclone's
`UP:DOWN` pair is refused: a Ferry run moves data one way.

`BwTable` is the parsed value (entries and the zone they are read in); `BwSchedule` asks it
for the rate now and caches the answer until the next boundary, so a caller may ask for
every chunk without converting the time each time.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.sizes import parse_size

DAY = 24 * 60  # minutes
WEEK = 7 * DAY
MAX_TEXT = 8192  # the operator's split of a 4096-character table, in bytes, fits
MAX_ENTRIES = 256  # an entry every hour of the week fits
RECHECK = 15 * 60  # seconds: zone offsets change on quarter hours, so look at least this often

_DAYS = {
    name: i
    for i, names in enumerate(
        (
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
            ("sun", "sunday"),
        )
    )
    for name in names
}
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_HHMM = re.compile(r"([0-9]{2}):([0-9]{2})")


def _bad(what: str, text: str, why: str) -> FerryError:
    return FerryError(ErrorKind.USAGE, f"{what} {text!r} {why}")


def _rate(text: str, what: str, entry: str) -> int:
    if ":" in text:
        raise _bad(
            what,
            entry,
            "is rclone's UP:DOWN pair; a Ferry run moves data one way, give one rate",
        )
    if text.lower() == "off":
        return 0
    try:
        return parse_size(text, what)
    except FerryError:
        raise _bad(what, entry, "has no rate like 512K, 10M or off") from None


def zone(name: str | None, what: str = "time zone") -> tzinfo | None:
    """The IANA zone `name`; None for the system's local zone (as `TZ` sets it)."""
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise FerryError(ErrorKind.USAGE, f"{what}: unknown time zone {name!r}") from exc


@dataclass(frozen=True)
class BwTable:
    """Start minutes (in the day, or in the week from Monday 00:00) and the rate from then
    (bytes/s, 0 unlimited), sorted; `tz` None is the system's local zone."""

    entries: tuple[tuple[int, int], ...]
    weekly: bool = False
    tz: tzinfo | None = None

    @classmethod
    def constant(cls, rate: int) -> BwTable:
        return cls(((0, rate),))

    @classmethod
    def parse(cls, text: str, what: str = "--bwlimit", tz: tzinfo | None = None) -> BwTable:
        """Parse rclone's grammar; every error names `what` and the bad entry."""
        if len(text) > MAX_TEXT:
            raise _bad(what, text[:40] + "...", f"is longer than {MAX_TEXT} characters")
        tokens = [t for t in re.split(r"[\s;]+", text) if t]
        if not tokens:
            raise _bad(what, text, "is empty; give a rate like 10M, off, or a timetable")
        if len(tokens) == 1 and "," not in tokens[0]:
            return cls(((0, _rate(tokens[0], what, tokens[0])),), tz=tz)
        if len(tokens) > MAX_ENTRIES:
            raise _bad(what, text[:40] + "...", f"has more than {MAX_ENTRIES} entries")
        daily: dict[int, int] = {}  # minute of the day: rate (every day)
        weekly: dict[int, int] = {}  # minute of the week from Monday: rate
        for tok in tokens:
            when, sep, rate = tok.partition(",")
            if not sep or "," in rate:
                raise _bad(what, tok, "is not an entry like 08:00,512K or Mon-08:00,512K")
            day, dash, hhmm = when.rpartition("-") if "-" in when else ("", "", when)
            m = _HHMM.fullmatch(hhmm)
            if m is None or int(m[1]) > 23 or int(m[2]) > 59:
                raise _bad(what, tok, "has no time HH:MM from 00:00 to 23:59")
            start = int(m[1]) * 60 + int(m[2])
            if dash:
                if day.lower() not in _DAYS:
                    raise _bad(what, tok, "has no weekday like Mon or Monday")
                start += _DAYS[day.lower()] * DAY
            starts = weekly if dash else daily
            if start in starts:
                raise _bad(what, tok, "repeats the time of an earlier entry")
            starts[start] = _rate(rate, what, tok)
        if not weekly:
            return cls(tuple(sorted(daily.items())), tz=tz)
        # As rclone: mixed with weekday entries, an entry without one holds on every day;
        # a weekday entry at the same minute overrides it on its day.
        week = {d * DAY + start: r for d in range(7) for start, r in daily.items()}
        week.update(weekly)
        if len(week) > MAX_ENTRIES:  # the week is what reaches each shard's pod, printed
            raise _bad(
                what,
                text[:40] + "...",
                f"has more than {MAX_ENTRIES} entries once its every-day entries are "
                "repeated on each weekday",
            )
        return cls(tuple(sorted(week.items())), weekly=True, tz=tz)

    @property
    def limited(self) -> bool:
        """Whether any entry limits the rate."""
        return any(rate for _, rate in self.entries)

    @property
    def period(self) -> int:
        return WEEK if self.weekly else DAY

    def _index(self, key: int) -> int:
        """The entry in force at minute `key` of the period (the last wraps round)."""
        return bisect.bisect_right(self.entries, (key, 2**63)) - 1  # -1: the last one

    def _key(self, wall: datetime) -> int:
        return (wall.weekday() * DAY if self.weekly else 0) + wall.hour * 60 + wall.minute

    def rate_at(self, when: float) -> int:
        """The rate (bytes/s, 0 unlimited) at the POSIX time `when`."""
        return self.entries[self._index(self._key(datetime.fromtimestamp(when, self.tz)))][1]

    def next_change(self, when: float) -> float:
        """The POSIX time of the next entry's start after `when`, at most RECHECK ahead
        (a zone's offset may move the wall clock back over an entry; it changes on quarter
        hours)."""
        limit = (when // RECHECK + 1) * RECHECK
        if len(self.entries) == 1:
            return limit
        wall = datetime.fromtimestamp(when, self.tz)
        key = self._key(wall)
        i = self._index(key) + 1
        start = self.entries[i][0] if i < len(self.entries) else self.entries[0][0] + self.period
        naive = wall.replace(second=0, microsecond=0, tzinfo=None) + timedelta(minutes=start - key)
        # A wall time in a spring-forward gap has two readings: the earlier, so never late.
        at = min(self._stamp(naive, 0), self._stamp(naive, 1))
        return min(limit, at) if at > when else min(limit, when + 60)

    def _stamp(self, naive: datetime, fold: int) -> float:
        local = naive.replace(fold=fold)
        return (local if self.tz is None else local.replace(tzinfo=self.tz)).timestamp()

    def split(self, n: int) -> BwTable:
        """Each of `n` pods' share: every limited entry's rate over n (at least 1 byte/s)."""
        if n <= 1:
            return self
        entries = tuple((s, max(1, r // n) if r else 0) for s, r in self.entries)
        return BwTable(entries, self.weekly, self.tz)

    def __str__(self) -> str:
        """rclone's grammar again, rates in bytes/s (what `parse` reads back)."""

        def rate(r: int) -> str:
            for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
                if r % size == 0:
                    return f"{r // size}{unit}" if r else "off"
            return str(r)

        if len(self.entries) == 1 and self.entries[0][0] == 0 and not self.weekly:
            return rate(self.entries[0][1])
        out = []
        for start, r in self.entries:
            day, minute = divmod(start, DAY)
            hhmm = f"{minute // 60:02d}:{minute % 60:02d}"
            out.append(f"{_DAY_NAMES[day] + '-' if self.weekly else ''}{hhmm},{rate(r)}")
        return " ".join(out)


class BwSchedule:
    """The rate a table gives now, by a wall clock (injected for tests), cached until the
    next boundary: asking costs a clock read and a comparison."""

    def __init__(self, table: BwTable, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.clock = clock
        self._lock = threading.Lock()
        self._since = float("inf")
        self._until = float("-inf")
        self._rate = 0

    def rate(self) -> int:
        """Bytes/s now; 0: no limit."""
        now = self.clock()
        if not self._since <= now < self._until:  # past the boundary, or the clock stepped back
            with self._lock:
                self._rate = self.table.rate_at(now)
                self._since, self._until = now, self.table.next_change(now)
        return self._rate
