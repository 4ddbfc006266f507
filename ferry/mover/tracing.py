"""The OpenTelemetry tracer provider, configured by the standard variables.

Shared by every Ferry process that traces (the mover pod's `ferry.pod.tracing`
and the operator's `ferry.operator.tracing`), so it lives below both. Export is
off by default. It is configured by the standard variables:
`OTEL_TRACES_EXPORTER` (otlp | console | none) and `OTEL_EXPORTER_OTLP_*`
(an endpoint alone turns OTLP/HTTP export on). This module imports no
Kubernetes code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter


def exporter_from_env(env: Mapping[str, str] | None = None) -> SpanExporter | None:
    """The exporter the standard OTEL_* variables ask for; None means tracing export is off."""
    env = os.environ if env is None else env
    choice = (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if choice in ("none", "") and not (choice == "" and endpoint):
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_* itself


def make_provider(service: str, processor: SpanProcessor | None = None) -> TracerProvider:
    """A provider that exports through `processor`, or per OTEL_* variables, or not at all."""
    attrs: dict[str, Any] = {"service.name": os.environ.get("OTEL_SERVICE_NAME") or service}
    provider = TracerProvider(resource=Resource.create(attrs))
    if processor is None:
        exporter = exporter_from_env()
        processor = BatchSpanProcessor(exporter) if exporter is not None else None
    if processor is not None:
        provider.add_span_processor(processor)
    return provider
