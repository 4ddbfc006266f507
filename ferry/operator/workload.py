"""TransferJob -> the objects that run it: ConfigMap, ServiceAccount, Role, RoleBinding, Job.

Pure builders: plain dicts in, plain dicts out, no API calls, so every rule
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

from ferry.mover import roots
from ferry.mover import spec as mover_spec
from ferry.mover.errors import ErrorKind
from ferry.operator import api

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TRANSFERJOB = "ferry.dev/transferjob"
LABEL_SCHEDULE = "ferry.dev/schedule"
MANAGED_BY = "ferry-operator"
ANNOTATION_TRACEPARENT = "ferry.dev/traceparent"
# On the Job: a digest per transfer-defining spec field it was built from.
ANNOTATION_SPEC_DIGESTS = "ferry.dev/spec-digests"
# Admin-gated: only a namespace carrying this annotation may run movers as
# root with the capabilities owner preservation needs (as VolSync does).
NAMESPACE_PRIVILEGED_ANNOTATION = "ferry.dev/privileged-movers"

CONTAINER = "mover"
SPEC_DIR = "/etc/ferry/spec"
DATA_DIR = "/data"
SECRETS_DIR = "/var/run/ferry/secrets"
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


@dataclass(frozen=True)
class Context:
    """Facts about the cluster the builders need, gathered by the caller."""

    namespace_privileged: bool = False
    pool: api.MoverPoolSpec | None = None
    pin_node: str | None = None  # node holding an RWO claim we must share
    traceparent: str | None = None


class InvalidSpec(ValueError):
    """A spec the operator refuses; `field` names the offending field."""

    def __init__(self, field_path: str, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.reason = reason


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


# ---------------------------------------------------------------- transfer spec


@dataclass
class _Mounts:
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def _secret_volume(mounts: _Mounts, side: str, secret: str, keys: list[str]) -> str:
    """Mount only the named keys of `secret`; return the directory."""
    vol = f"{side}-secret"
    path = f"{SECRETS_DIR}/{side}"
    mounts.volumes.append(
        {
            "name": vol,
            "secret": {
                "secretName": secret,
                "defaultMode": 0o400,
                "items": [{"key": k, "path": k} for k in dict.fromkeys(keys)],
            },
        }
    )
    mounts.mounts.append({"name": vol, "mountPath": path, "readOnly": True})
    return path


def _endpoint(ep: api.Endpoint, side: str, mounts: _Mounts) -> dict[str, Any]:
    """The mover's endpoint spec for one side, adding the volumes it needs."""
    if ep.pvc is not None:
        vol = f"{side}-data"
        mount = f"{DATA_DIR}/{side}"
        mounts.volumes.append(
            {
                "name": vol,
                "persistentVolumeClaim": {
                    "claimName": ep.pvc.claim_name,
                    "readOnly": side == "source",
                },
            }
        )
        mounts.mounts.append({"name": vol, "mountPath": mount, "readOnly": side == "source"})
        path = mount + ("/" + ep.pvc.path.strip("/") if ep.pvc.path.strip("/") else "")
        return {"kind": "local", "path": path}
    if ep.s3 is not None:
        s3 = ep.s3
        out: dict[str, Any] = {
            "kind": "s3",
            "bucket": s3.bucket,
            "prefix": s3.prefix,
            "endpointUrl": s3.endpoint,
            "region": s3.region,
            "pathStyle": s3.path_style,
            "sse": s3.sse,
            "sseKmsKeyId": s3.sse_kms_key_id,
            "storageClass": s3.storage_class,
        }
        if s3.secret_ref is not None:
            d = _secret_volume(mounts, side, s3.secret_ref.name, [s3.secret_ref.key])
            out["credentialsFile"] = f"{d}/{s3.secret_ref.key}"
        return {k: v for k, v in out.items() if v is not None}
    if ep.sftp is not None:
        sftp = ep.sftp
        out = {
            "kind": "sftp",
            "host": sftp.host,
            "port": sftp.port,
            "path": sftp.path,
            "user": sftp.user,
            "insecureIgnoreHostKey": sftp.insecure_ignore_host_key,
        }
        if sftp.secret_ref is not None:
            ref = sftp.secret_ref
            key = ref.password_key or ref.private_key_key
            d = _secret_volume(mounts, side, ref.name, [key])
            out["passwordFile" if ref.password_key else "keyFile"] = f"{d}/{key}"
        if sftp.known_hosts_ref is not None:
            kh = sftp.known_hosts_ref
            d = _secret_volume(mounts, f"{side}-known-hosts", kh.name, [kh.key])
            out["knownHostsFile"] = f"{d}/{kh.key}"
        return {k: v for k, v in out.items() if v is not None}
    assert ep.smb is not None
    smb = ep.smb
    out = {
        "kind": "smb",
        "host": smb.host,
        "port": smb.port,
        "share": smb.share,
        "path": smb.path,
        "user": smb.user,
        "domain": smb.domain,
        "encrypt": smb.encrypt,
    }
    if smb.secret_ref is not None:
        d = _secret_volume(mounts, side, smb.secret_ref.name, [smb.secret_ref.password_key])
        out["passwordFile"] = f"{d}/{smb.secret_ref.password_key}"
    return {k: v for k, v in out.items() if v is not None}


