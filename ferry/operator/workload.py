"""Typed mover specs -> the objects that run them: ConfigMap, ServiceAccount, Role, RoleBinding, Job.

Pure builders: typed specs in (`moverspec.py` translates the TransferJob),
plain Kubernetes dicts out, no API calls, so every rule
(secure defaults, secret references, placement, sharding, retries) is unit
tested without a cluster. Names are derived from the TransferJob's name and
every object carries the TransferJob's labels and a controller owner
reference, so re-running a reconcile finds what exists instead of creating a
duplicate, and deleting the TransferJob garbage-collects everything.

The operator never reads a Secret: credentials reach the mover only as Secret
volumes the kubelet mounts, at paths written into the transfer spec.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ferry.mover import host
from ferry.mover.errors import ErrorKind
from ferry.mover.spec import TransferSpec
from ferry.operator import api
from ferry.operator.moverspec import (
    ClaimMount,
    ConfigMapMount,
    InvalidSpec,
    Mount,
    check_overlap,
    mover_specs,
)

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TRANSFERJOB = "ferry.dev/transferjob"
LABEL_SCHEDULE = "ferry.dev/schedule"
MANAGED_BY = "ferry-operator"
ANNOTATION_TRACEPARENT = "ferry.dev/traceparent"
# On the Job: a digest per transfer-defining spec field it was built from, of the values that
# differ from their defaults (so a field added later with a default changes no digest). v2:
# a Job carrying the v1 record (defaults included) has no readable record, is never "changed".
ANNOTATION_SPEC_DIGESTS = "ferry.dev/spec-digests-v2"
# Admin-gated: only a namespace carrying this annotation may run movers as
# root with the capabilities owner preservation needs (as VolSync does).
NAMESPACE_PRIVILEGED_ANNOTATION = "ferry.dev/privileged-movers"

CONTAINER = "mover"
SPEC_DIR = "/etc/ferry/spec"
CA_DIR = "/etc/ferry/ca"
CA_FILE = f"{CA_DIR}/ca.crt"
# What the mover's HTTPS clients read a CA bundle from: OpenSSL (the S3 wire, OTLP), botocore,
# requests.
CA_ENV = ("SSL_CERT_FILE", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE")
MOVER_UID = 65532
PRIVILEGED_CAPABILITIES = ["CHOWN", "FOWNER", "DAC_OVERRIDE", "FSETID", "SETFCAP"]

# Exit codes after which another pod cannot do better: fail the Job at once.
TERMINAL_EXIT_CODES = sorted(k.exit_code for k in ErrorKind if not k.retryable)


@dataclass(frozen=True)
class MoverSettings:
    """How the operator was told to run movers (from its command line / Helm values)."""

    image: str = "ghcr.io/ferry-dev/ferry:dev"
    image_pull_policy: str = "IfNotPresent"
    env: dict[str, str] = field(default_factory=dict)  # e.g. OTEL_* passed through
    progress_interval_seconds: float = 2.0
    run_as_user: int = MOVER_UID  # non-root uid/gid/fsGroup for unprivileged movers
    pod: api.MoverPod = field(default_factory=api.MoverPod)  # the chart's moverPod defaults


@dataclass(frozen=True)
class Context:
    """Facts about the cluster the builders need, gathered by the caller."""

    namespace_privileged: bool = False
    pool: api.MoverPoolSpec | None = None
    pin_node: str | None = None  # node holding an RWO claim we must share
    traceparent: str | None = None


def child_name(tj_name: str, prefix: str = "ferry-") -> str:
    """A DNS-label-safe name for the TransferJob's children (Job names feed pod labels: <= 63)."""
    name = f"{prefix}{tj_name}"
    if len(name) <= 52:
        return name
    digest = hashlib.sha256(tj_name.encode()).hexdigest()[:8]
    return f"{name[:43].rstrip('-')}-{digest}"


def labels(tj_name: str) -> dict[str, str]:
    return {
        LABEL_NAME: "ferry-mover",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TRANSFERJOB: tj_name,
    }


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TransferJobKind.kind,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(body: dict[str, Any], name: str) -> dict[str, Any]:
    tj = body["metadata"]["name"]
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": labels(tj),
        "ownerReferences": [owner_reference(body)],
    }


