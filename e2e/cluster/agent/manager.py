"""Per node: watch the pods bound to it and hand each to its PodWorker."""

from __future__ import annotations

import logging
import threading

from kubernetes import client

from .kube import Obj, informer, start_thread
from .runtime import Runtime
from .worker import PodWorker

log = logging.getLogger(__name__)


class PodManager:
    """Maps pod uid -> worker for one node; finished uids are ignored until DELETED."""

    def __init__(
        self, rt: Runtime, api: client.ApiClient, node: str, alloc: dict[str, str]
    ) -> None:
        self.rt = rt
        self.core = client.CoreV1Api(api)
        self.node = node
        self.alloc = alloc
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()

    def on_pod(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    worker.gone()
                    self.workers.pop(uid, None)
                return
            if worker is None:
                worker = PodWorker(self.rt, self.core, self.alloc, pod)
                self.workers[uid] = worker
                worker.start()
            else:
                worker.update(pod)

    def start(self, stop: threading.Event) -> None:
        start_thread(
            f"pods-{self.node}",
            lambda: informer(
                f"pods on {self.node}",
                self.core.list_pod_for_all_namespaces,
                self.on_pod,
                stop,
                field_selector=f"spec.nodeName={self.node}",
            ),
        )

    def shutdown(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.shutdown()
        for w in workers:
            w.join(timeout=10)
