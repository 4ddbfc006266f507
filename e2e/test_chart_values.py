"""The operator's timing values reach its command line and the pod spec (`helm template`,
no cluster), and the command line parses them into the settings the operator runs with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from e2e.cluster import binaries
from ferry.operator.main import parser

REPO = Path(__file__).resolve().parent.parent


def test_resync_retry_and_shutdown_values_reach_the_operator() -> None:
    helm = binaries.ensure() / "helm"
    values = ["resyncSeconds=71", "retrySeconds=13", "shutdownTimeoutSeconds=17"]
    cmd = [str(helm), "template", "ferry", str(REPO / "charts" / "ferry")]
    for v in values:
        cmd += ["--set", v]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 17 + 5  # the exit bound plus a margin
    args = pod["containers"][0]["args"]
    assert {"--resync-interval=71", "--retry-interval=13", "--shutdown-timeout=17"} <= set(args)
    parsed = parser().parse_args([a for a in args if a.startswith("--") and "$(" not in a])
    assert (parsed.resync_interval, parsed.retry_interval, parsed.shutdown_timeout) == (71, 13, 17)


def test_the_operator_runs_python_objects_in_the_heap_it_trims() -> None:
    """PYTHONMALLOC=malloc: the operator's malloc_trim can give a burst's memory back only
    if Python's objects live in glibc's heap (memreport.start_trimmer)."""
    helm = binaries.ensure() / "helm"
    cmd = [str(helm), "template", "ferry", str(REPO / "charts" / "ferry")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PYTHONMALLOC"] == "malloc"
