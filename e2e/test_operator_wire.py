# ruff: noqa: F811  (fixtures imported from test_operator are parameters here)
"""Two ReadWriteOnce claims held on the two nodes of the cluster: the operator runs a
sender/receiver pair over the wire (`ferry serve` + a `ferry://` destination) with
per-job certificates, and garbage-collects them with the TransferJob."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from e2e.support import FERRY_IMAGE, Cluster, local_claim, wait_for
from e2e.test_operator import (  # noqa: F401  (fixtures are used by name)
    ROOT_PODS,
    Env,
    _raw,
    digests,
    env,
    operator,
    otlp,
    pvc_spec,
    seed,
)
from ferry.operator import wirepair, workload

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# The local cluster's second node is tainted (pool `bulk`): whatever is pinned there tolerates it.
TOLERATE_ALL = {"operator": "Exists", "effect": "NoSchedule"}


def _holder(env: Env, claim: str, node: str) -> str:
    """A running pod on `node` that mounts `claim`: what pins an RWO claim to a node."""
    uid = 0 if ROOT_PODS else workload.MOVER_UID
    name = f"hold-{claim}"
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "securityContext": {
                "runAsUser": uid,
                "runAsGroup": uid,
                "runAsNonRoot": uid != 0,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "hold",
                    "image": FERRY_IMAGE,
                    "command": ["python", "-c", "import signal; signal.pause()"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "v", "mountPath": "/v"}],
                }
            ],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}],
            "terminationGracePeriodSeconds": 1,
            "tolerations": [TOLERATE_ALL],
        },
    }
    env.core.create_namespaced_pod(env.ns, body)  # type: ignore[arg-type]

    def running() -> bool:
        pod = _raw(env.core.read_namespaced_pod, name, env.ns)
        return (pod.get("status") or {}).get("phase") == "Running"

    wait_for(f"pod {name} running on {node}", running, timeout=90)
    return name


def _gone(read: Any, *args: Any) -> bool:
    try:
        read(*args, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_rwo_claims_on_two_nodes_sync_through_a_wire_pair(env: Env, cluster: Cluster) -> None:
    nodes = sorted(n["metadata"]["name"] for n in _raw(env.core.list_node)["items"])
    if len(nodes) < 2:
        pytest.skip("needs a cluster of two nodes")
    src, dst = env.pvc("src"), env.pvc("dst")
    files = {f"d{i % 2}/f{i}.bin": 3000 * (i + 1) for i in range(8)} | {"big.bin": 4 << 20}
    want = seed(src, files)
    _holder(env, "src", nodes[0])
    _holder(env, "dst", nodes[1])

    placement = {"tolerations": [TOLERATE_ALL]}
    env.create("transferjobs", "wire", pvc_spec("src", "dst", "out", placement=placement))
    obj = env.wait_phase("wire", "Succeeded", timeout=240)
    assert digests(dst / "out") == want
    st = obj["status"]
    assert st["result"]["filesCopied"] == len(files)
    assert st["result"]["bytesTransferred"] >= sum(files.values()) // 2  # zstd may shrink some
    assert st["progress"]["percent"] == "100%"
    assert len(st["traceID"]) == 32

    # The sender ran on the source's node and sent to the receiver's ferry:// endpoint.
    child = workload.child_name("wire")
    spec = json.loads(
        _raw(env.core.read_namespaced_config_map, child, env.ns)["data"]["spec-0.json"]
    )
    assert spec["destination"]["kind"] == "ferry"
    assert {p["spec"]["nodeName"] for p in env.pods("wire")} == {nodes[0]}
    # The receiver is stopped once the sender's Job has ended.
    recv, wire = wirepair.receiver_name("wire"), wirepair.wire_name("wire")
    wait_for(
        "the receiver's Job deleted",
        lambda: _gone(env.batch.read_namespaced_job, recv, env.ns),
        timeout=60,
    )
    secret = _raw(env.core.read_namespaced_secret, wire, env.ns)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"}

    # A 64 KiB change in the middle of the large file: delta (Auto) sends about that much.
    with open(src / "big.bin", "r+b") as f:
        f.seek(2 << 20)
        f.write(os.urandom(64 << 10))
    want = digests(src)
    env.create("transferjobs", "wire-delta", pvc_spec("src", "dst", "out", placement=placement))
    again = env.wait_phase("wire-delta", "Succeeded", timeout=240)["status"]["result"]
    assert digests(dst / "out") == want
    assert again["filesUpdated"] == 1
    assert again["bytesMatched"] >= (4 << 20) - (256 << 10)
    assert again["bytesTransferred"] < 1 << 20

    # Deleting the TransferJob garbage-collects the certificates' Secret and the Service.
    for name in ("wire", "wire-delta"):
        env.custom.delete_namespaced_custom_object(
            "ferry.dev", "v1alpha1", env.ns, "transferjobs", name, propagation_policy="Background"
        )
    wait_for(
        "the wire Secret garbage-collected",
        lambda: _gone(env.core.read_namespaced_secret, wire, env.ns),
        timeout=90,
    )
    wait_for(
        "the wire Service garbage-collected",
        lambda: _gone(env.core.read_namespaced_service, wire, env.ns),
        timeout=90,
    )


def test_a_destination_claim_in_another_namespace_syncs_through_a_pair(env: Env) -> None:
    """The receiver runs in the destination's namespace, the sender in the TransferJob's;
    refused until the source's namespace opts in; what it put in the other namespace goes
    when the sender ends, and when a TransferJob is deleted before that."""
    other = f"{env.ns}-dst"
    env.core.create_namespace(
        {"metadata": {"name": other, "annotations": {wirepair.ALLOW_FROM: env.ns}}}  # type: ignore[arg-type]
    )
    try:
        src = env.pvc("src")
        dst = local_claim(env.core, other, "dst")
        want = seed(src, {"a.bin": 300_000, "d/b.bin": 2 << 20})
        spec = {
            "source": {"pvc": {"claimName": "src"}},
            "destination": {"pvc": {"claimName": "dst", "path": "out", "namespace": other}},
        }
        env.create("transferjobs", "xns", spec)

        def refused() -> dict[str, Any] | None:
            st = env.tj("xns").get("status") or {}
            return st if st.get("reason") == wirepair.CROSS_NAMESPACE_REFUSED else None

        st = wait_for("the cross-namespace TransferJob refused", refused, timeout=60)
        assert wirepair.ALLOW_TO in st["message"] and other in st["message"], st
        assert not _raw(env.batch.list_namespaced_job, other)["items"]

        # The source's namespace opts in: the retry builds the pair and it succeeds.
        env.core.patch_namespace(env.ns, {"metadata": {"annotations": {wirepair.ALLOW_TO: other}}})
        env.wait_phase("xns", "Succeeded", timeout=240)
        assert digests(dst / "out") == want
        wire, recv = wirepair.wire_name("xns"), wirepair.receiver_name("xns")
        for what, read, name in [
            ("Job", env.batch.read_namespaced_job, recv),
            ("Service", env.core.read_namespaced_service, wire),
            ("Secret", env.core.read_namespaced_secret, wire),
        ]:
            wait_for(
                f"the receiver's {what} in {other} deleted",
                functools.partial(_gone, read, name, other),
                timeout=90,
            )

        # Deleted while its pair stands (suspended: the receiver serves, the sender waits).
        env.create("transferjobs", "xns-held", {**spec, "suspend": True})
        recv = wirepair.receiver_name("xns-held")
        wait_for(
            "the held receiver's Job",
            lambda: not _gone(env.batch.read_namespaced_job, recv, other),
            timeout=90,
        )
        env.custom.delete_namespaced_custom_object(
            "ferry.dev", "v1alpha1", env.ns, "transferjobs", "xns-held"
        )
        wire = wirepair.wire_name("xns-held")
        for what, read, name in [
            ("Job", env.batch.read_namespaced_job, recv),
            ("Service", env.core.read_namespaced_service, wire),
            ("Secret", env.core.read_namespaced_secret, wire),
        ]:
            wait_for(
                f"the deleted TransferJob's {what} in {other} gone",
                functools.partial(_gone, read, name, other),
                timeout=90,
            )
        wait_for(
            "the TransferJob's finalizer released",
            lambda: _gone(
                env.custom.get_namespaced_custom_object,
                "ferry.dev",
                "v1alpha1",
                env.ns,
                "transferjobs",
                "xns-held",
            ),
            timeout=60,
        )
    finally:
        env.core.delete_namespace(other)


def test_api_server_takes_a_ferry_endpoint_and_compression_on_only_with_it(env: Env) -> None:
    """The CRD's schema and CEL rules on the real API server (dry run: nothing is stored)."""
    ferry = {"host": "ferry.dr.example", "port": 7443, "tlsSecretRef": {"name": "dr-wire"}}

    def create(spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "TransferJob",
            "metadata": {"name": "dry"},
            "spec": spec,
        }
        env.custom.create_namespaced_custom_object(
            "ferry.dev", "v1alpha1", env.ns, "transferjobs", body, dry_run="All"
        )

    create(
        {
            "source": {"pvc": {"claimName": "a"}},
            "destination": {"ferry": ferry},
            "compression": "On",
        }
    )
    create({"source": {"ferry": ferry}, "destination": {"pvc": {"claimName": "a"}}})
    for spec, says in [
        (pvc_spec("a", "b", compression="On"), "compression On needs a ferry endpoint"),
        (
            {"source": {"pvc": {"claimName": "a"}}, "destination": {"ferry": {**ferry, "port": 0}}},
            "spec.destination.ferry.port",
        ),
        (
            {
                "source": {"pvc": {"claimName": "a"}},
                "destination": {"ferry": {k: v for k, v in ferry.items() if k != "tlsSecretRef"}},
            },
            "tlsSecretRef",
        ),
    ]:
        with pytest.raises(ApiException) as exc:
            create(spec)
        assert exc.value.status == 422 and says in str(exc.value.body), exc.value.body
