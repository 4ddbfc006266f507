"""`ferry run`: one transfer inside a mover pod, from a TransferSpec file to a termination message.

Progress goes to stderr as JSON lines and, when the operator set
`FERRY_TRANSFERJOB`, into the TransferJob's status; spans go below the
operator's trace when it set `TRACEPARENT`. The final summary (or, when the
run could not start, the error) is printed on stdout and written to the
container's termination message, which the operator sums into `status.result`.
With `options.auditLog: "-"` stdout is the audit log's alone (a log collector's
JSON lines): the summary and errors then go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import TextIO

from ferry.mover import jsonlog
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.jsonlog import say
from ferry.mover.progress import JsonLinesSink, MultiSink, Sink
from ferry.mover.spec import TransferSpec

log = logging.getLogger("ferry")

# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4000


def run_pod(spec_path: str) -> int:
    """Run the transfer `spec_path` describes; the exit code tells the Job what happened."""
    out = [sys.stdout]  # the summary's stream: stderr once the audit log owns stdout
    try:
        return _run(spec_path, out)
    except FerryError as err:
        say(f"ferry: error: {err}", "error")
        payload = json.dumps(err.to_json())
        print(payload, file=out[0])
        write_termination_message(payload)
        return err.kind.exit_code


def load_spec(path: str) -> TransferSpec:
    """The TransferSpec in `path` (JSON or YAML), or a USAGE error naming what is wrong —
    never quoting the text, which may hold a secret typed in the wrong place."""
    import yaml
    from pydantic import ValidationError

    from ferry.mover.spec import spec_errors

    try:
        with open(path, encoding="utf-8") as f:
            return TransferSpec.model_validate(yaml.safe_load(f))
    except OSError as exc:
        raise FerryError(ErrorKind.USAGE, f"cannot read spec: {exc.strerror}", path) from None
    except ValidationError as exc:
        raise FerryError(ErrorKind.USAGE, f"invalid spec: {spec_errors(exc)}", path) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)  # where, not what: the text may hold a secret
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FerryError(ErrorKind.USAGE, f"invalid YAML{where}", path) from None


def pod_sinks() -> list[Sink]:
    """Progress to stderr, plus the TransferJob's status and the trace when the operator asked."""
    # In JSON log mode a progress line is a log line too: level, message and object.
    fields = jsonlog.progress_fields()
    sinks: list[Sink] = [JsonLinesSink(sys.stderr, interval=2.0, fields=fields)]
    if os.environ.get("FERRY_TRANSFERJOB"):
        from ferry.pod.status_sink import TransferJobStatusSink

        sinks.append(TransferJobStatusSink.from_env())
    if os.environ.get("TRACEPARENT"):
        from ferry.pod.tracing import TracingSink

        sinks.append(TracingSink.from_env())
    return sinks


def _run(spec_path: str, out: list[TextIO]) -> int:
    from ferry.mover.transfer import run_transfer

    spec = load_spec(spec_path)
    src, dst, options = spec.to_engine()
    if options.audit_log == "-":
        out[0] = sys.stderr
    elif options.audit_log is not None:
        refuse_file_destination(spec)
        make_parents(options.audit_log)
    remote = spec.audit_upload()
    if remote is not None:
        refuse_file_destination(spec)
    if remote is None:
        summary = run_transfer(src, dst, options, sink=MultiSink(pod_sinks()))
        return _finish(summary.to_json(), out[0], int(summary.exit_code))
    from ferry.pod import audit_upload

    with audit_upload.temp_file() as local:
        options = dataclasses.replace(options, audit_log=local)
        summary = run_transfer(src, dst, options, sink=MultiSink(pod_sinks()))
        doc = summary.to_json()
        try:
            audit_upload.upload(local, dst, remote)
            doc["auditLog"] = remote
        except Exception as exc:  # kept or not, the transfer's outcome stands
            log.debug("audit log upload failed", exc_info=True)
            doc["auditLogError"] = audit_upload.failure(exc, remote)[:512]
            say(f"ferry: warning: {doc['auditLogError']}", "warning")
    return _finish(doc, out[0], int(summary.exit_code))


def _finish(doc: dict[str, object], out: TextIO, code: int) -> int:
    """Print the final summary and leave it as the termination message."""
    text = json.dumps(doc, separators=(",", ":"))
    print(text, file=out)
    write_termination_message(text)
    return code


def refuse_file_destination(spec: TransferSpec) -> None:
    """A file audit log lives under the destination's root, which must then be a directory:
    not a file that is there, nor the name a file source is written to (a remote root of
    '' or '.' is the storage's top, a directory)."""
    local = spec.destination.kind == "local"
    where = spec.destination
    dst = str(getattr(where, "path", None) or getattr(where, "prefix", ""))
    src = getattr(spec.source, "path", "") if spec.source.kind == "local" else ""
    names = not dst.endswith("/") and (local or dst not in ("", "."))
    if (local and os.path.isfile(dst)) or (src and os.path.isfile(src) and names):
        raise FerryError(
            ErrorKind.USAGE,
            "auditLog: the destination names a file, not a directory to keep the log in "
            "(end its path with '/' to copy the file into a directory)",
            dst,
        )


def make_parents(path: str) -> None:
    """Create the directories of the audit log's file (under the destination's root)."""
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise FerryError(
            ErrorKind.DESTINATION_NOT_FOUND,
            f"auditLog: cannot create its directory: {exc.strerror}",
            parent,
        ) from None


def write_termination_message(text: str) -> None:
    """Leave `text` where the kubelet reads the container's termination message; a failure
    to write it is logged, never raised (the exit code still tells the Job the outcome)."""
    path = os.environ.get("FERRY_TERMINATION_LOG", "/dev/termination-log")
    if path and (os.path.exists(path) or "FERRY_TERMINATION_LOG" in os.environ):
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text[:TERMINATION_MESSAGE_LIMIT])
        except OSError as exc:
            log.warning("cannot write termination message to %s: %s", path, exc.strerror)
