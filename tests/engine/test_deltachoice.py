"""`--delta auto`'s per-file decision (engine/deltachoice.py) from explicit inputs: the
link's measured rate against the delta's, the probe before anything was measured, and
--bwlimit as a cap on the link."""

from __future__ import annotations

from ferry.mover.backends.base import MeasuresLink
from ferry.mover.backends.local import LocalBackend
from ferry.mover.engine.deltachoice import (
    DEFAULT_DELTA_RATE,
    PRIOR_BYTES,
    PROBE_MIN_FILE,
    TIMED_DELTA,
    DeltaChoice,
    delta_pays,
)
from ferry.mover.rate import Rate

MB = 1e6
MiB = 1 << 20


class Link(LocalBackend):
    """A local destination whose link rates are given: what a measured wire would say."""

    def __init__(self, root: str, measured: float | None, probed: float | None) -> None:
        super().__init__(root)
        self.measured, self.probed, self.probes = measured, probed, 0

    def link_rate(self) -> float | None:
        return self.measured

    def probe_link(self) -> float | None:
        self.probes += 1
        return self.probed  # an answer; link_rate stays what file data measured


def test_a_slow_link_takes_the_delta_and_a_fast_one_the_whole_file() -> None:
    assert delta_pays(link_rate=12.5 * MB, delta_rate=DEFAULT_DELTA_RATE)  # 100 Mbit/s
    assert delta_pays(link_rate=125 * MB, delta_rate=DEFAULT_DELTA_RATE)  # 1 Gbit/s
    assert not delta_pays(link_rate=600 * MB, delta_rate=DEFAULT_DELTA_RATE)  # loopback
    assert not delta_pays(link_rate=1250 * MB, delta_rate=DEFAULT_DELTA_RATE)  # 10 Gbit/s
    assert delta_pays(link_rate=None, delta_rate=DEFAULT_DELTA_RATE)  # unknown: the delta
    # A measured slow delta (a cold basis on a slow disk) loses to a modest link.
    assert not delta_pays(link_rate=125 * MB, delta_rate=80 * MB)


def test_the_choice_follows_the_measured_link(tmp_path) -> None:
    fast = Link(str(tmp_path), measured=700 * MB, probed=None)
    assert isinstance(fast, MeasuresLink)
    assert not DeltaChoice(fast).pays(100 * MiB)
    slow = Link(str(tmp_path), measured=20 * MB, probed=None)
    assert DeltaChoice(slow).pays(100 * MiB)
    assert fast.probes == slow.probes == 0  # measured already: no probe


def test_before_any_measurement_a_large_file_probes_once(tmp_path) -> None:
    link = Link(str(tmp_path), measured=None, probed=900 * MB)
    choice = DeltaChoice(link)
    # A small file does not pay for a probe: the conservative default, the delta.
    assert choice.pays(PROBE_MIN_FILE - 1)
    assert link.probes == 0
    assert not choice.pays(PROBE_MIN_FILE)
    assert not choice.pays(PROBE_MIN_FILE)
    assert not choice.pays(PROBE_MIN_FILE - 1)  # probed once: its answer serves all sizes
    assert link.probes == 1
    # File data measured since: that, not the probe, decides.
    link.measured = 20 * MB
    assert choice.pays(PROBE_MIN_FILE)
    # A destination without a probe answer: the delta.
    dumb = Link(str(tmp_path), measured=None, probed=None)
    assert DeltaChoice(dumb).pays(PROBE_MIN_FILE * 4) and dumb.probes == 1


def test_bwlimit_caps_the_link(tmp_path) -> None:
    fast = Link(str(tmp_path), measured=700 * MB, probed=None)
    assert DeltaChoice(fast, bwlimit=10_000_000).pays(100 * MiB)
    # Nothing measured and too small to probe: --bwlimit alone says the link is slow...
    unknown = Link(str(tmp_path), measured=None, probed=None)
    assert DeltaChoice(unknown, bwlimit=10_000_000).link_rate(MiB) == 10_000_000
    # ...or fast enough that a whole file wins.
    assert not DeltaChoice(unknown, bwlimit=2_000_000_000).pays(MiB)
    # A destination that measures nothing (a local one) has only --bwlimit to go by.
    local = LocalBackend(str(tmp_path))
    assert DeltaChoice(local).link_rate(PROBE_MIN_FILE) is None
    assert DeltaChoice(local, bwlimit=5_000_000).link_rate(PROBE_MIN_FILE) == 5_000_000


def test_measured_deltas_move_the_delta_rate_from_its_prior(tmp_path) -> None:
    link = Link(str(tmp_path), measured=200 * MB, probed=None)
    choice = DeltaChoice(link)
    assert choice.delta_rate() == DEFAULT_DELTA_RATE and choice.pays(100 * MiB)
    # A small delta's time is its round trips: not counted...
    choice.delta_done(TIMED_DELTA - 1, 0.5)
    assert choice.delta_rate() == DEFAULT_DELTA_RATE
    # ...one slow large one moves it some way...
    choice.delta_done(TIMED_DELTA, TIMED_DELTA / (50 * MB))
    assert 200 * MB < choice.delta_rate() < DEFAULT_DELTA_RATE
    # ...deltas that ran at 100 MB/s, several times the prior's bytes, do: whole is faster.
    for _ in range(8):
        choice.delta_done(PRIOR_BYTES, PRIOR_BYTES / (100 * MB))
    assert choice.delta_rate() < 150 * MB
    assert not choice.pays(100 * MiB)


def test_rate_needs_its_minimum_and_keeps_a_window() -> None:
    r = Rate(min_bytes=MiB, window=4)
    assert r.rate() is None
    r.add(MiB // 2, 0.01)
    assert r.rate() is None  # under the minimum
    r.add(MiB // 2, 0.01)
    assert r.rate() == MiB / 0.02
    r.add(0, 1.0)  # nothing moved: no sample
    r.add(MiB, -1.0)  # a clock that went back: no sample
    assert r.rate() == MiB / 0.02
    for _ in range(4):
        r.add(MiB, 1.0)  # the window forgets the fast start
    assert r.rate() == MiB / 1.0
    assert r.measured() == 4 * MiB
