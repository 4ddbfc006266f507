"""A sender/receiver pair for two claims no single pod can mount, and its objects.

Two ReadWriteOnce claims held on different nodes (or whose volumes are bound to
different nodes, as local volumes are) cannot be mounted by one mover pod. The
operator then runs a receiver (`ferry serve` on the destination's node) and the
usual mover Job as sender on the source's node, whose destination is the
receiver's `ferry://` endpoint. Progress, result and the trace come from the
sender exactly as for a single mover; the receiver is a server and reports nothing.

The receiver is reached through a ClusterIP Service: its address is known as soon as
the Service exists (before any pod runs), so the server certificate, the sender's
spec and the Service are all built in one reconcile; it survives a receiver pod being
replaced; and it needs no cluster DNS (the certificate holds the IP and the DNS names).
The sender's init container waits until the receiver completes a mutual TLS handshake
through the Service, so the sender never starts against nothing (no readiness probe: a
bare TCP probe would log a refused handshake every period).

When the sender's Job ends the operator deletes the receiver's Job (see
`stop_receiver`): only the operator knows the sender has finished for good (a
failed sender pod is retried and resumes against the same receiver), and deleting
frees the destination claim at once; an idle timeout in `ferry serve` would be a guess.

A destination claim in another namespace (`destination.pvc.namespace`) always takes a
pair: the receiver, its Service and a Secret with the server's keys live there, the
sender and a Secret with the client's keys here. Owner references cannot cross
namespaces, so the foreign objects carry the TransferJob's uid in LABEL_OWNER_UID and
are deleted when the sender ends and when the TransferJob is deleted (`remove_foreign`,
behind a finalizer). Both namespaces must opt in (`cross_namespace_refusal`): data
leaving a namespace and data written into another are each its owner's decision.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferry.mover import spec as ms
from ferry.operator import api, certs, moverspec, workload

WIRE_PORT = 7443
WIRE_DIR = "/var/run/ferry/wire"
SERVER_KEYS = ("ca.crt", "tls.crt", "tls.key")
CLIENT_KEYS = ("ca.crt", "client.crt", "client.key")
LABEL_RECEIVER_OF = "ferry.dev/receiver-of"
# On the sender's Job: the receiver Job to stop when it ends.
ANNOTATION_RECEIVER = "ferry.dev/wire-receiver"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# On objects in the destination's namespace: the uid of the TransferJob they serve.
LABEL_OWNER_UID = "ferry.dev/owner-uid"
ANNOTATION_OWNER = "ferry.dev/owner"  # "<namespace>/<name>" of that TransferJob
# Namespace annotations, comma-separated namespace lists: the source's namespace names
# where its data may go, the destination's whose TransferJobs may write into it.
ALLOW_TO = "ferry.dev/allow-transfers-to"
ALLOW_FROM = "ferry.dev/allow-transfers-from"
CROSS_NAMESPACE_REFUSED = "CrossNamespaceNotAllowed"
WAIT_SECONDS = 600  # how long the sender's init container waits for the receiver

# The sender's init container: wait, with a deadline, until the receiver completes a
# mutual TLS handshake through its Service (it has an endpoint and listens; the
# certificates fit). Runs with the image's Python: argv is host, port, seconds, cert dir.
WAIT_SCRIPT = """\
import socket, ssl, sys, time
host, port, limit, d = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_verify_locations(d + "/ca.crt")
ctx.load_cert_chain(d + "/client.crt", d + "/client.key")
end = time.monotonic() + limit
while True:
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            ctx.wrap_socket(raw, server_hostname=host).close()
        break
    except OSError as exc:
        if time.monotonic() > end:
            sys.exit(f"receiver {host}:{port} not reachable after {limit:.0f}s: {exc}")
        time.sleep(1)