def _options(spec: api.TransferJobSpec, pool: api.MoverPoolSpec | None) -> dict[str, Any]:
    tuning = pool.tuning if pool and pool.tuning else api.Tuning()
    par = spec.parallelism or api.Parallelism()
    retry = spec.retry or api.Retry()
    opts: dict[str, Any] = {
        "mode": spec.mode,
        "compare": spec.compare,
        "verify": spec.verify,
        "fsync": spec.fsync,
        "symlinks": spec.symlinks,
        "filters": spec.filters or [],
        "retries": retry.per_file,
        "errorPolicy": spec.error_policy,
        "dryRun": spec.dry_run,
        "allowEmptySource": spec.allow_empty_source,
        "preflight": spec.preflight,
    }
    if spec.min_free is not None:
        opts["minFree"] = spec.min_free
    if spec.preserve is not None:
        opts["preserve"] = list(spec.preserve)
    streams = par.streams or tuning.streams
    if streams:
        opts["transfers"] = streams
    chunk = par.chunk_size or tuning.chunk_size
    if chunk:
        opts["chunkSize"] = chunk
    if spec.bandwidth:
        opts["bandwidth"] = spec.bandwidth
    return opts


def transfer_specs(spec: api.TransferJobSpec, ctx: Context) -> tuple[list[dict[str, Any]], _Mounts]:
    """One mover TransferSpec (as JSON-ready dicts) per shard, validated by the mover's own model."""
    mounts = _Mounts()
    source = _endpoint(spec.source, "source", mounts)
    destination = _endpoint(spec.destination, "destination", mounts)
    options = _options(spec, ctx.pool)
    n = spec.shard_count()
    out = []
    for i in range(n):
        doc: dict[str, Any] = {"source": source, "destination": destination, "options": options}
        if spec.max_delete is not None:
            # Each shard deletes its own part: their shares add up to the limit, never past it.
            share = spec.max_delete // n + (i < spec.max_delete % n)
            doc["options"] = {**options, "maxDelete": share}
        if n > 1:
            doc["shard"] = {"index": i, "count": n}
        try:
            parsed = mover_spec.TransferSpec.model_validate(doc)
        except ValueError as exc:
            raise InvalidSpec("spec", str(exc).splitlines()[-1].strip()) from exc
        out.append(parsed.model_dump(mode="json", by_alias=True, exclude_none=True))
    return out, mounts


# ---------------------------------------------------------------- objects