# ---------------------------------------------------------------- mounts


def volumes(mounts: list[Mount]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container volumeMounts) for what the mover specs point into."""
    vols: list[dict[str, Any]] = []
    into: list[dict[str, Any]] = []
    for m in mounts:
        if isinstance(m, ClaimMount):
            claim = {"claimName": m.claim_name, "readOnly": m.read_only}
            vols.append({"name": m.volume, "persistentVolumeClaim": claim})
            into.append({"name": m.volume, "mountPath": m.path, "readOnly": m.read_only})
        elif isinstance(m, ConfigMapMount):
            items = [{"key": m.key, "path": m.file}]
            vols.append(
                {"name": m.volume, "configMap": {"name": m.config_map_name, "items": items}}
            )
            into.append({"name": m.volume, "mountPath": m.path, "readOnly": True})
        else:
            items = [{"key": k, "path": k} for k in dict.fromkeys(m.keys)]
            secret = {"secretName": m.secret_name, "defaultMode": 0o400, "items": items}
            vols.append({"name": m.volume, "secret": secret})
            into.append({"name": m.volume, "mountPath": m.path, "readOnly": True})
    return vols, into


# ---------------------------------------------------------------- objects


def config_map(body: dict[str, Any], specs: list[TransferSpec]) -> dict[str, Any]:
    """The mover specs, one file per shard (`spec-<JOB_COMPLETION_INDEX>.json`)."""
    docs = [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in specs]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(body, child_name(body["metadata"]["name"])),
        "data": {
            f"spec-{i}.json": json.dumps(d, indent=2, sort_keys=True) for i, d in enumerate(docs)
        },
    }


def service_account(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(body, child_name(body["metadata"]["name"])),
        "automountServiceAccountToken": True,
    }


def role(body: dict[str, Any]) -> dict[str, Any]:
    """The mover may read and patch the status of its own TransferJob — nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(body, child_name(body["metadata"]["name"])),
        "rules": [
            {
                "apiGroups": [api.GROUP],
                "resources": [f"{api.TransferJobKind.plural}/status"],
                "resourceNames": [body["metadata"]["name"]],
                "verbs": ["get", "patch"],
            }
        ],
    }


def role_binding(body: dict[str, Any], account: str | None = None) -> dict[str, Any]:
    """Binds the per-job Role to the movers' ServiceAccount: the one made for this TransferJob,
    or the user's (`account`, from spec.pod.serviceAccountName)."""
    name = child_name(body["metadata"]["name"])
    subject = account or name
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(body, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": subject, "namespace": body["metadata"]["namespace"]}
        ],
    }


# ---------------------------------------------------------------- what users adapt


def _over(base: Any, own: Any) -> Any:
    """`own`'s given fields over `base`'s (two models of one class, either may be None)."""
    if base is None or own is None:
        return own if base is None else base
    return base.model_copy(update={k: v for k, v in own if v is not None})


def pod_settings(spec: api.TransferJobSpec, settings: MoverSettings) -> api.MoverPod:
    """The TransferJob's spec.pod over the chart's defaults: labels and annotations merge (its
    value wins per key), securityContext and proxy per field, the rest whole."""
    base, own = settings.pod, spec.pod or api.MoverPod()
    pulls = own.image_pull_secrets
    return api.MoverPod(
        security_context=_over(base.security_context, own.security_context),
        service_account_name=own.service_account_name or base.service_account_name,
        labels={**(base.labels or {}), **(own.labels or {})} or None,
        annotations={**(base.annotations or {}), **(own.annotations or {})} or None,
        image_pull_secrets=base.image_pull_secrets if pulls is None else pulls,
        ca_bundle=own.ca_bundle or base.ca_bundle,
        proxy=_over(base.proxy, own.proxy),
    )


