"""Bandwidth timetables (rclone's --bwlimit grammar): parsing, the rate at a time in a
zone (day and week wrap, DST), the cached schedule, and the limiter following it mid-run,
all on clocks the tests control."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.mover.bwtable import DAY, BwSchedule, BwTable, zone
from ferry.mover.engine.stream import RateLimiter
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.options import KiB, MiB, Options
from ferry.mover.spec import OptionsSpec
from tests.conftest import run_ferry

MON, TUE, SAT, SUN = 0, 1, 5, 6


def at(text: str, tz: str = "UTC") -> float:
    """The POSIX time of wall time `text` (ISO) in zone `tz`."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(
    ("text", "entries", "weekly", "shown"),
    [
        ("10M", ((0, 10 * MiB),), False, "10M"),
        ("512k", ((0, 512 * KiB),), False, "512K"),
        ("1.5MiB", ((0, 3 * MiB // 2),), False, "1536K"),
        ("4096", ((0, 4096),), False, "4K"),
        ("1000", ((0, 1000),), False, "1000"),
        ("2T", ((0, 2 << 40),), False, "2T"),
        ("off", ((0, 0),), False, "off"),
        ("OFF", ((0, 0),), False, "off"),
        ("0", ((0, 0),), False, "off"),
        (
            "08:00,512K 12:00,10M 18:00,off",
            ((480, 512 * KiB), (720, 10 * MiB), (1080, 0)),
            False,
            "08:00,512K 12:00,10M 18:00,off",
        ),
        # Out of order, semicolons and extra blanks (rclone takes semicolons too): sorted.
        ("18:00,off;  08:00,1M", ((480, MiB), (1080, 0)), False, "08:00,1M 18:00,off"),
        ("23:59,1K", ((1439, KiB),), False, "23:59,1K"),
        (
            "Mon-08:00,512K Sat-10:00,off",
            ((480, 512 * KiB), (SAT * DAY + 600, 0)),
            True,
            "Mon-08:00,512K Sat-10:00,off",
        ),
        ("sunday-00:00,1M TUESDAY-23:59,2M", ((DAY + 1439, 2 * MiB), (SUN * DAY, MiB)), True, None),
    ],
)
def test_valid_timetables(
    text: str, entries: tuple[tuple[int, int], ...], weekly: bool, shown: str | None
) -> None:
    table = BwTable.parse(text)
    assert table.entries == entries and table.weekly == weekly
    if shown is not None:
        assert str(table) == shown
    assert BwTable.parse(str(table)) == table  # what the operator hands its pods reads back


@pytest.mark.parametrize(
    ("text", "bad", "why"),
    [
        ("", "''", "is empty"),
        ("   ", "'   '", "is empty"),
        (" ; ", "' ; '", "is empty"),
        ("fast", "'fast'", "has no rate"),
        ("1000X", "'1000X'", "has no rate"),
        ("-5M", "'-5M'", "has no rate"),
        ("10M:1M", "'10M:1M'", "UP:DOWN pair; a Ferry run moves data one way"),
        ("08:00,1M:512K", "'08:00,1M:512K'", "UP:DOWN pair"),
        ("08:00,1M bad", "'bad'", "is not an entry"),
        ("08:00", "'08:00'", "UP:DOWN pair"),  # rclone reads this as a pair of rates too
        ("08:00,1M,2M", "'08:00,1M,2M'", "is not an entry"),
        ("2401,666", "'2401,666'", "has no time HH:MM"),
        ("24:00,1M", "'24:00,1M'", "has no time HH:MM"),
        ("10:60,1M", "'10:60,1M'", "has no time HH:MM"),
        ("8:00,1M", "'8:00,1M'", "has no time HH:MM"),
        ("08:00,fast", "'08:00,fast'", "has no rate"),
        ("08:00,", "'08:00,'", "has no rate"),
        ("Mon-bad,1M", "'Mon-bad,1M'", "has no time HH:MM"),
        ("bad-10:20,1M", "'bad-10:20,1M'", "has no weekday"),
        ("Mon-Tue-10:20,1M", "'Mon-Tue-10:20,1M'", "has no weekday"),
        ("08:00,1M 08:00,2M", "'08:00,2M'", "repeats the time"),
        ("Mon-08:00,1M monday-08:00,2M", "'monday-08:00,2M'", "repeats the time"),
        ("Mon-00:00,1M " + "00:%02d,1M " * 37 % tuple(range(37)), "...'", "once its every-day"),
        ("08:00,1 " * 300, "'08:00,1 08:00,1 08:00,1 08:00,1 08:00,1 ...'", "more than 256"),
        ("1" * 9000, "...", "longer than 8192"),
    ],
)
def test_invalid_timetables_name_the_flag_and_the_entry(text: str, bad: str, why: str) -> None:
    with pytest.raises(FerryError) as exc:
        BwTable.parse(text, "--bwlimit")
    assert exc.value.kind == ErrorKind.USAGE
    msg = str(exc.value)
    assert msg.startswith("--bwlimit ") and why in msg and bad in msg, msg


_PIECES = st.sampled_from(
    ["08:00", "Mon-", "sat-", "23:59", "24:00", ",", " ", ";", "1M", "off", "0", ":", "-", "K"]
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_PIECES, max_size=12).map("".join)))
def test_fuzzed_text_parses_or_is_a_usage_error(text: str) -> None:
    try:
        table = BwTable.parse(text, "bandwidth")
    except FerryError as exc:
        assert exc.kind == ErrorKind.USAGE and str(exc).startswith("bandwidth ")
        return
    assert table.entries and all(r >= 0 for _, r in table.entries)
    assert BwTable.parse(str(table)) == table
    table.rate_at(at("2026-06-01T12:00:00"))


