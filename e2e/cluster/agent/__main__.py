"""Agent entry point: register nodes, start provisioner and pod managers, run until SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from .config import AgentConfig
from .kube import api_client, start_thread
from .manager import PodManager
from .node import NodeHeartbeat
from .provisioner import Provisioner
from .runtime import Runtime


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s"
    )
    cfg = AgentConfig.load(Path(argv[1]))
    rt = Runtime(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    Provisioner(api_client(cfg.admin_kubeconfig), rt.layout.volumes).start(stop)
    managers = []
    for node in cfg.nodes:
        api = api_client(node.kubeconfig)
        hb = NodeHeartbeat(node.spec, api, cfg.kubelet_version)
        hb.register()
        start_thread(f"heartbeat-{node.spec.name}", lambda hb=hb: hb.run(stop))  # type: ignore[misc]
        mgr = PodManager(rt, api, node.spec.name, node.spec.allocatable)
        mgr.start(stop)
        managers.append(mgr)
    logging.info("node agent serving %s", ", ".join(n.spec.name for n in cfg.nodes))
    stop.wait()
    logging.info("stopping: terminating containers")
    for mgr in managers:
        mgr.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
