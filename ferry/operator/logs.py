"""The operator's log set-up: kopf's per-object prefix, routine successes at DEBUG.

Every line kopf logs about an object goes through its per-object logger,
which carries the object's reference; kopf's prefixing formatter writes it
as `[namespace/name]`. kopf says "Handler ... succeeded." at INFO for every
handler call — with one event handler per watched pod and Job that is most
of the log at load, so those lines are demoted to DEBUG.
"""

from __future__ import annotations

import logging

import kopf

from ferry.mover.jsonlog import JsonFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RoutineToDebug(logging.Filter):
    """Demote kopf's per-call success lines to DEBUG (dropped unless DEBUG is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).endswith(" succeeded."):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class NotKopfsSignals(logging.Filter):
    """kopf runs in a thread (see shutdown.py) and warns that it ignores OS signals: by design,
    the main thread takes them. Said at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("OS signals are ignored"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def configure(verbose: bool = False, log_format: str = "text") -> None:
    """`log_format` json: kopf's JSON set-up (its per-object records carry the object's
    reference), written by Ferry's one JSON formatter, which the movers use too and which
    redacts every string (kopf's own prints `severity`, and quotes messages unfiltered)."""
    if log_format == "json":
        before = set(logging.getLogger().handlers)
        kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_prefix=False)
        for handler in set(logging.getLogger().handlers) - before:  # the one kopf added
            handler.setFormatter(JsonFormatter())
    else:
        # kopf's own set-up: a root handler with its object-prefixing formatter (a str format works).
        kopf.configure(verbose=verbose, log_format=FORMAT, log_prefix=True)  # type: ignore[arg-type]
    for name in ("kopf.objects", "kopf.activities.probe"):  # per call / per probe
        logging.getLogger(name).addFilter(RoutineToDebug())
    # One access line per liveness and readiness probe: DEBUG too.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("kopf._core.reactor.running").addFilter(NotKopfsSignals())
