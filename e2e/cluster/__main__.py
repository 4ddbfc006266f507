"""`python -m e2e.cluster up|down|status` — drive the local cluster from a shell."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from . import controlplane, fsutil, nodes
from .health import NotReady
from .layout import Layout, default_state_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="default: $FERRY_CLUSTER_DIR or ~/.cache/ferry/cluster",
    )
    parser.add_argument(
        "--nodes",
        type=Path,
        default=None,
        help="JSON list of nodes (name, labels, taints); "
        "default: $FERRY_CLUSTER_NODES or two nodes, pools general and bulk",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    layout = Layout((args.state_dir or default_state_dir()).resolve())

    if args.command == "up":
        try:
            facts = controlplane.up(layout, nodes.load(args.nodes), timeout=args.timeout)
        except (NotReady, OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            # Whatever failed, nothing half-started may stay behind: processes, network, cgroups.
            print(f"cluster did not come up: {exc}; logs in {layout.logs}", file=sys.stderr)
            controlplane.down(layout)
            return 1
        print(json.dumps(facts, indent=2))
        print(f"export KUBECONFIG={facts['kubeconfig']}", file=sys.stderr)
        return 0
    if args.command == "down":
        stopped = controlplane.down(layout)
        left = fsutil.mounts_below(layout.root)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        if left or any(s.startswith("left behind") for s in stopped):
            print(f"mounts left behind: {left}", file=sys.stderr)
            return 1
        return 0
    live = controlplane.running(layout)
    for rec in live:
        print(f"{rec.name:26} pid {rec.pid:<8} log {rec.log}")
    if not live:
        print(f"not running (state dir {layout.root})")
        return 3
    print(f"healthy: {controlplane.healthy(layout)}  kubeconfig: {layout.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
