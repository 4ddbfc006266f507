"""Wake a TransferJob's follower when something it depends on changed.

The operator watches its own Jobs and mover pods; their events name the
TransferJob they belong to (by label, in the same namespace). Each event sets
that TransferJob's `Signal`; its follower (a kopf daemon, one per unfinished
TransferJob) waits on it and reconciles once per wake, however many events
arrived meanwhile. A wake for a TransferJob whose follower is not running yet
stays set, so the follower reconciles as soon as it starts. A TransferJob with
no follower (suspended, finished) is reconciled by the handler of the event
itself when that event needs it (its Job deleted).

Everything here runs on the operator's event loop: no locks but asyncio's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ferry.operator import workload

Key = tuple[str, str]  # (namespace, TransferJob name)


@dataclass
class Signal:
    """One TransferJob's wake-up: set by events, cleared by its follower."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    #: A child (Job or pod) changed since the last reconcile: the cluster must be read again.
    children: bool = False
    #: The MoverPool this TransferJob waits for (missing or invalid), if any.
    pool: str | None = None
    #: Serialises reconciles of one TransferJob (follower and change handlers).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The status our last reconcile left (uid, status), for a watched copy that lags it.
    last: tuple[str, dict[str, Any]] | None = None
    #: A follower is running for this TransferJob (it takes the wakes).
    following: bool = False
    #: The TransferJob was deleted: its follower exits (kopf holds no finalizer to stop it).
    gone: bool = False


@dataclass
class Wakeups:
    signals: dict[Key, Signal] = field(default_factory=dict)

    def signal(self, key: Key) -> Signal:
        sig = self.signals.get(key)
        if sig is None:
            sig = self.signals[key] = Signal()
        return sig

    def child_changed(self, key: Key) -> Signal | None:
        """Wake `key`'s follower; its signal, or None for a TransferJob not reconciled since this
        process started (e.g. deleted: its children go by garbage collection) -- no signal is made
        for it, so those events leave nothing behind. One not reconciled yet will be: its first
        reconcile reads the cluster anyway."""
        sig = self.signals.get(key)
        if sig is not None:
            sig.children = True
            sig.event.set()
        return sig

    def object_changed(self, key: Key) -> None:
        """The TransferJob itself changed (e.g. a mover's progress): its follower decides."""
        sig = self.signals.get(key)
        if sig is not None:
            sig.event.set()

    def pool_changed(self, pool: str) -> int:
        """Wake every TransferJob waiting for `pool`; how many."""
        woken = 0
        for sig in self.signals.values():
            if sig.pool == pool:
                sig.children = True
                sig.event.set()
                woken += 1
        return woken

    def forget(self, key: Key) -> None:
        """The TransferJob was deleted: drop its signal and let its follower end."""
        sig = self.signals.pop(key, None)
        if sig is not None:
            sig.gone = True
            sig.event.set()


def owner_key(obj: Mapping[str, Any]) -> Key | None:
    """The TransferJob a Job or mover pod belongs to, from its labels; None if not ours."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    name = labels.get(workload.LABEL_TRANSFERJOB)
    ns = meta.get("namespace")
    if labels.get(workload.LABEL_MANAGED_BY) != workload.MANAGED_BY or not name or not ns:
        return None
    return str(ns), str(name)