def config_map(body: dict[str, Any], specs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(body, child_name(body["metadata"]["name"])),
        "data": {
            f"spec-{i}.json": json.dumps(s, indent=2, sort_keys=True) for i, s in enumerate(specs)
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


def role_binding(body: dict[str, Any]) -> dict[str, Any]:
    name = child_name(body["metadata"]["name"])
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(body, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": name, "namespace": body["metadata"]["namespace"]}
        ],
    }


def _security(privileged: bool, uid: int = MOVER_UID) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod securityContext, container securityContext)."""
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
        pod |= {"runAsNonRoot": uid != 0, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid}
    return pod, container


def needs_privilege(spec: api.TransferJobSpec) -> bool:
    """Root and chown capabilities only where they are used: owners kept on a volume. No other
    destination holds owners (the mover names them as not kept)."""
    return "owners" in (spec.preserve or []) and spec.destination.pvc is not None


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


def job(
    body: dict[str, Any],
    spec: api.TransferJobSpec,
    ctx: Context,
    settings: MoverSettings,
    mounts: _Mounts,
) -> dict[str, Any]:
    """The batch/v1 Job: an Indexed Job with one pod per shard."""
    meta = body["metadata"]
    name = child_name(meta["name"])
    shards = spec.shard_count()
    retry = spec.retry or api.Retry()
    privileged = needs_privilege(spec)
    pod_security, container_security = _security(privileged, settings.run_as_user)
    env = [
        {"name": "FERRY_TRANSFERJOB", "value": f"{meta['namespace']}/{meta['name']}"},
        {"name": "FERRY_STATUS_INTERVAL", "value": str(settings.progress_interval_seconds)},
        {"name": "FERRY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
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
            *mounts.mounts,
        ],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": name,
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": name}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            *mounts.volumes,
        ],
        **_placement(spec, ctx),
    }
    annotations = {ANNOTATION_TRACEPARENT: ctx.traceparent} if ctx.traceparent else {}
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
        "template": {
            "metadata": {"labels": labels(meta["name"]), "annotations": annotations},
            "spec": pod_spec,
        },
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
    data = spec.model_dump(mode="json", by_alias=True)
    return {
        name: hashlib.sha256(
            json.dumps(data[name], sort_keys=True, separators=(",", ":")).encode()
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
    service_account: dict[str, Any]
    role: dict[str, Any]
    role_binding: dict[str, Any]
    job: dict[str, Any]
    privileged: bool

    def objects(self) -> list[dict[str, Any]]:
        return [self.config_map, self.service_account, self.role, self.role_binding, self.job]


_PATH_FIELD = {"pvc": "path", "s3": "prefix", "sftp": "path", "smb": "path"}
_OVERLAP = {
    roots.Overlap.SAME: "is the same location as the source",
    roots.Overlap.DST_IN_SRC: "is inside the source",
    roots.Overlap.SRC_IN_DST: "contains the source",
}
_SHARED = {"pvc": "claim", "s3": "server and bucket", "sftp": "server", "smb": "server and share"}


def root_id(ep: api.Endpoint) -> roots.RootId:
    """What an endpoint names, in the engine's terms (ferry.mover.roots); a claim is its
    own namespace."""
    if ep.pvc is not None:
        return roots.RootId(("pvc", ep.pvc.claim_name), roots.path_parts(ep.pvc.path))
    if ep.s3 is not None:
        return roots.s3_root(ep.s3.endpoint, ep.s3.region, ep.s3.bucket, ep.s3.prefix)
    if ep.sftp is not None:
        return roots.sftp_root(ep.sftp.host, ep.sftp.port, ep.sftp.user, ep.sftp.path)
    assert ep.smb is not None
    return roots.smb_root(ep.smb.host, ep.smb.port, ep.smb.share, ep.smb.path)


def check_overlap(spec: api.TransferJobSpec) -> None:
    """Refuse endpoints that visibly overlap, whatever the mode, before any pod starts.

    What only the mover can see (symlinks, an SFTP `~` path against an absolute one,
    two names of one host) it refuses itself, with exit code 4, which fails the Job."""
    how = roots.overlap(root_id(spec.source), root_id(spec.destination))
    if how is not None:
        kind = spec.destination.kind
        raise InvalidSpec(
            f"spec.destination.{kind}.{_PATH_FIELD[kind]}",
            f"{_OVERLAP[how]} (the same {_SHARED[kind]})",
        )


def build(
    body: dict[str, Any], spec: api.TransferJobSpec, ctx: Context, settings: MoverSettings
) -> Workload:
    """Build every object for `body`; raise InvalidSpec naming the field when it cannot run."""
    privileged = needs_privilege(spec)
    if privileged and not ctx.namespace_privileged:
        raise InvalidSpec(
            "spec.preserve",
            "preserving owners needs root; the namespace lacks the "
            f"{NAMESPACE_PRIVILEGED_ANNOTATION}=true annotation an admin sets",
            reason="PrivilegeNotGranted",
        )
    check_overlap(spec)
    specs, mounts = transfer_specs(spec, ctx)
    return Workload(
        config_map=config_map(body, specs),
        service_account=service_account(body),
        role=role(body),
        role_binding=role_binding(body),
        job=job(body, spec, ctx, settings, mounts),
        privileged=privileged,
    )


def claims(spec: api.TransferJobSpec) -> list[str]:
    return [ep.pvc.claim_name for ep in (spec.source, spec.destination) if ep.pvc is not None]


def rwo_pin(
    claim_names: list[str], pvcs: list[dict[str, Any]], pods: list[dict[str, Any]], own_job: str
) -> str | None:
    """The node of a running pod that already mounts one of our ReadWriteOnce claims.

    An RWO volume can be mounted by many pods on one node only: a mover that
    lands elsewhere would hang in ContainerCreating.
    """
    rwo = {
        p["metadata"]["name"]
        for p in pvcs
        if p["metadata"]["name"] in claim_names
        and "ReadWriteOnce" in (p.get("spec", {}).get("accessModes") or [])
        and not {"ReadWriteMany", "ReadOnlyMany"} & set(p["spec"].get("accessModes") or [])
    }
    if not rwo:
        return None
    for pod in pods:
        if (pod.get("metadata", {}).get("labels") or {}).get("job-name") == own_job:
            continue
        node = pod.get("spec", {}).get("nodeName")
        if not node or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for vol in pod["spec"].get("volumes") or []:
            if (vol.get("persistentVolumeClaim") or {}).get("claimName") in rwo:
                return str(node)
    return None
