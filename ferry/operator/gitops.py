"""The TTL-vs-self-heal trap: a TransferJob that a GitOps tool keeps applied must not age out.

`ttlSecondsAfterFinished` deletes a finished TransferJob; Argo CD (self-heal) or
Flux (every interval) sees it missing from the cluster, applies it again, and
the transfer runs a second time — and again after every TTL. The operator
cannot know who applies an object, but the tools mark what they manage; a TTL
on such an object gets a condition and a Warning event naming the safe
patterns (docs/gitops.md).
"""

from __future__ import annotations

from typing import Any

from ferry.operator import api, workload

TTL_CONDITION = "TTLConflict"
TTL_REASON = "ManagedByGitOps"

# Marks the tools leave on what they apply (annotation or label key -> the tool).
TRACKING_ANNOTATIONS = {
    "argocd.argoproj.io/tracking-id": "Argo CD",
}
TRACKING_LABELS = {
    "kustomize.toolkit.fluxcd.io/name": "Flux (Kustomization)",
    "helm.toolkit.fluxcd.io/name": "Flux (HelmRelease)",
    # Argo CD's label tracking (the default before Argo CD 3.0); Helm charts set it too, and
    # `helm upgrade` re-creates a missing object just the same.
    "app.kubernetes.io/instance": "Argo CD label tracking or Helm",
}


def tracked_by(meta: dict[str, Any]) -> str | None:
    """`key (tool)` of the first tracking mark on the object, or None."""
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    for key, tool in TRACKING_ANNOTATIONS.items():
        if key in annotations:
            return f"annotation {key} ({tool})"
    for key, tool in TRACKING_LABELS.items():
        if key in labels:
            return f"label {key} ({tool})"
    return None


def ttl_conflict(meta: dict[str, Any], spec: api.TransferJobSpec) -> str | None:
    """The condition message when a TTL meets a tracking mark; None when there is no conflict.

    A schedule's runs are exempt: the schedule creates them, no tool re-applies them.
    """
    if spec.ttl_seconds_after_finished is None:
        return None
    if workload.LABEL_SCHEDULE in (meta.get("labels") or {}):
        return None
    mark = tracked_by(meta)
    if mark is None:
        return None
    return (
        f"spec.ttlSecondsAfterFinished deletes this TransferJob once it finishes, and its "
        f"{mark} says a tool applies it: the tool re-creates it and the transfer runs again. "
        "Remove the TTL, or run it from a TransferSchedule (see the GitOps docs)"
    )
