"""`--delta auto`, file by file: a block delta or the whole file, whichever this run's own
measurements say reaches this destination sooner.

Sending a file whole costs its bytes over the link: `MeasuresLink.link_rate`, the rate
the run's file data reached the destination, all streams together (a large file goes
whole in parallel chunks), counting pieces of 256 KiB or more only (batches of small
files take the server's per-file time; the probe is counted apart), capped by
`--bwlimit` (a timetable's entry in force at the decision). A delta costs the signature where the basis lives (reading it), the match
here (~800 MB/s a core), the rebuild there and the changed bytes over the link; its rate
is measured as well, each delta's source bytes over its time from signature to rebuilt
file (files of TIMED_DELTA or more), weighed against a prior of DEFAULT_DELTA_RATE (what
a 256 MiB delta took end to end on loopback) until deltas worth PRIOR_BYTES have run. A
delta goes where the link is slower than the delta.

Before the link was measured: a probe (`MeasuresLink.probe_link`, at most 17 MiB thrown
away, once per run) when the file is at least PROBE_MIN_FILE, so the probe is small beside
it. Otherwise, or where the destination takes no probe, the delta: the conservative
default, since a needless whole file on a slow link costs far more than a needless delta
on a fast one.
"""

from __future__ import annotations

import logging
import threading

from ferry.mover.backends.base import Backend, MeasuresLink
from ferry.mover.bwtable import BwSchedule, BwTable
from ferry.mover.errors import FerryError
from ferry.mover.options import MiB
from ferry.mover.rate import Rate

DEFAULT_DELTA_RATE = 300e6  # bytes/s, a delta start to end (benchmarks/README, the wire)
log = logging.getLogger("ferry")

PRIOR_BYTES = 64 * MiB
PROBE_MIN_FILE = 32 * MiB
# Deltas of smaller files are not timed: their round trips, not their bytes, set the time.
TIMED_DELTA = 4 * MiB


def delta_pays(link_rate: float | None, delta_rate: float) -> bool:
    """Whether a delta beats the whole file: whole takes size / link_rate, a delta
    size / delta_rate (as measured). An unknown link: the delta."""
    return link_rate is None or link_rate < delta_rate


class DeltaChoice:
    """The per-file decision of one run to one destination, and what it has measured."""

    def __init__(self, dst: Backend, bwlimit: int | BwSchedule = 0) -> None:
        self.dst = dst
        # The limit now (a timetable's current entry), asked at each decision.
        self.bwlimit = (
            bwlimit if isinstance(bwlimit, BwSchedule) else BwSchedule(BwTable.constant(bwlimit))
        )
        self.deltas = Rate(prior_rate=DEFAULT_DELTA_RATE, prior_bytes=PRIOR_BYTES)
        self._probe_lock = threading.Lock()
        self._probed = False
        self._probed_rate: float | None = None  # what the probe said

    def link_rate(self, size: int) -> float | None:
        """The link's rate as measured, else probed (once, for a file of PROBE_MIN_FILE or
        more), capped by --bwlimit, which alone answers where nothing was measured."""
        rate: float | None = None
        if isinstance(self.dst, MeasuresLink):
            rate = self.dst.link_rate()
            if rate is None and (size >= PROBE_MIN_FILE or self._probed):
                rate = self._probe(self.dst)
        limit = self.bwlimit.rate()
        if limit:
            rate = limit if rate is None else min(rate, float(limit))
        return rate

    def _probe(self, dst: MeasuresLink) -> float | None:
        """The probe's answer, until file data has measured the link."""
        with self._probe_lock:  # one probe per run; the others wait for its answer
            if not self._probed:
                self._probed = True
                try:
                    self._probed_rate = dst.probe_link()
                except FerryError:
                    pass  # no answer: the delta, as before anything was measured
            return self._probed_rate

    def delta_rate(self) -> float:
        return self.deltas.rate() or DEFAULT_DELTA_RATE

    def pays(self, size: int, rel: str = "") -> bool:
        link, delta = self.link_rate(size), self.delta_rate()
        pays = delta_pays(link, delta)
        log.info(
            "%s: %s (--delta auto: link %s, delta %.0f MB/s)",
            rel or f"{size} bytes",
            "delta" if pays else "whole file",
            "not measured" if link is None else f"{link / 1e6:.0f} MB/s",
            delta / 1e6,
        )
        return pays

    def delta_done(self, size: int, seconds: float) -> None:
        if size >= TIMED_DELTA:
            self.deltas.add(size, seconds)
