"""A byte rate measured during a run (bytes per second of the time spent moving them),
shared by a backend that times its requests and the engine that weighs a delta against
sending a file whole. Thread-safe; standard library only."""

from __future__ import annotations

import threading
from collections import deque


class Rate:
    """The rate of the last `window` samples (bytes over the seconds they took), or None
    until at least `min_bytes` were seen. With `prior_rate`, `prior_bytes` bytes at that
    rate count as if measured first: a few small, slow samples (round trips dominate them)
    do not swing the estimate, and enough real ones outweigh it."""

    def __init__(
        self,
        min_bytes: int = 0,
        window: int = 32,
        prior_rate: float = 0.0,
        prior_bytes: int = 0,
    ) -> None:
        self.min_bytes = min_bytes
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._prior = (prior_bytes, prior_bytes / prior_rate) if prior_rate > 0 else (0, 0.0)
        self._lock = threading.Lock()

    def add(self, nbytes: int, seconds: float) -> None:
        if nbytes <= 0 or seconds <= 0:
            return
        with self._lock:
            self._samples.append((nbytes, seconds))

    def measured(self) -> int:
        """Bytes in the window (the prior not counted)."""
        with self._lock:
            return sum(n for n, _ in self._samples)

    def rate(self) -> float | None:
        with self._lock:
            n = sum(b for b, _ in self._samples)
            secs = sum(s for _, s in self._samples)
        if n < self.min_bytes or (n == 0 and self._prior[0] == 0):
            return None
        n += self._prior[0]
        secs += self._prior[1]
        return n / secs if secs > 0 else None
