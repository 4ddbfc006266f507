"""OpenTelemetry spans for one mover run, as children of the operator's trace.

`ferry run` plugs `TracingSink.from_env()` in when `TRACEPARENT` is set: the
operator passes the W3C traceparent of its reconcile span, so one trace runs
from `kubectl apply` to the last verified byte. A `ferry.run` span wraps
the run; each `Sink.phase` (scan, plan, transfer, verify, ...) is a child span
carrying the byte and file counts the engine fills in.

Export is off by default; the provider follows the standard OTEL_* variables
(`ferry.mover.tracing`, shared with the operator). Pod-only: the context comes
from the environment the operator gives the mover's container.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ferry.mover.progress import Sink
from ferry.mover.redact import redact
from ferry.mover.tracing import make_provider

if TYPE_CHECKING:
    from ferry.mover.result import Summary

TRACER_NAME = "ferry.mover"


class TracingSink(Sink):
    """Spans for the transfer and its phases, parented by a W3C traceparent."""

    def __init__(
        self,
        traceparent: str | None,
        provider: TracerProvider,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)
        carrier = {"traceparent": traceparent} if traceparent else {}
        parent = TraceContextTextMapPropagator().extract(carrier)
        self.root: Span = self.tracer.start_span(
            "ferry.run", context=parent, attributes=dict(attributes or {})
        )
        self._ctx = trace.set_span_in_context(self.root)
        self.interval = 3600.0  # progress snapshots are not span material

    @classmethod
    def from_env(cls, processor: SpanProcessor | None = None) -> TracingSink:
        """The context the operator put into the pod: TRACEPARENT, the TransferJob, the shard."""
        attrs: dict[str, Any] = {}
        if os.environ.get("FERRY_TRANSFERJOB"):
            attrs["ferry.transferjob"] = os.environ["FERRY_TRANSFERJOB"]
        shard = os.environ.get("JOB_COMPLETION_INDEX")
        if shard is not None and shard.isdigit():
            attrs["ferry.shard"] = int(shard)
        return cls(os.environ.get("TRACEPARENT"), make_provider("ferry-mover", processor), attrs)

    @property
    def trace_id(self) -> str:
        return format(self.root.get_span_context().trace_id, "032x")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        attrs: dict[str, Any] = {}
        with self.tracer.start_as_current_span(
            f"ferry.{name}",
            context=self._ctx,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield attrs
            except BaseException as exc:
                # Not the SDK's record_exception: its stack trace quotes the text of every
                # chained exception, a library's (a parser quoting a secret) included.
                text = redact(str(exc))
                span.add_event(
                    "exception", {"exception.type": type(exc).__name__, "exception.message": text}
                )
                span.set_status(Status(StatusCode.ERROR, text))
                raise
            finally:
                span.set_attributes({f"ferry.{k}": v for k, v in attrs.items() if _scalar(v)})

    def finish(self, summary: Summary) -> None:
        s = summary.to_json()
        self.root.set_attributes(
            {f"ferry.{k}": v for k, v in s.items() if _scalar(v) and v is not None}
        )
        if s["exitCode"] != 0:
            self.root.set_status(Status(StatusCode.ERROR, str(s.get("reason"))))
        self.root.end()
        self.provider.force_flush()
        self.provider.shutdown()


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, bool, int, float))
