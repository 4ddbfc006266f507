"""Find the pinned control-plane binaries, building them once via build.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BUILD_SCRIPT = Path(__file__).with_name("build.sh")
NEEDED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "helm",
)


def ensure() -> Path:
    """The bin dir: `$FERRY_K8S_BIN` if set, else whatever build.sh prints (cached builds are instant)."""
    env = os.environ.get("FERRY_K8S_BIN")
    if env:
        bin_dir = Path(env)
    else:
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
        bin_dir = Path(out.strip().splitlines()[-1])
    missing = [b for b in NEEDED if not (bin_dir / b).is_file()]
    if missing:
        raise FileNotFoundError(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir
