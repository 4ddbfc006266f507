"""The end of `make demo`: install the operator with its chart and watch a TransferJob finish.

    python -m e2e.demo_cluster [--kubeconfig PATH] [--keep]

Expects the local control plane to be up (`python -m e2e.cluster up`; its
kubeconfig is the default). It applies the CRDs, installs charts/ferry (the
operator runs under the chart's own ServiceAccount and RBAC), creates two
PVCs, seeds the source with a few MiB, applies a throttled TransferJob and
streams `kubectl get transferjobs --watch` until the job is Succeeded.
Exit status 0 only if it succeeded and the copy matches byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NS = "ferry-demo"
IMAGE = os.environ.get("FERRY_IMAGE", "ghcr.io/ferry-dev/ferry:dev")


def sh(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    if not quiet:
        print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check, text=True, capture_output=quiet)


def main(argv: list[str] | None = None) -> int:
    from e2e.cluster import binaries
    from e2e.cluster.layout import default_state_dir

    p = argparse.ArgumentParser(prog="python -m e2e.demo_cluster", description=__doc__)
    p.add_argument("--kubeconfig", default=str(default_state_dir() / "kubeconfig"))
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--keep", action="store_true", help="leave the demo namespace behind")
    p.add_argument(
        "--root-pods",
        action="store_true",
        default=os.environ.get("FERRY_E2E_ROOT_PODS") == "1",
        help="run operator and movers as uid 0 (for nodes that cannot run the image non-root)",
    )
    args = p.parse_args(argv)
    bins = binaries.ensure()
    kubectl = [str(bins / "kubectl"), f"--kubeconfig={args.kubeconfig}"]
    helm = [str(bins / "helm"), f"--kubeconfig={args.kubeconfig}"]

    sh(*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    sh(*kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    repo, _, tag = IMAGE.rpartition(":")
    values = [
        f"image.repository={repo}",
        f"image.tag={tag}",
        "pollInterval=1",
        "progressInterval=1",
    ]
    if args.root_pods:
        values += [
            "moverRunAsUser=0",
            "podSecurityContext.runAsUser=0",
            "podSecurityContext.runAsNonRoot=false",
        ]
    sets = [x for v in values for x in ("--set", v)]
    sh(
        *helm,
        "upgrade",
        "--install",
        "ferry",
        str(REPO / "charts/ferry"),
        "--namespace",
        "ferry-system",
        "--create-namespace",
        "--skip-crds",
        "--wait",
        "--timeout",
        "120s",
        *sets,
    )

    sh(*kubectl, "delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=120s")
    sh(*kubectl, "create", "namespace", NS)
    claims = "".join(
        f"""---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: {NS}}}
spec: {{storageClassName: ferry-local, accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
"""
        for name in ("photos", "photos-backup")
    )
    subprocess.run([*kubectl, "apply", "-f", "-"], input=claims, text=True, check=True)
    sh(
        *kubectl,
        "-n",
        NS,
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/photos",
        "pvc/photos-backup",
        "--timeout=60s",
    )
    src = _volume_dir(kubectl, "photos")
    dst = _volume_dir(kubectl, "photos-backup")
    want = {}
    for i in range(24):
        data = os.urandom(256 * 1024 + i * 1000)
        path = src / f"2026/{i % 4:02d}/img{i:03d}.raw"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        want[str(path.relative_to(src))] = hashlib.sha256(data).hexdigest()
    os.system(f"chmod -R a+rX {src}")
    print(
        f"seeded {len(want)} files ({sum(f.stat().st_size for f in src.rglob('*') if f.is_file()) // 1024} KiB)"
    )

    tj = f"""apiVersion: ferry.dev/v1alpha1
kind: TransferJob
metadata: {{name: photos-backup, namespace: {NS}}}
spec:
  source: {{pvc: {{claimName: photos}}}}
  destination: {{pvc: {{claimName: photos-backup, path: nightly}}}}
  bandwidth: 512K
  parallelism: {{shards: 2}}
"""
    subprocess.run([*kubectl, "apply", "-f", "-"], input=tj, text=True, check=True)
    watch = subprocess.Popen([*kubectl, "-n", NS, "get", "transferjobs", "--watch"])
    try:
        phase, status = _wait(kubectl, args.timeout)
    finally:
        watch.terminate()
        watch.wait()
    print(
        json.dumps(
            {"phase": phase, "result": status.get("result"), "traceID": status.get("traceID")},
            indent=2,
        )
    )
    got = {
        str(f.relative_to(dst / "nightly")): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in (dst / "nightly").rglob("*")
        if f.is_file() and not f.name.startswith(".ferry")
    }
    ok = phase == "Succeeded" and got == want
    print(
        "destination matches the source" if got == want else "destination DIFFERS from the source"
    )
    if not args.keep and ok:
        sh(*kubectl, "delete", "namespace", NS, "--wait=false")
    return 0 if ok else 1


def _volume_dir(kubectl: list[str], claim: str) -> Path:
    pv = sh(
        *kubectl, "-n", NS, "get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}", quiet=True
    ).stdout
    spec = json.loads(sh(*kubectl, "get", "pv", pv, "-o", "json", quiet=True).stdout)["spec"]
    path = Path((spec.get("hostPath") or spec.get("local") or {})["path"])
    if not path.is_dir():
        raise SystemExit(
            f"volume {pv} is not a local directory; the demo needs the local control plane"
        )
    return path


def _wait(kubectl: list[str], timeout: float) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh(
            *kubectl,
            "-n",
            NS,
            "get",
            "transferjob",
            "photos-backup",
            "-o",
            "json",
            check=False,
            quiet=True,
        )
        if out.returncode == 0:
            status = json.loads(out.stdout).get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                return str(status["phase"]), status
        time.sleep(0.5)  # polling interval of a deadline-bounded wait, not synchronisation
    return "Timeout", {}


if __name__ == "__main__":
    sys.exit(main())
