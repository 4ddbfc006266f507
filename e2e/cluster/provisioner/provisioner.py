"""A minimal dynamic provisioner for the `ferry-local` StorageClass.

Each pending claim of the class gets a PV backed by a fresh directory under the
data root, pre-bound to the claim so the PV controller binds them at once.
Released PVs with reclaim policy Delete lose their directory and object.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..fsutil import safe_rmtree
from . import PROVISIONER, STORAGE_CLASS
from .kube import Obj, informer, raw, start_thread

log = logging.getLogger(__name__)


class Provisioner:
    """Watches claims and volumes with the admin identity (provisioners are cluster-scoped)."""

    def __init__(self, api: client.ApiClient, data_root: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.root = data_root
        self.lock = threading.Lock()

    def _mine(self, pvc: Obj) -> bool:
        ann = pvc["metadata"].get("annotations") or {}
        provisioner = ann.get("volume.kubernetes.io/storage-provisioner") or ann.get(
            "volume.beta.kubernetes.io/storage-provisioner"
        )
        return provisioner == PROVISIONER or pvc["spec"].get("storageClassName") == STORAGE_CLASS

    def on_claim(self, kind: str, pvc: Obj) -> None:
        if kind == "DELETED" or not self._mine(pvc):
            return
        if pvc["spec"].get("volumeName") or pvc.get("status", {}).get("phase") != "Pending":
            return
        meta = pvc["metadata"]
        name = f"pvc-{meta['uid']}"
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                "labels": {"ferry.dev/local-volume": "true"},
            },
            "spec": {
                "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": pvc["spec"].get("storageClassName") or STORAGE_CLASS,
                "volumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        try:
            raw(self.core.create_persistent_volume, pv)
            log.info("provisioned %s for %s/%s", name, meta["namespace"], meta["name"])
        except ApiException as exc:
            if exc.status != 409:
                log.warning("provisioning %s failed: %s", name, exc.body)

    def on_volume(self, kind: str, pv: Obj) -> None:
        ann = pv["metadata"].get("annotations") or {}
        if kind == "DELETED" or ann.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            return
        if pv.get("status", {}).get("phase") != "Released":
            return
        if pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
            return
        name = pv["metadata"]["name"]
        path = Path(pv["spec"]["hostPath"]["path"])
        if path.parent == self.root:
            safe_rmtree(path)
        try:
            self.core.delete_persistent_volume(name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("deleting %s failed: %s", name, exc.body)

    def start(self, stop: threading.Event) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        start_thread(
            "pvc-watch",
            lambda: informer(
                "pvcs",
                self.core.list_persistent_volume_claim_for_all_namespaces,
                self.on_claim,
                stop,
            ),
        )
        start_thread(
            "pv-watch",
            lambda: informer("pvs", self.core.list_persistent_volume, self.on_volume, stop),
        )