def test_rate_at_wraps_round_the_day() -> None:
    table = BwTable.parse("08:00,512K 12:00,10M 18:00,off", tz=ZoneInfo("UTC"))
    for wall, rate in [
        ("2026-06-01T00:00:00", 0),  # yesterday's 18:00 entry, wrapped round
        ("2026-06-01T07:59:59", 0),
        ("2026-06-01T08:00:00", 512 * KiB),
        ("2026-06-01T11:59:00", 512 * KiB),
        ("2026-06-01T12:00:00", 10 * MiB),
        ("2026-06-01T18:00:00", 0),
        ("2026-06-01T23:59:59", 0),
    ]:
        assert table.rate_at(at(wall)) == rate, wall
    one = BwTable.parse("08:00,1M", tz=UTC)  # a single entry holds all day
    assert one.rate_at(at("2026-06-01T03:00:00")) == MiB


def test_rate_at_wraps_round_the_week() -> None:
    table = BwTable.parse("Mon-08:00,512K Sat-10:00,off Sun-20:00,2M", tz=UTC)
    # 2026-06-01 is a Monday.
    for wall, rate in [
        ("2026-06-01T07:59:00", 2 * MiB),  # last Sunday's 20:00, wrapped round the week
        ("2026-06-01T08:00:00", 512 * KiB),
        ("2026-06-03T12:00:00", 512 * KiB),
        ("2026-06-06T09:59:00", 512 * KiB),
        ("2026-06-06T10:00:00", 0),
        ("2026-06-07T19:59:00", 0),
        ("2026-06-07T20:00:00", 2 * MiB),
    ]:
        assert table.rate_at(at(wall)) == rate, wall


def test_every_day_entries_mixed_with_weekday_entries_hold_on_every_day() -> None:
    """As rclone's: a weekday-less entry repeats on each day; a weekday entry at the same
    minute wins on its day."""
    table = BwTable.parse("08:00,1M 18:00,off Sat-08:00,4M", tz=UTC)
    assert table.weekly and len(table.entries) == 14
    # 2026-06-01 is a Monday.
    for wall, rate in [
        ("2026-06-01T07:59:00", 0),
        ("2026-06-01T08:00:00", MiB),
        ("2026-06-03T12:00:00", MiB),
        ("2026-06-03T18:00:00", 0),
        ("2026-06-06T08:00:00", 4 * MiB),  # Saturday: its own entry
        ("2026-06-06T18:00:00", 0),
        ("2026-06-07T08:00:00", MiB),
    ]:
        assert table.rate_at(at(wall)) == rate, wall
    assert BwTable.parse(str(table), tz=UTC) == table


def test_rate_at_follows_the_zone_and_its_dst_changes() -> None:
    ny = ZoneInfo("America/New_York")
    table = BwTable.parse("01:00,3M 02:30,1M 04:00,2M", tz=ny)
    # Spring forward, 8 March 2026: 02:00 EST becomes 03:00 EDT (07:00 UTC); 02:30 never
    # shows on the wall, so its entry takes over at 03:00.
    assert table.rate_at(at("2026-03-08T06:59:00")) == 3 * MiB  # 01:59 EST
    assert table.rate_at(at("2026-03-08T07:00:00")) == MiB  # 03:00 EDT
    assert table.rate_at(at("2026-03-08T08:00:00")) == 2 * MiB  # 04:00 EDT
    # Fall back, 1 November 2026: 02:00 EDT becomes 01:00 EST (06:00 UTC): the wall shows
    # 01:00 to 02:00 twice, and the table follows the wall.
    assert table.rate_at(at("2026-11-01T05:59:00")) == 3 * MiB  # 01:59 EDT
    assert table.rate_at(at("2026-11-01T06:00:00")) == 3 * MiB  # 01:00 EST
    assert table.rate_at(at("2026-11-01T07:30:00")) == MiB  # 02:30 EST
    # The same table read in UTC changes at other instants.
    utc = BwTable(table.entries, table.weekly, UTC)
    assert utc.rate_at(at("2026-03-08T07:00:00")) == 2 * MiB


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CountingTable(BwTable):
    def rate_at(self, when: float) -> int:
        COUNT[0] += 1
        return super().rate_at(when)


