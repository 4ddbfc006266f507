"""What the engine's modules share for one run, handed to each explicitly."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ferry.mover.backends.base import Backend, Entry
from ferry.mover.engine.deltachoice import DeltaChoice
from ferry.mover.engine.ledger import Ledger
from ferry.mover.engine.stream import Streamer
from ferry.mover.engine.tasks import Retry, TaskQueue
from ferry.mover.options import Options


@dataclass(slots=True, frozen=True)
class Context:
    src: Backend
    dst: Backend
    options: Options
    cancel: threading.Event
    ledger: Ledger
    tasks: TaskQueue
    retry: Retry
    streamer: Streamer
    meta_differs: Callable[[Entry, Entry], bool]  # the planner's rule, for checked files
    hashing: bool  # files get a digest (--verify inline or full)
    sparse: bool  # holes are kept at the destination
    xattrs: bool  # extended attributes are copied with the data
    server_copy: bool  # the destination copies from the source itself
    delta: bool  # updated files go as block deltas (deltafile.py) where they qualify
    # --delta auto: each qualifying file goes as a delta only where this says it pays.
    delta_choice: DeltaChoice | None
    # Files up to this size go in one read and one write (-1: none do).
    direct_max: int