def check_pod(spec: api.TransferJobSpec, ctx: Context) -> None:
    """Refuse what would escalate: uid or gid 0 asked by a TransferJob (the chart's defaults
    are the admin's) needs the namespace an admin annotated; preserving owners runs as root,
    which another runAsUser would silently undo."""
    own = spec.pod.security_context if spec.pod else None
    if own is None:
        return
    for name, value in own.ids():
        if value == 0 and not ctx.namespace_privileged:
            raise InvalidSpec(
                f"spec.pod.securityContext.{name}",
                "0 (root) needs the namespace's "
                f"{NAMESPACE_PRIVILEGED_ANNOTATION}=true annotation an admin sets",
                reason="PrivilegeNotGranted",
            )
    if needs_privilege(spec):
        for field_name, given in (
            ("runAsUser", own.run_as_user),
            ("runAsGroup", own.run_as_group),
        ):
            if given not in (None, 0):
                why = (
                    "chown (spec.chown)"
                    if spec.chown is not None
                    else "preserving owners (spec.preserve)"
                )
                raise InvalidSpec(
                    f"spec.pod.securityContext.{field_name}",
                    f"{why} runs the mover as root; leave it unset",
                )


def _adapt(
    pod_spec: dict[str, Any],
    template_meta: dict[str, Any],
    containers: list[dict[str, Any]],
    mp: api.MoverPod,
) -> None:
    """Put what the user adapts into a pod the operator built: labels and annotations under
    the operator's own, pull secrets, the CA bundle and proxy variables."""
    template_meta["labels"] = {**(mp.labels or {}), **template_meta.get("labels", {})}
    annotations = {**(mp.annotations or {}), **template_meta.get("annotations", {})}
    if annotations:
        template_meta["annotations"] = annotations
    if mp.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": r.name} for r in mp.image_pull_secrets]
    env: list[dict[str, Any]] = []
    if mp.ca_bundle is not None:
        items = [{"key": mp.ca_bundle.key, "path": "ca.crt"}]
        pod_spec["volumes"].append(
            {"name": "ca-bundle", "configMap": {"name": mp.ca_bundle.name, "items": items}}
        )
        for c in containers:
            c["volumeMounts"].append({"name": "ca-bundle", "mountPath": CA_DIR, "readOnly": True})
        env += [{"name": k, "value": CA_FILE} for k in CA_ENV]
    proxy = mp.proxy or api.Proxy()
    for name, value in (
        ("HTTP_PROXY", proxy.http_proxy),
        ("HTTPS_PROXY", proxy.https_proxy),
        ("NO_PROXY", proxy.no_proxy),
    ):
        if value is not None:  # both spellings: programs read one or the other
            env += [{"name": name, "value": value}, {"name": name.lower(), "value": value}]
    for c in containers:
        c["env"] = [*c.get("env", []), *env]


def _security(
    privileged: bool, uid: int = MOVER_UID, own: api.PodSecurity | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod securityContext, container securityContext); `own` (checked by `check_pod`) over
    the operator's uid."""
    pod: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    container: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    if privileged:
        pod |= {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}
        container["capabilities"]["add"] = list(PRIVILEGED_CAPABILITIES)
    else:
        pod |= {"runAsUser": uid, "runAsGroup": uid, "fsGroup": uid}
    if own is not None:
        given = {
            "runAsUser": None if privileged else own.run_as_user,
            "runAsGroup": None if privileged else own.run_as_group,
            "fsGroup": own.fs_group,
            "supplementalGroups": own.supplemental_groups,
            "fsGroupChangePolicy": own.fs_group_change_policy,
        }
        pod |= {k: v for k, v in given.items() if v is not None}
    if not privileged:
        pod["runAsNonRoot"] = pod["runAsUser"] != 0
    if "fsGroup" in pod:
        pod.setdefault("fsGroupChangePolicy", "OnRootMismatch")
    return pod, container


def needs_privilege(spec: api.TransferJobSpec) -> bool:
    """Root and chown capabilities only where they are used: owners kept on a volume. No other
    destination holds owners (the mover names them as not kept)."""
    owners = "owners" in (spec.preserve or []) or spec.chown is not None
    return owners and spec.destination.pvc is not None


def _privilege_field(spec: api.TransferJobSpec) -> str:
    """The field that makes the mover run as root: chown, or preserve's owners."""
    return "spec.chown" if spec.chown is not None else "spec.preserve"