COUNT = [0]


@pytest.mark.parametrize(
    ("text", "tz", "start"),
    [
        ("01:00,3M 02:30,1M 04:00,2M", "America/New_York", "2026-03-07T22:00:00"),
        ("01:00,3M 01:30,1M 02:00,2M 12:00,off", "America/New_York", "2026-10-31T20:00:00"),
        ("Sun-23:59,1M Mon-00:00,2M Wed-12:00,off", "Europe/Berlin", "2026-03-28T20:00:00"),
        ("02:15,1M 02:45,2M", "Australia/Lord_Howe", "2026-04-04T12:00:00"),  # 30 min DST
    ],
)
def test_the_cached_schedule_always_gives_the_rate_now(text: str, tz: str, start: str) -> None:
    """Minute by minute through DST changes and wraps, the cached rate is the table's, and
    the table is consulted a few times an hour, not on every question."""
    table = BwTable.parse(text, tz=ZoneInfo(tz))
    counting = CountingTable(table.entries, table.weekly, table.tz)
    clock = Clock(at(start, "UTC"))
    bw = BwSchedule(counting, clock)
    COUNT[0] = 0
    asked = 0
    for _ in range(3 * 24 * 60 * 2):  # three days in half minutes
        for _ in range(3):  # several chunks at the same instant
            assert bw.rate() == table.rate_at(clock.t), datetime.fromtimestamp(clock.t, UTC)
            asked += 3
        clock.t += 30
    # The checks above ask `table` directly; the schedule's own lookups: a few an hour.
    own = COUNT[0]
    assert own <= 3 * 24 * 5 + 20 and own * 20 < asked, own


def test_a_clock_stepped_back_is_followed() -> None:
    table = BwTable.parse("08:00,1M 12:00,2M", tz=UTC)
    clock = Clock(at("2026-06-01T12:30:00"))
    bw = BwSchedule(table, clock)
    assert bw.rate() == 2 * MiB
    clock.t = at("2026-06-01T09:00:00")
    assert bw.rate() == MiB
    clock.t = at("2026-06-01T12:00:00")
    assert bw.rate() == 2 * MiB
    clock.t = at("2026-06-01T11:59:59")  # a second back, over the boundary
    assert bw.rate() == MiB


def test_split_shares_every_entry() -> None:
    table = BwTable.parse("08:00,4M 12:00,off 18:00,3")
    assert table.split(4).entries == ((480, MiB), (720, 0), (1080, 1))  # never 0 = unlimited
    assert table.split(1) is table


def test_zone_names_the_field() -> None:
    assert zone(None) is None
    with pytest.raises(FerryError, match="--bwlimit-tz: unknown time zone 'Mars/Base'"):
        zone("Mars/Base", "--bwlimit-tz")


def test_limiter_follows_the_timetable_mid_transfer() -> None:
    """One limiter, one run: 1 MiB/s, then 4 MiB/s at 08:01, then no limit at 08:02, with
    no restart; bytes admitted per second of (controlled) time match each entry."""
    table = BwTable.parse("08:00,1M 08:01,4M 08:02,off 20:00,1M", tz=UTC)
    wall = Clock(at("2026-06-01T08:00:30"))
    mono = Clock(1000.0)
    limiter = RateLimiter(BwSchedule(table, wall), clock=mono)
    admitted: list[tuple[float, int, int]] = []  # (wall time, bytes, rate applied)
    piece = 64 * KiB
    while wall.t < at("2026-06-01T08:02:30"):
        wait = limiter.admit(piece)
        admitted.append((wall.t, piece, limiter.rate))
        step = wait if wait > 0 else 0.001  # "off": the copy's own pace
        wall.t += step
        mono.t += step

    def window(a: str, b: str) -> tuple[float, set[int]]:
        t0, t1 = at(a), at(b)
        got = [(n, r) for t, n, r in admitted if t0 <= t < t1]
        return sum(n for n, _ in got) / (t1 - t0), {r for _, r in got}

    rate, applied = window("2026-06-01T08:00:35", "2026-06-01T08:00:55")
    assert applied == {MiB} and abs(rate - MiB) <= MiB * 0.02, rate
    rate, applied = window("2026-06-01T08:01:05", "2026-06-01T08:01:55")
    assert applied == {4 * MiB} and abs(rate - 4 * MiB) <= 4 * MiB * 0.02, rate
    rate, applied = window("2026-06-01T08:02:05", "2026-06-01T08:02:25")
    assert applied == {0} and rate > 50 * MiB  # nothing held back
    # The switch came at the boundary itself, not a chunk's worth of seconds later.
    first_fast = min(t for t, _, r in admitted if r == 4 * MiB)
    assert at("2026-06-01T08:01:00") <= first_fast < at("2026-06-01T08:01:00") + 0.1


