"""kstatus's reading of a custom resource, in Python, for the condition tests.

What `status.Compute` of sigs.k8s.io/cli-utils/pkg/kstatus (the library behind Flux's
health checks and `kpt live status`) does for a kind it has no special rules for
(pkg/kstatus/status/status.go and generic.go, read at cli-utils 5895ad6, Oct 2025):

1. `metadata.deletionTimestamp` set: Terminating.
2. `status.observedGeneration` present and not `metadata.generation`: InProgress.
3. The first condition, in list order, that is `Reconciling=True` (InProgress) or
   `Stalled=True` (Failed).
4. A `Ready` condition: `True` is Current, `False` or `Unknown` InProgress.
5. Otherwise Current.
"""

from __future__ import annotations

from typing import Any


def compute(obj: dict[str, Any]) -> tuple[str, str]:
    """(kstatus status, the reason it gives) of one object."""
    meta = obj.get("metadata") or {}
    st = obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", ""
    generation, observed = meta.get("generation"), st.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", "LatestGenerationNotObserved"
    conditions = st.get("conditions") or []
    for c in conditions:
        if c.get("type") == "Reconciling" and c.get("status") == "True":
            return "InProgress", str(c.get("reason") or "")
        if c.get("type") == "Stalled" and c.get("status") == "True":
            return "Failed", str(c.get("reason") or "")
    for c in conditions:
        if c.get("type") != "Ready":
            continue
        if c.get("status") == "True":
            return "Current", ""
        if c.get("status") in ("False", "Unknown"):
            return "InProgress", str(c.get("reason") or "")
    return "Current", ""
