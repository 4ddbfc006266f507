"""Plain-dict objects shaped like what the API server returns, for builder and status tests."""

from __future__ import annotations

import json
from typing import Any


def transferjob(
    spec: dict[str, Any],
    name: str = "copy-a",
    namespace: str = "team",
    status: dict[str, Any] | None = None,
    generation: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TransferJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": generation,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec,
        "status": status or {},
    }


PVC_TO_PVC = {
    "source": {"pvc": {"claimName": "data", "path": "in"}},
    "destination": {"pvc": {"claimName": "backup"}},
}

PVC_TO_S3 = {
    "source": {"pvc": {"claimName": "data"}},
    "destination": {
        "s3": {
            "bucket": "backups",
            "prefix": "team/",
            "endpoint": "http://127.0.0.1:9000",
            "pathStyle": True,
            "secretRef": {"name": "s3-creds"},
        }
    },
}


def summary(exit_code: int = 0, reason: str = "Completed", **counts: Any) -> str:
    body = {
        "operation": "copy",
        "status": "ok" if exit_code == 0 else "failed",
        "reason": reason,
        "exitCode": exit_code,
        "retryable": False,
        "message": None if exit_code == 0 else f"{reason} happened",
        "dryRun": False,
        "filesCopied": 0,
        "filesUpdated": 0,
        "filesSkipped": 0,
        "filesDeleted": 0,
        "filesFailed": 0,
        "dirsCreated": 0,
        "linksCreated": 0,
        "filesVerified": 0,
        "differences": 0,
        "bytesTransferred": 0,
        "bytesSkipped": 0,
        "bytesResumed": 0,
        "bytesDeleted": 0,
        "elapsedSeconds": 2.0,
        "bytesPerSecond": 0,
        "errorCount": 0,
        "errors": [],
    }
    body.update(counts)
    return json.dumps(body)


def pod(
    name: str,
    index: int,
    phase: str,
    exit_code: int | None = None,
    message: str = "",
    finished: str = "2026-01-01T00:01:00Z",
    reason: str = "",
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "mover", "state": {"running": {}}}
    if exit_code is not None:
        cs["state"] = {
            "terminated": {
                "exitCode": exit_code,
                "message": message,
                "finishedAt": finished,
                **({"reason": reason} if reason else {}),
            }
        }
    return {
        "metadata": {
            "name": name,
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            "labels": {"ferry.dev/transferjob": "copy-a"},
        },
        "spec": {"nodeName": "node-1"},
        "status": {"phase": phase, "containerStatuses": [cs]},
    }


def job(
    conditions: list[dict[str, Any]] | None = None,
    active: int = 0,
    failed: int = 0,
    succeeded: int = 0,
    suspend: bool = False,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "ferry-copy-a", "ownerReferences": [{"uid": "uid-copy-a"}]},
        "spec": {"suspend": suspend},
        "status": {
            "active": active,
            "failed": failed,
            "succeeded": succeeded,
            "startTime": "2026-01-01T00:00:05Z",
            "conditions": conditions or [],
        },
    }
