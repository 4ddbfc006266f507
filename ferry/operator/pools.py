"""MoverPool: a cluster-scoped, named placement and tuning that TransferJobs reference.

A pool has nothing to run; the operator only validates it and reports that
in status. Its contents are read when a TransferJob's Job is built (so a
changed pool affects new transfers, never a running one).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ferry.operator import api, status


def reconcile(body: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The status patch for a MoverPool: Accepted, or InvalidSpec naming the field."""
    now = now or status.now_utc()
    generation = body["metadata"].get("generation")
    conditions = list((body.get("status") or {}).get("conditions") or [])
    try:
        api.MoverPoolSpec.model_validate(body.get("spec") or {})
    except ValueError as exc:
        where, msg = status.pydantic_field(exc)
        conditions = status.set_condition(
            conditions, "Accepted", False, "InvalidSpec", f"{where}: {msg}", now, generation
        )
    else:
        conditions = status.set_condition(
            conditions, "Accepted", True, "Valid", "", now, generation
        )
    return {"observedGeneration": generation, "conditions": conditions}
