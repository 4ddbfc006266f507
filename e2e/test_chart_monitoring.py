"""The chart's monitoring (`helm template`, no cluster): the ServiceMonitor, PrometheusRule and
Grafana dashboard render as the right kinds when switched on and not at all by default; every
metric their expressions name is one the operator exports (so they cannot drift apart);
`promtool` checks the rendered rules and runs their unit tests (e2e/monitoring/)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from e2e.cluster import binaries
from ferry.operator.metrics import Metrics

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "ferry"
RULES_TEST = Path(__file__).resolve().parent / "monitoring" / "rules_test.yaml"
ALL_ON = [
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboard.enabled=true",
]
# Prometheus's own series the rules and dashboard may use besides the operator's.
PROMETHEUS_SERIES = {"up"}


def render(*values: str, release: str = "ferry") -> list[dict[str, Any]]:
    helm = binaries.ensure() / "helm"
    cmd = [str(helm), "template", release, str(CHART), "--namespace", "ferry-system"]
    for v in values:
        cmd += ["--set", v]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, [d["kind"] for d in docs]
    return found[0]


def exported_series() -> set[str]:
    """The sample names the operator's registry can export, per metric type (a labelled
    metric with no children yet still has its family)."""
    registry = Metrics(version="test").registry
    names: set[str] = set()
    created: set[str] = set()  # prometheus_client's creation-time series, not for queries
    for family in registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("_count", "_sum"),
        }.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
        created.add(family.name + "_created")
    # Cross-check with the text exposition: every series shown is one of those.
    text = generate_latest(registry).decode()
    shown = {m.group(1) for m in re.finditer(r"^([a-z_:][a-z0-9_:]*)[{ ]", text, re.M)}
    assert shown and shown <= names | created, shown - names - created
    return names


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: identifiers not followed by `(` (functions), not
    label names inside `{...}` or `by (...)`, not keywords. Metric names of Ferry start with
    `ferry_`, so anything else left must be a Prometheus series we know."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r'"[^"]*"', "", expr)
    keywords = {"and", "or", "unless", "bool", "offset", "le", "inf", "nan"}
    out = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*(\()?", expr):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in keywords or re.fullmatch(r"\d+[smhdwy]?", name):
            continue
        out.add(name)
    return out


def rule_exprs(groups: list[dict[str, Any]]) -> dict[str, str]:
    return {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        f"{p['title']} [{t['refId']}]": t["expr"]
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    }


def test_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert not any(
        d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {})
        for d in render()
    )


def test_all_on_renders_the_three_kinds() -> None:
    docs = render(*ALL_ON, "monitoring.serviceMonitor.labels.release=prom")
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    service = next(d for d in docs if d["kind"] == "Service")
    # The ServiceMonitor selects the metrics Service by its labels and scrapes its port.
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert sm["spec"]["namespaceSelector"]["matchNames"] == ["ferry-system"]

    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = set(rule_exprs(rule["spec"]["groups"]))
    assert {
        "FerryScheduleRecoveryPointMissed",
        "FerryScheduleNeverSucceeded",
        "FerryTransferJobFailed",
        "FerryTransferJobStalled",
        "FerryOperatorDown",
        "FerryOperatorAbsent",
    } <= alerts

    cm = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    )
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["ferry.json"])
    assert dashboard["uid"] == "ferry-operator" and dashboard["panels"]


def test_rules_name_this_releases_job() -> None:
    rule = one(render("monitoring.prometheusRule.enabled=true", release="backup"), "PrometheusRule")
    service = one(render(release="backup"), "Service")
    exprs = rule_exprs(rule["spec"]["groups"])
    job = f'job="{service["metadata"]["name"]}"'  # Prometheus names the job after the Service
    assert job in exprs["FerryOperatorDown"] and job in exprs["FerryOperatorAbsent"]


def test_service_monitor_without_the_metrics_service_is_refused_by_name() -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:
        render("monitoring.serviceMonitor.enabled=true", "metrics.service.enabled=false")
    assert "monitoring.serviceMonitor.enabled needs metrics.enabled" in err.value.stderr


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("monitoring.serviceMonitor.interval=soon", "/monitoring/serviceMonitor/interval"),
        ("monitoring.dashboard.labels.x=1", None),  # a string: accepted
        ("monitoring.prometheusRule.enable=true", "enable"),
        ("logFormat=xml", "/logFormat"),
    ],
)
def test_values_schema(value: str, field: str | None) -> None:
    if field is None:
        render(value.replace("=1", "=one"))
        return
    with pytest.raises(subprocess.CalledProcessError) as err:
        render(value)
    assert field in err.value.stderr


def test_log_format_value_reaches_the_operator() -> None:
    args = one(render("logFormat=json"), "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--log-format=json" in args
    from ferry.operator.main import parser

    assert parser().parse_args(["--log-format=json"]).log_format == "json"


def test_every_metric_named_is_exported() -> None:
    docs = render(*ALL_ON)
    exported = exported_series() | PROMETHEUS_SERIES
    rule = one(docs, "PrometheusRule")
    cm = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    )
    exprs = rule_exprs(rule["spec"]["groups"]) | dashboard_exprs(
        json.loads(cm["data"]["ferry.json"])
    )
    used: set[str] = set()
    for where, expr in exprs.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{where} uses {sorted(unknown)}, which the operator does not export"
        used |= names
    # The parser finds what it should (it could otherwise pass by finding nothing).
    assert metric_names('sum by (le) (rate(ferry_x_bucket{job=~"$job"}[1h])) > 0') == {
        "ferry_x_bucket"
    }
    # The alerts and dashboard cover the live numbers and the build info.
    assert {
        "ferry_transferred_bytes_total",
        "ferry_build_info",
        "ferry_transferjobs_stalled",
        "ferry_schedule_created_timestamp_seconds",
    } <= used


def promtool() -> Path:
    """promtool from $FERRY_PROMTOOL, the cache tests/servers/install.sh unpacks it into, or
    PATH. Missing is a failure: the test command installs it."""
    cache = Path(
        os.environ.get("FERRY_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ferry"
    )
    for candidate in (os.environ.get("FERRY_PROMTOOL"), cache / "promtool" / "promtool"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: run tests/servers/install.sh (or set FERRY_PROMTOOL)")
    return Path(found)


def test_promtool_checks_and_unit_tests_the_rendered_rules(tmp_path: Path) -> None:
    rule = one(render("monitoring.prometheusRule.enabled=true"), "PrometheusRule")
    rendered = tmp_path / "rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tool = str(promtool())
    check = subprocess.run(
        [tool, "check", "rules", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rule_exprs(rule['spec']['groups']))} rules found" in check.stdout
    # The unit tests, against the rules as the chart renders them (same file layout).
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["rule_files"] = [str(rendered)]
    suite = tmp_path / "rules_test.yaml"
    suite.write_text(yaml.safe_dump(tests))
    run = subprocess.run(
        [tool, "test", "rules", str(suite)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_promtool_accepts_the_operators_exposition() -> None:
    m = Metrics(version="test")
    m.observe_progress("u", {"0": {"bytesDone": 10, "filesDone": 1}})
    m.schedule_interval.labels("ns", "s").set(60)
    text = generate_latest(m.registry)
    run = subprocess.run(
        [str(promtool()), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    # promtool lints names and help; a non-zero exit lists what it found.
    assert run.returncode == 0, (run.stdout + run.stderr).decode()
