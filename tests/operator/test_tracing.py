"""One trace: operator reconcile spans and the mover's phase spans below them."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry.mover.result import Summary
from ferry.mover.tracing import exporter_from_env
from ferry.operator.tracing import Tracer, trace_id_of, traceparent_of
from ferry.pod.tracing import TracingSink


def test_mover_spans_are_children_of_the_operator_reconcile(monkeypatch):
    exporter = InMemorySpanExporter()
    op = Tracer(processor=SimpleSpanProcessor(exporter))
    with op.reconcile("reconcile TransferJob", None, {"ferry.transferjob": "copy-a"}) as span:
        traceparent = traceparent_of(span)
        trace_id = trace_id_of(span)
        op_span_id = span.get_span_context().span_id

    monkeypatch.setenv("TRACEPARENT", traceparent)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    sink = TracingSink.from_env(processor=SimpleSpanProcessor(exporter))
    with sink.phase("scan") as attrs:
        attrs["files"] = 10
        attrs["bytes"] = 1000
    with sink.phase("transfer") as attrs:
        attrs["bytes"] = 1000
    sink.finish(Summary(files_copied=10, bytes_transferred=1000))

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["ferry.run", "ferry.scan", "ferry.transfer", "reconcile TransferJob"]
    root = spans["ferry.run"]
    assert root.parent.span_id == op_span_id
    assert format(root.context.trace_id, "032x") == trace_id
    assert root.attributes["ferry.shard"] == 1 and root.attributes["ferry.bytesTransferred"] == 1000
    scan = spans["ferry.scan"]
    assert scan.parent.span_id == root.context.span_id and scan.attributes["ferry.files"] == 10
    assert all(
        format(s.context.trace_id, "032x") == trace_id for s in exporter.get_finished_spans()
    )


def test_later_reconciles_join_the_same_trace():
    exporter = InMemorySpanExporter()
    op = Tracer(processor=SimpleSpanProcessor(exporter))
    with op.reconcile("first", None, {}) as span:
        tp = traceparent_of(span)
    with op.reconcile("second", tp, {}):
        pass
    first, second = exporter.get_finished_spans()
    assert first.context.trace_id == second.context.trace_id


def test_export_off_by_default_and_on_by_standard_variables():
    assert exporter_from_env({}) is None
    assert (
        exporter_from_env(
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
        )
        is None
    )
    assert (
        type(exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})).__name__
        == "OTLPSpanExporter"
    )
    assert (
        type(exporter_from_env({"OTEL_TRACES_EXPORTER": "console"})).__name__
        == "ConsoleSpanExporter"
    )


def test_mover_tracing_imports_no_kubernetes_code():
    import subprocess
    import sys

    code = "import sys, ferry.mover.tracing; print(any(m.split('.')[0] in ('kubernetes','kopf') or m.startswith('ferry.operator') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"