def test_limiter_with_a_plain_rate_is_unchanged() -> None:
    mono = Clock(0.0)
    limiter = RateLimiter(2 * MiB, clock=mono)
    assert limiter.admit(MiB) == pytest.approx(0.5)
    mono.t += 0.5
    assert limiter.admit(MiB) == pytest.approx(0.5)
    assert limiter.rate == 2 * MiB


def test_options_spec_reads_the_timetable_in_its_zone() -> None:
    o = OptionsSpec.model_validate(
        {"bandwidth": "08:00,1M 18:00,off", "bandwidthTimeZone": "Asia/Tokyo"}
    )
    assert o.bandwidth == "08:00,1M 18:00,off"
    with pytest.raises(ValueError, match="bandwidth '09:00,1M:2M' is rclone's UP:DOWN"):
        OptionsSpec.model_validate({"bandwidth": "08:00,1M 09:00,1M:2M"})
    with pytest.raises(ValueError, match="unknown time zone 'Nowhere/City'"):
        OptionsSpec.model_validate({"bandwidth": "1M", "bandwidthTimeZone": "Nowhere/City"})


def test_options_bwtable_is_none_when_nothing_limits() -> None:
    assert Options().bwtable is None
    assert Options(bwlimit=BwTable.parse("off")).bwtable is None
    assert Options(bwlimit=BwTable.parse("08:00,off 09:00,1M")).bwtable is not None
    assert Options(bwlimit=MiB).bwtable == BwTable.constant(MiB)


def _entry_now(minutes_ahead: int, tz: str = "UTC") -> str:
    t = datetime.now(ZoneInfo(tz)) + timedelta(minutes=minutes_ahead)
    return f"{t:%H:%M}"


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kathmandu"])
def test_a_real_copy_is_throttled_by_the_entry_in_force(tmp_path: Path, tz: str) -> None:
    """The entry in force now, on the clock of --bwlimit-tz, is 2M (the next, off, is ten
    minutes away): the copy takes at least what 2 MiB/s allows (a generous lower bound; the
    limiter's own rates are asserted above). Kathmandu is 5:45 off UTC, so the same table
    read in another zone would be off."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(MiB))
    table = f"{_entry_now(0, tz)},2M {_entry_now(10, tz)},off"
    s = run_ferry("copy", src, dst, "--bwlimit", table, "--bwlimit-tz", tz, "--json").summary
    assert s["bytesTransferred"] == 3 * MiB
    assert s["elapsedSeconds"] >= 3 / 2 * 0.8, s["elapsedSeconds"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bwlimit", "08:00,1M 08:00,2M"], "--bwlimit '08:00,2M' repeats the time"),
        (["--bwlimit", "1M:2M"], "a Ferry run moves data one way"),
        (["--bwlimit", "1M", "--bwlimit-tz", "Nowhere/City"], "--bwlimit-tz: unknown time zone"),
        (["--bwlimit-tz", "UTC"], "--bwlimit-tz needs --bwlimit"),
    ],
)
def test_cli_refuses_bad_timetables(tmp_path: Path, args: list[str], message: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    r = run_ferry("copy", src, tmp_path / "dst", *args, check_rc=2)
    assert message in r.stderr, r.stderr
    assert not (tmp_path / "dst").exists()


_ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu"]


@settings(max_examples=150, deadline=None)
@given(
    starts=st.sets(st.integers(0, 7 * DAY - 1), min_size=1, max_size=8),
    rates=st.lists(st.sampled_from([0, 1, KiB, MiB]), min_size=8, max_size=8),
    weekly=st.booleans(),
    tz=st.sampled_from(_ZONES),
    t0=st.integers(1_700_000_000, 1_900_000_000),
    steps=st.lists(st.integers(-3600, 4 * 3600), min_size=1, max_size=60),
)
def test_the_cached_rate_is_the_tables_whatever_the_walk(
    starts: set[int], rates: list[int], weekly: bool, tz: str, t0: int, steps: list[int]
) -> None:
    keys = sorted({s if weekly else s % DAY for s in starts})
    table = BwTable(tuple(zip(keys, rates, strict=False)), weekly, ZoneInfo(tz))
    clock = Clock(float(t0))
    bw = BwSchedule(table, clock)
    for step in steps:
        clock.t += step
        assert bw.rate() == table.rate_at(clock.t)
