"""Stop on SIGTERM/SIGINT: create nothing more at once, then exit within a bound.

kopf's own signal handling lets queued events be processed while it winds
down, and sync handlers in threads run to their end, so an operator being
replaced kept creating Jobs for many seconds. Here the signal first closes
`Kube.create` (a reconcile still running is refused at its next creation and
left to the next operator process, which adopts what exists by name), then
asks kopf to stop; a timer ends the process if anything still hangs after
`timeout` seconds, which the chart keeps below the pod's grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any

import kopf

from ferry.operator.kube import Kube

log = logging.getLogger(__name__)


class Shutdown:
    def __init__(self, kube: Kube, timeout: float, exit_now: Any = os._exit) -> None:
        self.kube = kube
        self.timeout = timeout
        self.flag = threading.Event()  # kopf.run's stop_flag
        self._exit_now = exit_now
        self._timer: threading.Timer | None = None

    def begin(self, signum: int = signal.SIGTERM) -> None:
        if self.flag.is_set():
            return
        self.kube.stopping.set()
        log.info(
            "%s received: creating nothing more, exiting within %gs",
            signal.Signals(signum).name,
            self.timeout,
        )
        self.flag.set()
        self._timer = threading.Timer(self.timeout, self._expired)
        self._timer.daemon = True
        self._timer.start()

    def _expired(self) -> None:
        log.warning("still running %gs after the stop signal: exiting now", self.timeout)
        logging.shutdown()
        self._exit_now(0)


def register_shutdown(registry: kopf.OperatorRegistry, stop: Shutdown) -> None:
    @kopf.on.startup(registry=registry)
    async def take_signals(**_: Any) -> None:
        """Replace kopf's signal handlers (installed before startup handlers run) with ours."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.begin, sig)
