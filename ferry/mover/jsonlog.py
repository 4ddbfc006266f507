"""Logs as JSON lines, on request: `--log-format json` or `FERRY_LOG_FORMAT=json`.

One object a line on stderr, for log pipelines that parse rather than grep:
`time`, `level`, `logger`, `message`, and `object` (kind, namespace, name) when
the line is about one: a kopf per-object record in the operator, the
TransferJob a mover pod works for (`FERRY_TRANSFERJOB`). The CLI's own
stderr lines (summaries, errors) take the same shape through `say`. Every
string passes `redact` before it is encoded, so a secret is masked whatever
JSON escaping would make of it. The operator and the movers share this one
formatter, so one parser reads both.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from ferry.mover.redact import redact

FORMATS = ("text", "json")
ENV = "FERRY_LOG_FORMAT"
_LEVELS = {"debug", "info", "warning", "error", "critical"}

_json = False
_object: dict[str, str] | None = None


def choose(flag: str | None) -> str:
    """The format from the flag, else `FERRY_LOG_FORMAT`, else text; ValueError names the
    environment variable when its value is not a format (argparse checks the flag)."""
    if flag:
        return flag
    value = os.environ.get(ENV, "").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"{ENV} must be one of {', '.join(FORMATS)}, got {value[:40]!r}")
    return value


def object_from_env() -> dict[str, str] | None:
    """The TransferJob a mover pod works for, from `FERRY_TRANSFERJOB=namespace/name`."""
    ns, _, name = os.environ.get("FERRY_TRANSFERJOB", "").partition("/")
    return {"kind": "TransferJob", "namespace": ns, "name": name} if ns and name else None


def _ref(value: object) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        return None
    out = {k: str(value[k]) for k in ("kind", "namespace", "name") if value.get(k)}
    return out or None


def _stamp(when: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
    )


def document(
    level: str,
    message: str,
    obj: Mapping[str, Any] | None = None,
    when: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One log line's object: every string redacted."""
    doc: dict[str, Any] = {
        "time": _stamp(time.time() if when is None else when),
        "level": level if level in _LEVELS else "info",
        "message": redact(message),
    }
    for key, value in fields.items():
        doc[key] = redact(value) if isinstance(value, str) else value
    ref = _ref(obj)
    if ref:
        doc["object"] = {k: redact(v) for k, v in ref.items()}
    return doc


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object; kopf's per-object records carry `k8s_ref`."""

    def __init__(self, obj: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.object = obj

    def format(self, record: logging.LogRecord) -> str:
        ref = getattr(record, "k8s_ref", None) or self.object
        extra: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            extra["error"] = self.formatException(record.exc_info)
        doc = document(record.levelname.lower(), record.getMessage(), ref, record.created, **extra)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure(fmt: str, obj: Mapping[str, str] | None = None) -> None:
    """Remember the format for `say`; the caller installs `JsonFormatter` on its handler."""
    global _json, _object
    _json = fmt == "json"
    _object = dict(obj) if obj else None


def enabled() -> bool:
    return _json


def progress_fields() -> dict[str, Any]:
    """What a JSON progress line adds in JSON mode, so it is a log line too."""
    if not _json:
        return {}
    doc = document("info", "progress", _object)
    doc.pop("time")  # a progress line has its own clock (elapsedSeconds)
    return doc


def say(text: str, level: str = "info", stream: IO[str] | None = None) -> None:
    """A line of the CLI's own on stderr: as given, or as a JSON log line in JSON mode
    (without the `ferry: error: ` prefix, which the level says)."""
    out = stream or sys.stderr
    if not _json:
        print(text, file=out)
        return
    for prefix in ("ferry: error: ", "ferry: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    print(json.dumps(document(level, text, _object), ensure_ascii=False), file=out)
