"""Entry point: watch claims and volumes until SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from .kube import api_client
from .provisioner import Provisioner


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s"
    )
    if len(argv) != 3:
        print("usage: python -m e2e.cluster.provisioner KUBECONFIG DATA_ROOT", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Provisioner(api_client(argv[1]), Path(argv[2])).start(stop)
    logging.info("provisioning %s volumes under %s", "ferry-local", argv[2])
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