"""


def wire_name(tj_name: str) -> str:
    """The Secret and the Service of the pair."""
    return workload.child_name(tj_name) + "-wire"


def receiver_name(tj_name: str) -> str:
    return workload.child_name(tj_name) + "-recv"


# ---------------------------------------------------------------- the decision


def _listed(annotations: dict[str, str], key: str, ns: str) -> bool:
    return ns in {n.strip() for n in (annotations.get(key) or "").split(",")}


def cross_namespace_refusal(
    own_ns: str, dst_ns: str, own_annotations: dict[str, str], dst_annotations: dict[str, str]
) -> str | None:
    """Why a TransferJob in `own_ns` (its source's namespace) may not write a claim in
    `dst_ns`, naming the annotation that would allow it; None when both opted in."""
    if not _listed(own_annotations, ALLOW_TO, dst_ns):
        return (
            f"namespace {own_ns} does not allow its data to go to namespace {dst_ns}: "
            f"annotate namespace {own_ns} with {ALLOW_TO}: {dst_ns}"
        )
    if not _listed(dst_annotations, ALLOW_FROM, own_ns):
        return (
            f"namespace {dst_ns} does not accept transfers from namespace {own_ns}: "
            f"annotate namespace {dst_ns} with {ALLOW_FROM}: {own_ns}"
        )
    return None


@dataclass(frozen=True, slots=True)
class Pair:
    """Where each side must run: the node of a pod holding its claim, if one does (a
    volume bound to a node by its PV needs no pin: the scheduler follows the PV)."""

    source_node: str | None
    destination_node: str | None


def _rwo_only(pvc: dict[str, Any]) -> bool:
    modes = set((pvc.get("spec") or {}).get("accessModes") or [])
    return "ReadWriteOnce" in modes and not {"ReadWriteMany", "ReadOnlyMany"} & modes


def _held_on(claim: str, uses: list[workload.ClaimUse], own_job: str) -> str | None:
    """The node of a running pod (not our own sender's) that mounts `claim`."""
    for use in uses:
        if use.claim == claim and use.job != own_job:
            return use.node
    return None


def pv_node(pv: dict[str, Any] | None) -> str | None:
    """The one node a PV's required node affinity allows (local volumes), if exactly one."""
    required = (((pv or {}).get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}
    terms = required.get("nodeSelectorTerms") or []
    if len(terms) != 1:
        return None
    nodes: set[str] = set()
    for expr in terms[0].get("matchExpressions") or []:
        if expr.get("key") == HOSTNAME_LABEL and expr.get("operator") == "In":
            nodes.update(expr.get("values") or [])
    return nodes.pop() if len(nodes) == 1 else None


def plan(
    spec: api.TransferJobSpec,
    pvcs: list[dict[str, Any]],
    uses: list[workload.ClaimUse],
    own_job: str,
    get_pv: Callable[[str], dict[str, Any] | None],
) -> Pair | None:
    """A Pair when source and destination are ReadWriteOnce claims that must be mounted on
    different nodes; None when one mover pod can mount both (or nothing says otherwise)."""
    src, dst = spec.source.pvc, spec.destination.pvc
    if src is None or dst is None or src.claim_name == dst.claim_name:
        return None
    by_name = {p["metadata"]["name"]: p for p in pvcs}
    claims = [by_name.get(src.claim_name), by_name.get(dst.claim_name)]
    if not all(c is not None and _rwo_only(c) for c in claims):
        return None
    held = [_held_on(c, uses, own_job) for c in (src.claim_name, dst.claim_name)]
    where = []
    for pvc, node in zip(claims, held, strict=True):
        assert pvc is not None
        volume = (pvc.get("spec") or {}).get("volumeName")
        where.append(node or (pv_node(get_pv(volume)) if volume else None))
    if where[0] is None or where[1] is None or where[0] == where[1]:
        return None
    return Pair(source_node=held[0], destination_node=held[1])


# ---------------------------------------------------------------- the objects


@dataclass
class PairWorkload(workload.Workload):
    """A mover Job as sender plus the receiver's Secret, Service and Job."""

    secret: dict[str, Any] | None = None
    receiver_secret: dict[str, Any] | None = None  # the server's keys, in another namespace
    service: dict[str, Any] | None = None
    receiver: dict[str, Any] | None = None
    # The Service existed, ours, before this build: an earlier reconcile of this
    # TransferJob got that far and may have created the Secret, which is then adopted
    # without being read (the operator never reads Secrets).
    service_was_ours: bool = False

    def objects(self) -> list[dict[str, Any]]:
        pair = [
            o
            for o in (self.service, self.secret, self.receiver_secret, self.receiver)
            if o is not None
        ]
        return [*pair, *super().objects()]


def meta(body: dict[str, Any], name: str, ns: str) -> dict[str, Any]:
    """Metadata of an object of the pair in `ns`: owned by the TransferJob in its own
    namespace; elsewhere labelled with its uid instead (no owner reference can cross)."""
    out = workload._meta(body, name)
    if ns != body["metadata"]["namespace"]:
        del out["ownerReferences"]
        out["namespace"] = ns
        out["labels"] = {**out["labels"], LABEL_OWNER_UID: body["metadata"]["uid"]}
        owner = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        out["annotations"] = {ANNOTATION_OWNER: owner}
    return out


def owns(obj: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether `obj` is the TransferJob's: by owner reference, or in another namespace by
    the uid label `meta` puts there."""
    m = obj.get("metadata") or {}
    uid = body["metadata"]["uid"]
    if any(ref.get("uid") == uid for ref in m.get("ownerReferences") or []):
        return True
    foreign = m.get("namespace") not in (None, body["metadata"]["namespace"])
    return foreign and (m.get("labels") or {}).get(LABEL_OWNER_UID) == uid


def service(body: dict[str, Any], ns: str | None = None) -> dict[str, Any]:
    tj = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(body, wire_name(tj), ns or body["metadata"]["namespace"]),
        "spec": {
            "type": "ClusterIP",
            "selector": receiver_labels(tj),
            "ports": [{"name": "ferry", "port": WIRE_PORT, "targetPort": WIRE_PORT}],
        },
    }


def receiver_labels(tj_name: str) -> dict[str, str]:
    """Not the mover's labels: status reads progress from the sender's pods only."""
    return {
        workload.LABEL_NAME: "ferry-receiver",
        workload.LABEL_MANAGED_BY: workload.MANAGED_BY,
        LABEL_RECEIVER_OF: tj_name,
    }


def server_names(body: dict[str, Any], cluster_ip: str, ns: str | None = None) -> list[str]:
    """The names the server's certificate holds: those of its Service, in `ns` (default:
    the TransferJob's)."""
    svc, ns = wire_name(body["metadata"]["name"]), ns or body["metadata"]["namespace"]
    return [cluster_ip, svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]


def secret(
    body: dict[str, Any],
    wire: certs.WireCerts,
    ns: str | None = None,
    keys: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The pair's certificates in `ns` (default: the TransferJob's), only `keys` of them
    (default: all; when the two sides are in two namespaces each gets its own)."""
    data = {
        "ca.crt": wire.ca_cert,
        "tls.crt": wire.server_cert,
        "tls.key": wire.server_key,
        "client.crt": wire.client_cert,
        "client.key": wire.client_key,
    }
    wanted = keys or tuple(data)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(
            body, wire_name(body["metadata"]["name"]), ns or body["metadata"]["namespace"]
        ),
        "type": "Opaque",
        "data": {k: base64.b64encode(data[k]).decode() for k in wanted},
    }


def receiver_root(spec: api.TransferJobSpec) -> str:
    assert spec.destination.pvc is not None
    sub = spec.destination.pvc.path.strip("/")
    return f"{moverspec.DATA_DIR}/destination" + (f"/{sub}" if sub else "")


def receiver_job(
    body: dict[str, Any],
    spec: api.TransferJobSpec,
    ctx: workload.Context,
    settings: workload.MoverSettings,
    ns: str | None = None,
) -> dict[str, Any]:
    """`ferry serve` on the destination's claim, in `ns` (default: the TransferJob's): a
    Job whose pod restarts in place."""
    assert spec.destination.pvc is not None
    tj = body["metadata"]["name"]
    mounts: list[moverspec.Mount] = [
        moverspec.ClaimMount(
            "destination-data",
            spec.destination.pvc.claim_name,
            f"{moverspec.DATA_DIR}/destination",
            False,
        ),
        moverspec.SecretMount("wire", wire_name(tj), SERVER_KEYS, WIRE_DIR),
    ]
    vols, into = workload.volumes(mounts)
    mp = workload.pod_settings(spec, settings)
    pod_security, container_security = workload._security(
        workload.needs_privilege(spec), settings.run_as_user, mp.security_context
    )
    env = [{"name": k, "value": v} for k, v in sorted(settings.env.items())]
    if ctx.traceparent:
        env.append({"name": "TRACEPARENT", "value": ctx.traceparent})
    container = {
        "name": "receiver",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "serve",
            receiver_root(spec),
            "--listen",
            f"0.0.0.0:{WIRE_PORT}",
            "--tls-cert",
            f"{WIRE_DIR}/tls.crt",
            "--tls-key",
            f"{WIRE_DIR}/tls.key",
            "--tls-ca",
            f"{WIRE_DIR}/ca.crt",
        ],
        "env": env,
        "ports": [{"name": "ferry", "containerPort": WIRE_PORT}],
        "resources": workload._resources(spec, ctx),
        "securityContext": container_security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *into],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "OnFailure",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, *vols],
        **workload._placement(spec, ctx),
    }
    if mp.service_account_name:  # the user's identity on every pod (its token stays unmounted)
        pod_spec["serviceAccountName"] = mp.service_account_name
    template_meta: dict[str, Any] = {"labels": receiver_labels(tj)}
    workload._adapt(pod_spec, template_meta, [container], mp)
    job_spec: dict[str, Any] = {
        "backoffLimit": (spec.retry or api.Retry()).limit,
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    m = meta(body, receiver_name(tj), ns or body["metadata"]["namespace"])
    m["labels"] = {**m["labels"], **receiver_labels(tj)}
    m["labels"].pop(workload.LABEL_TRANSFERJOB, None)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": m, "spec": job_spec}


def sender(
    body: dict[str, Any],
    spec: api.TransferJobSpec,
    ctx: workload.Context,
    settings: workload.MoverSettings,
    cluster_ip: str,
    receiver_ns: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap, Job) of the mover whose destination is the receiver's ferry:// endpoint."""
    tj = body["metadata"]["name"]
    specs = moverspec.mover_specs(spec, ctx.pool)
    # A file audit log is uploaded to the receiver over the wire when each run ends.
    wire = ms.FerrySpec(
        host=cluster_ip,
        port=WIRE_PORT,
        path="",
        tls_cert=f"{WIRE_DIR}/client.crt",
        tls_key=f"{WIRE_DIR}/client.key",
        tls_ca=f"{WIRE_DIR}/ca.crt",
    )
    shards = [s.model_copy(update={"destination": wire}) for s in specs.shards]
    mounts: list[moverspec.Mount] = [m for m in specs.mounts if m.volume != "destination-data"]
    mounts.append(moverspec.SecretMount("wire", wire_name(tj), CLIENT_KEYS, WIRE_DIR))
    job = workload.job(body, spec, ctx, settings, mounts)
    recv = receiver_name(tj)
    own = body["metadata"]["namespace"]
    foreign = receiver_ns is not None and receiver_ns != own
    job["metadata"]["annotations"][ANNOTATION_RECEIVER] = (
        f"{receiver_ns}/{recv}" if foreign else recv
    )
    pod = job["spec"]["template"]["spec"]
    mover = pod["containers"][0]
    pod["initContainers"] = [
        {
            "name": "wait-receiver",
            "image": settings.image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": [
                "python",
                "-c",
                WAIT_SCRIPT,
                cluster_ip,
                str(WIRE_PORT),
                str(WAIT_SECONDS),
                WIRE_DIR,
            ],
            "volumeMounts": [m for m in mover["volumeMounts"] if m["mountPath"] == WIRE_DIR],
            "resources": {
                "requests": {"cpu": "10m", "memory": "32Mi"},
                "limits": {"memory": "64Mi"},
            },
            "securityContext": mover["securityContext"],
        }
    ]
    return workload.config_map(body, shards), job


def build(
    kube: Any,
    body: dict[str, Any],
    spec: api.TransferJobSpec,
    ctx: workload.Context,
    settings: workload.MoverSettings,
    pair: Pair,
    receiver_privileged: bool | None = None,
) -> PairWorkload:
    """Create (or adopt) the receiver's Service, whose address the certificate and the
    sender's spec need; build every other object of the pair. The receiver's side goes
    to the destination claim's namespace (`receiver_privileged`: whether that namespace
    allows privileged movers, when it is another)."""
    m = body["metadata"]
    own = m["namespace"]
    recv_ns = spec.destination_namespace(own) or own
    base = workload.build(body, spec, ctx, settings)  # the same checks as a single mover
    svc = service(body, recv_ns)
    created = kube.create(svc)
    existing = kube.read("Service", recv_ns, wire_name(m["name"]))
    if existing is None or not owns(existing, body):
        raise moverspec.InvalidSpec(
            "metadata.name",
            f"Service {wire_name(m['name'])} exists and is not owned by this TransferJob",
            reason="NameConflict",
        )
    cluster_ip = str((existing.get("spec") or {}).get("clusterIP") or "")
    if not cluster_ip or cluster_ip == "None":
        raise moverspec.InvalidSpec(
            "metadata.name", f"Service {wire_name(m['name'])} has no cluster IP"
        )
    send_ctx = workload.Context(
        namespace_privileged=ctx.namespace_privileged,
        pool=ctx.pool,
        pin_node=pair.source_node,
        traceparent=ctx.traceparent,
    )
    recv_ctx = workload.Context(
        namespace_privileged=(
            ctx.namespace_privileged if recv_ns == own else bool(receiver_privileged)
        ),
        pool=ctx.pool,
        pin_node=pair.destination_node,
        traceparent=ctx.traceparent,
    )
    config_map, job = sender(body, spec, send_ctx, settings, cluster_ip, recv_ns)
    wire = certs.issue(f"{own}/{m['name']}", server_names(body, cluster_ip, recv_ns))
    secrets: tuple[dict[str, Any], dict[str, Any] | None]
    if recv_ns == own:
        secrets = (secret(body, wire), None)
    else:  # each namespace holds only its side's keys
        secrets = (secret(body, wire, own, CLIENT_KEYS), secret(body, wire, recv_ns, SERVER_KEYS))
    return PairWorkload(
        config_map=config_map,
        service_account=base.service_account,
        role=base.role,
        role_binding=base.role_binding,
        job=job,
        privileged=base.privileged,
        secret=secrets[0],
        receiver_secret=secrets[1],
        service=svc,
        receiver=receiver_job(body, spec, recv_ctx, settings, recv_ns),
        service_was_ours=not created,
    )


def adopt_secret(built: workload.Workload, obj: dict[str, Any]) -> dict[str, Any]:
    """What stands for an existing Secret when its creation conflicted, without reading it:
    ours (`obj`) if an earlier reconcile of this TransferJob created our Service, else an
    object owned by nobody (a conflict)."""
    return obj if isinstance(built, PairWorkload) and built.service_was_ours else {}


def stop_receiver(kube: Any, ns: str, job: dict[str, Any] | None) -> None:
    """Delete the receiver of a sender Job that has ended (no call for a single mover);
    in another namespace, its Service and Secret too (nothing there is garbage-collected
    with the TransferJob)."""
    annotations = ((job or {}).get("metadata") or {}).get("annotations") or {}
    name = annotations.get(ANNOTATION_RECEIVER)
    if not isinstance(name, str) or not name:
        return
    where, _, recv = name.rpartition("/")
    if not where or where == ns:
        kube.delete_job(ns, recv)
        return
    uid = next(
        (r.get("uid") for r in (job or {}).get("metadata", {}).get("ownerReferences") or []),
        None,
    )
    if isinstance(uid, str) and uid:
        remove_foreign(kube, where, uid)


def remove_foreign(kube: Any, ns: str, uid: str) -> None:
    """Delete what a TransferJob (`uid`) has in namespace `ns`: the objects carrying its
    uid label (the receiver's Job, Service and Secret), found by that label only, so
    nothing of anyone else's goes (and no Secret is read)."""
    selector = f"{LABEL_OWNER_UID}={uid}"
    for kind in ("Job", "Service", "Secret"):
        kube.delete_labelled(kind, ns, selector)
