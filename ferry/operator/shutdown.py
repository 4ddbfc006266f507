"""Stop on SIGTERM/SIGINT: create nothing more at once, then exit within a bound.

kopf's own signal handling lets queued events be processed while it winds
down, and sync handlers in threads run to their end, so an operator being
replaced kept creating Jobs for many seconds. Here kopf runs in a thread
(kopf's embedding mode: it then leaves signals alone) and the main thread
takes them: the signal first closes `Kube.create` (a reconcile still running
is refused at its next creation and left to the next operator process, which
adopts what exists by name), then sets kopf's stop flag; a timer ends the
process if anything still hangs after `timeout` seconds, which the chart
keeps below the pod's grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

from ferry.operator.kube import Kube

log = logging.getLogger(__name__)


class Shutdown:
    def __init__(
        self, kube: Kube, timeout: float, exit_now: Callable[[int], Any] = os._exit
    ) -> None:
        self.kube = kube
        self.timeout = timeout
        #: kopf's stop_flag, set on kopf's loop (`attach`) from whichever thread got the signal.
        self.flag = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_now = exit_now
        self._timer: threading.Timer | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def begin(self, signum: int = signal.SIGTERM) -> None:
        if self.kube.stopping.is_set():
            return
        self.kube.stopping.set()
        log.info(
            "%s received: creating nothing more, exiting within %gs",
            signal.Signals(signum).name,
            self.timeout,
        )
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.flag.set)
        else:
            self.flag.set()
        self._timer = threading.Timer(self.timeout, self._expired)
        self._timer.daemon = True
        self._timer.start()

    def _expired(self) -> None:
        log.warning("still running %gs after the stop signal: exiting now", self.timeout)
        logging.shutdown()
        self._exit_now(0)

    def run(self, operator: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `operator()` (kopf) on its own loop in a thread until it ends; this thread,
        the main one, takes SIGTERM and SIGINT."""
        errors: list[BaseException] = []

        async def main() -> None:
            self.attach(asyncio.get_running_loop())
            await operator()

        def target() -> None:
            try:
                asyncio.run(main())
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # re-raised in the main thread
                errors.append(exc)

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self.begin(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        thread = threading.Thread(target=target, name="kopf")
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
        if errors:
            raise errors[0]