def _placement(spec: api.TransferJobSpec, ctx: Context) -> dict[str, Any]:
    """Pod spec fields from spec.placement over the MoverPool's defaults."""
    pool = ctx.pool or api.MoverPoolSpec()
    own = spec.placement or api.Placement()
    out: dict[str, Any] = {}
    node_selector = {**(pool.node_selector or {}), **(own.node_selector or {})}
    if node_selector:
        out["nodeSelector"] = node_selector
    tolerations = [*(pool.tolerations or []), *(own.tolerations or [])]
    if tolerations:
        out["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in tolerations]
    priority = own.priority_class_name or pool.priority_class_name
    if priority:
        out["priorityClassName"] = priority
    if ctx.pin_node:
        out["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": [ctx.pin_node]}
                            ]
                        }
                    ]
                }
            }
        }
    return out


def _resources(spec: api.TransferJobSpec, ctx: Context) -> dict[str, Any]:
    res = (spec.placement.resources if spec.placement else None) or (
        ctx.pool.resources if ctx.pool else None
    )
    if res is None:
        return {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}
    return res.model_dump(by_alias=True, exclude_none=True)


def limits_env() -> list[dict[str, Any]]:
    """The container's CPU (millicores) and memory (bytes) limits, for the mover to size
    itself by (ferry/mover/host.py); without a limit Kubernetes gives the node's allocatable."""
    return [
        {
            "name": name,
            "valueFrom": {
                "resourceFieldRef": {"containerName": CONTAINER, "resource": res, "divisor": div}
            },
        }
        for name, res, div in (
            (host.CPU_ENV, "limits.cpu", "1m"),
            (host.MEMORY_ENV, "limits.memory", "1"),
        )
    ]


def job(
    body: dict[str, Any],
    spec: api.TransferJobSpec,
    ctx: Context,
    settings: MoverSettings,
    mounts: list[Mount],
) -> dict[str, Any]:
    """The batch/v1 Job: an Indexed Job with one pod per shard."""
    meta = body["metadata"]
    data_volumes, data_mounts = volumes(mounts)
    name = child_name(meta["name"])
    shards = spec.shard_count()
    retry = spec.retry or api.Retry()
    privileged = needs_privilege(spec)
    mp = pod_settings(spec, settings)
    pod_security, container_security = _security(
        privileged, settings.run_as_user, mp.security_context
    )
    env = [
        {"name": "FERRY_TRANSFERJOB", "value": f"{meta['namespace']}/{meta['name']}"},
        {"name": "FERRY_STATUS_INTERVAL", "value": str(settings.progress_interval_seconds)},
        {"name": "FERRY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    env += limits_env()
    if ctx.traceparent:
        env.append({"name": "TRACEPARENT", "value": ctx.traceparent})
    env += [{"name": k, "value": v} for k, v in sorted(settings.env.items())]
    container = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["run", "--spec", f"{SPEC_DIR}/spec-$(JOB_COMPLETION_INDEX).json"],
        "env": env,
        "resources": _resources(spec, ctx),
        "securityContext": container_security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *data_mounts,
        ],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": mp.service_account_name or name,
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": name}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            *data_volumes,
        ],
        **_placement(spec, ctx),
    }
    annotations = {ANNOTATION_TRACEPARENT: ctx.traceparent} if ctx.traceparent else {}
    template_meta: dict[str, Any] = {"labels": labels(meta["name"]), "annotations": annotations}
    _adapt(pod_spec, template_meta, [container], mp)
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": shards,
        "parallelism": shards,
        "backoffLimit": retry.limit * shards,
        "suspend": bool(spec.suspend),
        "podFailurePolicy": {
            "rules": [
                # A deleted or evicted pod is not the transfer's fault: retry without counting.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": TERMINAL_EXIT_CODES,
                    },
                },
            ]
        },
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    job_annotations = {**annotations, ANNOTATION_SPEC_DIGESTS: json.dumps(spec_digests(spec))}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**_meta(body, name), "annotations": job_annotations},
        "spec": job_spec,
    }


