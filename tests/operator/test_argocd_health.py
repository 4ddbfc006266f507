"""The Argo CD health checks (docs/argocd/) run in Lua 5.1 — the language of Argo CD's
gopher-lua — against the statuses the operator's own functions produce."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from lupa import lua51

from tests.operator import kstatus
from tests.operator.fixtures import PVC_TO_PVC, transferjob
from tests.operator.test_health import CASES, reconciler
from tests.operator.test_schedule import T0
from tests.operator.test_schedule_health import Schedule, finish

ARGOCD = Path(__file__).resolve().parents[2] / "docs" / "argocd"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def script(kind: str) -> str:
    return (ARGOCD / "ferry.dev" / kind / "health.lua").read_text()


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD gets them: the script's return with `obj` a global."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(copy.deepcopy(obj), recursive=True)
    out = lua.execute(script(kind))
    return str(out["status"]), str(out["message"])


# phase (as in test_health.CASES) -> Argo CD status
EXPECTED = {
    "Pending": "Progressing",
    "Running": "Progressing",
    "Running, no progress for stallTimeoutSeconds": "Degraded",
    "Running, retrying after a failed pod": "Progressing",
    "Suspended, mover stopping": "Progressing",
    "Suspended": "Suspended",
    "Succeeded": "Healthy",
    "Failed": "Degraded",
    "Failed, cancelled": "Degraded",
}


@pytest.mark.parametrize(
    ("phase", "make"), [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_transferjob_health_per_phase(phase, make):
    body = make()
    got, message = health("TransferJob", body)
    assert got == EXPECTED[phase]
    # Argo CD and kstatus agree: Degraded exactly where kstatus says Failed, Healthy where
    # it says Current (a suspended job is Current to kstatus, Suspended to Argo CD).
    reading = kstatus.compute(body)[0]
    assert (got == "Degraded") == (reading == "Failed")
    assert got in (
        ("Healthy", "Suspended") if reading == "Current" else ("Progressing", "Degraded")
    )
    if got == "Degraded":
        assert body["status"]["reason"] in message or "NoProgress" in message


def test_running_message_carries_the_progress():
    body = CASES[1][3]()
    assert health("TransferJob", body) == ("Progressing", "Transferring (11%)")


def test_failed_message_is_the_movers():
    assert health("TransferJob", CASES[7][3]()) == (
        "Degraded",
        "VerifyMismatch: VerifyMismatch happened",
    )


def test_before_the_operator_and_after_an_edit_it_has_not_seen():
    fresh = transferjob(PVC_TO_PVC)
    del fresh["status"]
    assert health("TransferJob", fresh)[0] == "Progressing"
    done = CASES[6][3]()
    assert health("TransferJob", done)[0] == "Healthy"
    done["metadata"]["generation"] = 2
    assert health("TransferJob", done) == (
        "Progressing",
        "The Ferry operator has not acted on the latest spec yet",
    )


@pytest.mark.parametrize("spec", [{"bandwidth": "fast"}, {"placement": {"pool": "missing"}}])
def test_refused_or_waiting_on_a_fix_is_degraded(spec):
    r, _, _, _ = reconciler()
    body = transferjob({**PVC_TO_PVC, **spec})
    body["status"] = r.reconcile(body).status
    got, message = health("TransferJob", body)
    assert got == "Degraded" and body["status"]["reason"] in message


def test_transferschedule_health():
    s = Schedule()
    s.at(T0 + timedelta(hours=2, seconds=1))
    assert health("TransferSchedule", s.body)[0] == "Healthy"
    name = next(iter(s.kube.children))
    finish(s.kube, name, ok=False, at="2026-03-01T02:05:00Z")
    s.at(T0 + timedelta(hours=2, minutes=6))
    got, message = health("TransferSchedule", s.body)
    assert got == "Degraded" and message.startswith("AuthFailed: the last run") and name in message
    s.body["spec"]["suspend"] = True
    s.body["metadata"]["generation"] = 2
    assert health("TransferSchedule", s.body)[0] == "Progressing"  # not seen yet
    s.at(T0 + timedelta(hours=3))
    assert health("TransferSchedule", s.body)[0] == "Degraded"  # the failure still stands
    suspended = Schedule(suspend=True)
    suspended.at(T0 + timedelta(hours=1))
    assert health("TransferSchedule", suspended.body) == ("Suspended", "Suspended by spec.suspend")
    invalid = Schedule(schedule="61 * * * *")
    invalid.at(T0 + timedelta(hours=1))
    assert health("TransferSchedule", invalid.body)[0] == "Degraded"


def test_argocd_cm_snippet_carries_the_same_lua():
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    for kind in ("TransferJob", "TransferSchedule"):
        assert cm["data"][f"resource.customizations.health.ferry.dev_{kind}"] == script(kind)


CONDITION = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["Ready", "Reconciling", "Stalled", "Suspended", "Accepted"])
        | st.text(max_size=8),
        "status": st.sampled_from(["True", "False", "Unknown"]),
    },
    optional={"reason": st.text(max_size=16), "message": st.text(max_size=64)},
)
STATUS = st.fixed_dictionaries(
    {},
    optional={
        "observedGeneration": st.integers(0, 3),
        "conditions": st.lists(CONDITION, max_size=6),
        "phase": st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Suspended"]),
        "progress": st.fixed_dictionaries({}, optional={"percent": st.just("5%")}),
    },
)


@given(status=STATUS, generation=st.integers(1, 3), suspend=st.booleans())
def test_any_status_the_schema_admits_gets_an_argo_status(status, generation, suspend):
    """A Lua error would leave Argo CD with no health at all: whatever status the schema
    admits, both checks return one of Argo CD's statuses."""
    for kind in ("TransferJob", "TransferSchedule"):
        obj = {
            "metadata": {"name": "x", "generation": generation},
            "spec": {"suspend": suspend},
            "status": status,
        }
        got, _ = health(kind, obj)
        assert got in ARGO_STATUSES
