"""Operator spans: one per reconcile, all in the TransferJob's own trace.

The first reconcile of a TransferJob starts a new trace; its id goes to
`status.traceID` and its traceparent to `status.traceParent`, so later
reconciles (even by a restarted operator) join the same trace. The
traceparent of the reconcile that creates the Job is handed to the mover
(`TRACEPARENT`), whose spans then hang below it. Export follows the standard
OTEL_* variables and is off by default (`ferry.mover.tracing`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ferry.mover.tracing import make_provider


class Tracer:
    def __init__(
        self, provider: TracerProvider | None = None, processor: SpanProcessor | None = None
    ) -> None:
        self.provider = provider or make_provider("ferry-operator", processor)
        self.tracer = self.provider.get_tracer("ferry.operator")

    @contextlib.contextmanager
    def reconcile(
        self, name: str, traceparent: str | None, attributes: dict[str, Any]
    ) -> Iterator[Span]:
        """A span child of `traceparent`, or the root of a new trace when there is none."""
        carrier = {"traceparent": traceparent} if traceparent else {}
        parent = TraceContextTextMapPropagator().extract(carrier)
        with self.tracer.start_as_current_span(name, context=parent, attributes=attributes) as span:
            try:
                yield span
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise

    def shutdown(self) -> None:
        self.provider.force_flush()
        self.provider.shutdown()


def traceparent_of(span: Span) -> str:
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier["traceparent"]


def trace_id_of(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")
