"""Objects a fresh cluster needs, and the wait until it can actually run pods."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .health import NotReady
from .provisioner import PROVISIONER, STORAGE_CLASS
from .provisioner.kube import Obj, raw


def api(kubeconfig: Path) -> client.ApiClient:
    """An ApiClient for `kubeconfig` that does not touch the global default config."""
    return config.new_client_from_config(config_file=str(kubeconfig))


def storage_class(kubeconfig: Path) -> None:
    """The default StorageClass `ferry-local`, served by `provisioner`."""
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }
    with api(kubeconfig) as c:
        try:
            raw(client.StorageV1Api(c).create_storage_class, body)
        except ApiException as exc:
            if exc.status != 409:
                raise


def node_ready(node: Obj) -> bool:
    """Ready=True and the not-ready taint removed by the node lifecycle controller."""
    conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
    taints = {t["key"] for t in node.get("spec", {}).get("taints", [])}
    return conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints


def _names(listing: Obj) -> set[str]:
    return {i["metadata"]["name"] for i in listing.get("items", [])}


def wait_ready(
    kubeconfig: Path, nodes: list[str], timeout: float, alive: Callable[[], bool]
) -> None:
    """Until every node is Ready and untainted and `default` has its ServiceAccount and CA."""
    deadline = time.monotonic() + timeout
    missing: list[str] = ["everything"]
    with api(kubeconfig) as c:
        core = client.CoreV1Api(c)
        while time.monotonic() < deadline:
            if not alive():
                raise NotReady("a node component or the provisioner exited (see logs/)")
            found = {n["metadata"]["name"]: n for n in raw(core.list_node)["items"]}
            missing = [n for n in nodes if n not in found or not node_ready(found[n])]
            if "default" not in _names(raw(core.list_namespaced_service_account, "default")):
                missing.append("serviceaccount default/default")
            if "kube-root-ca.crt" not in _names(raw(core.list_namespaced_config_map, "default")):
                missing.append("configmap default/kube-root-ca.crt")
            if not missing:
                return
            time.sleep(0.25)
    raise NotReady(f"cluster not ready after {timeout:.0f}s: waiting for {', '.join(missing)}")