def spec_digests(spec: api.TransferJobSpec) -> dict[str, str]:
    """A short digest of each transfer-defining field, so a later reconcile can name what changed."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return {
        name: hashlib.sha256(
            json.dumps(data.get(name), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()[:16]
        for name in api.fixed_spec_fields()
    }


def changed_fields(job: dict[str, Any], spec: api.TransferJobSpec) -> list[str]:
    """Transfer-defining fields of `spec` that differ from those `job` was built from.

    Empty when the Job carries no readable record (built by an older operator):
    what cannot be compared is not reported as changed.
    """
    raw = ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_DIGESTS)
    if not isinstance(raw, str) or len(raw) > 4096:
        return []
    try:
        built = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(built, dict):
        return []
    return [f for f, d in spec_digests(spec).items() if f in built and built[f] != d]


@dataclass
class Workload:
    """Everything one TransferJob needs, in creation order."""

    config_map: dict[str, Any]
    service_account: dict[str, Any] | None  # None: the user's (spec.pod.serviceAccountName)
    role: dict[str, Any]
    role_binding: dict[str, Any]
    job: dict[str, Any]
    privileged: bool

    def objects(self) -> list[dict[str, Any]]:
        made = [self.config_map, self.service_account, self.role, self.role_binding, self.job]
        return [o for o in made if o is not None]


def build(
    body: dict[str, Any], spec: api.TransferJobSpec, ctx: Context, settings: MoverSettings
) -> Workload:
    """Build every object for `body`; raise InvalidSpec naming the field when it cannot run."""
    privileged = needs_privilege(spec)
    if privileged and not ctx.namespace_privileged:
        what = "chown" if spec.chown is not None else "preserving owners"
        raise InvalidSpec(
            _privilege_field(spec),
            f"{what} needs root; the namespace lacks the "
            f"{NAMESPACE_PRIVILEGED_ANNOTATION}=true annotation an admin sets",
            reason="PrivilegeNotGranted",
        )
    check_pod(spec, ctx)
    check_overlap(spec)
    specs = mover_specs(spec, ctx.pool)
    account = pod_settings(spec, settings).service_account_name
    return Workload(
        config_map=config_map(body, specs.shards),
        service_account=None if account else service_account(body),
        role=role(body),
        role_binding=role_binding(body, account),
        job=job(body, spec, ctx, settings, specs.mounts),
        privileged=privileged,
    )


def claims(spec: api.TransferJobSpec) -> list[str]:
    return [ep.pvc.claim_name for ep in (spec.source, spec.destination) if ep.pvc is not None]


@dataclass(frozen=True)
class ClaimUse:
    """A scheduled, unfinished pod mounting a claim: on which node, for which Job (if any)."""

    claim: str
    node: str
    job: str = ""


def claim_uses(pod: dict[str, Any]) -> list[ClaimUse]:
    """The claims `pod` holds mounted (what the operator's pod index keeps per claim)."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return []
    job = str(((pod.get("metadata") or {}).get("labels") or {}).get("job-name") or "")
    names = {
        str(claim)
        for vol in spec.get("volumes") or []
        if (claim := (vol.get("persistentVolumeClaim") or {}).get("claimName"))
    }
    return [ClaimUse(claim=c, node=str(node), job=job) for c in sorted(names)]


def rwo_pin(
    claim_names: list[str], pvcs: list[dict[str, Any]], uses: list[ClaimUse], own_job: str
) -> str | None:
    """The node of a running pod that already mounts one of our ReadWriteOnce claims.

    An RWO volume can be mounted by many pods on one node only: a mover that
    lands elsewhere would hang in ContainerCreating. `uses` comes from the pod
    index (by claim), not from listing the namespace's pods.
    """
    rwo = {
        p["metadata"]["name"]
        for p in pvcs
        if p["metadata"]["name"] in claim_names
        and "ReadWriteOnce" in (p.get("spec", {}).get("accessModes") or [])
        and not {"ReadWriteMany", "ReadOnlyMany"} & set(p["spec"].get("accessModes") or [])
    }
    for use in uses:
        if use.claim in rwo and use.job != own_job:
            return use.node
    return None
