"""Load benchmark of the operator on the local cluster (issue 23's targets).

    .venv/bin/python -m benchmarks.operator_load [--n 1000] [--running 300]
        [--chart DIR] [--image REPO:TAG] [--image-archive OCI.tar] [--state-dir DIR]
        [--set KEY=VALUE ...] [--rest-seconds 60] [--json OUT] [--down]

Brings up (or reuses) the local cluster the way `e2e/` does (`python -m e2e.cluster up`
in its own state dir, `cluster-bench`), installs the chart (`--chart`: another checkout's
chart measures that checkout; `--image-archive` imports its image into every node
first), and then, in one namespace:

1. **burst**: creates N TransferJobs at once (8 client threads) — `--running` of them
   copy one tiny file between two shared claims, the rest are suspended — and prints
   the time until every one has its Job;
2. **latency**: at that load, a new (suspended) TransferJob's time to its Job, 5 times;
3. waits for the running ones to succeed, then **at rest**: API requests/s from the API
   server's own `/metrics` (`apiserver_request_total` deltas over `--rest-seconds`, all
   and those on transferjobs/jobs/pods/events, i.e. the operator's), per TransferJob;
   the operator's CPU (share of one core) and RSS from `/proc` of its process;
4. **delete-all**: deletes all N at once; time until every TransferJob is gone, and the
   slowest tail (p50/p99/max per object);
5. **restart mid-burst**: a new burst of `--restart-n` suspended TransferJobs; once a
   fifth have their Job the operator is scaled to 0 (SIGTERM; no successor meanwhile,
   so any Job created after it is the old process's: none expected), then back to 1;
   then duplicate Jobs (none expected) and every TransferJob in its final phase.

Prints one line per number and, with `--json`, writes them all. The cluster is kept
for the next run unless `--down`. Needs root (the local cluster does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.cluster import binaries
from e2e.cluster.layout import Layout, default_state_dir
from e2e.cluster.realnode import Artifacts, cgroup_name, import_images, node_paths
from e2e.support import FERRY_IMAGE, Cluster, cluster_cli, local_claim

REPO = Path(__file__).resolve().parent.parent
G, V = "ferry.dev", "v1alpha1"
RELEASE, RELEASE_NS = "ferry", "ferry-system"
OPERATOR_RESOURCES = ("transferjobs", "jobs", "pods", "events")
Obj = dict[str, Any]


# ---------------------------------------------------------------- plumbing


def _raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
    data: Obj = json.loads(call(*args, _preload_content=False, **kwargs).data)
    return data


def wait(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ApiException as exc:
            if exc.status not in (404, 409, 429, 500, 503, 504):
                raise
            value = None
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Report:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, key: str, value: Any, unit: str = "") -> None:
        self.values[key] = value
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:44s} {shown} {unit}".rstrip(), flush=True)


# ---------------------------------------------------------------- cluster and chart


def bring_up(state: Path) -> Cluster:
    bin_dir = binaries.ensure()
    cluster = Cluster(state / "kubeconfig", Layout(state), bin_dir)
    # A running cluster (e.g. one an e2e session kept) is used as it is: `up` on a cluster it
    # judges unhealthy (a busy one, say) would restart it under whoever else uses it.
    if (
        cluster.kubeconfig.exists()
        and cluster.kubectl("get", "--raw=/readyz", check=False).returncode == 0
    ):
        return cluster
    done = cluster_cli("up", state_dir=state, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"the local cluster did not start:\n{done.stderr[-3000:]}")
    return cluster


def import_image(cluster: Cluster, archive: Path) -> None:
    """Another build's image into every node's containerd (the nodes pull nothing)."""
    assert cluster.layout is not None and cluster.bin_dir is not None
    os.environ["FERRY_IMAGE_ARCHIVE"] = str(archive)  # not the one this checkout would build
    art = Artifacts.ensure(cluster.bin_dir)
    for node in cluster.kubectl_json("get", "nodes")["items"]:
        import_images(art, node_paths(cluster.layout, node["metadata"]["name"]))


def install(cluster: Cluster, chart: Path, image: str, extra: list[str]) -> None:
    crds = chart / "crds"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    repo, _, tag = image.rpartition(":")
    assert cluster.bin_dir is not None
    cmd = [
        str(cluster.bin_dir / "helm"),
        "upgrade",
        "--install",
        RELEASE,
        str(chart),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
        "--skip-crds",
        "--wait",
        "--timeout",
        "180s",
        "--set",
        f"image.repository={repo}",
        "--set",
        f"image.tag={tag}",
    ]
    for kv in extra:
        cmd += ["--set-string" if kv.startswith("env.") else "--set", kv]  # env values are strings
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        raise SystemExit(f"helm install failed: {done.stderr}")


def uninstall(cluster: Cluster) -> None:
    assert cluster.bin_dir is not None
    subprocess.run(
        [
            str(cluster.bin_dir / "helm"),
            "uninstall",
            RELEASE,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--namespace",
            RELEASE_NS,
            "--wait",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )


def operator_pod(core: client.CoreV1Api, not_named: str | None = None) -> Obj:
    def probe() -> Obj | None:
        pods = _raw(
            core.list_namespaced_pod,
            RELEASE_NS,
            label_selector="app.kubernetes.io/name=ferry-operator",
        )["items"]
        for p in pods:
            if (
                p["metadata"]["name"] != not_named
                and p.get("status", {}).get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
                and all(c.get("ready") for c in p["status"].get("containerStatuses") or [])
            ):
                return p
        return None

    pod: Obj = wait("the operator pod ready", probe, timeout=180)
    return pod


def operator_pid(cluster: Cluster) -> int:
    """The operator's process on this machine (the local cluster's containers are processes
    here): the one running `ferry operator` with a `--mover-image` argument, in this
    cluster's cgroups (another local cluster may run one too)."""
    assert cluster.layout is not None
    ours = f"/{cgroup_name(cluster.layout)}/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"operator" in argv and any(a.startswith(b"--mover-image=") for a in argv):
            try:
                if ours in (entry / "cgroup").read_text():
                    found.append(int(entry.name))
            except OSError:
                continue
    if len(found) != 1:
        raise RuntimeError(f"expected one operator process, found {found}")
    return found[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_requests(cluster: Cluster) -> tuple[float, float]:
    """(all requests, requests on the operator's resources) the API server has counted."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = ours = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        total += float(value)
        if any(f'resource="{r}"' in labels for r in OPERATOR_RESOURCES):
            ours += float(value)
    return total, ours


# ---------------------------------------------------------------- the workload


class Load:
    def __init__(self, api: client.ApiClient, ns: str) -> None:
        self.ns = ns
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def create(self, name: str, running: bool) -> None:
        spec: Obj = {
            "source": {"pvc": {"claimName": "src"}},
            "destination": {"pvc": {"claimName": "dst", "path": f"out/{name}"}},
            "suspend": not running,
        }
        body = {
            "apiVersion": f"{G}/{V}",
            "kind": "TransferJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        for attempt in range(20):
            try:
                self.custom.create_namespaced_custom_object(G, V, self.ns, "transferjobs", body)
                return
            except ApiException as exc:
                if exc.status == 409:
                    return
                if exc.status not in (429, 500, 503, 504) or attempt == 19:
                    raise
                time.sleep(0.5)

    def create_all(self, names: Iterable[tuple[str, bool]]) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda nr: self.create(*nr), names))

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(G, V, self.ns, "transferjobs", name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def tjs(self) -> list[Obj]:
        items: list[Obj] = _raw(
            self.custom.list_namespaced_custom_object, G, V, self.ns, "transferjobs"
        )["items"]
        return items

    def jobs(self, prefix: str = "") -> list[Obj]:
        """Our Jobs (of TransferJobs named `prefix`...): those of deleted TransferJobs linger
        until the garbage collector gets to them."""
        items: list[Obj] = _raw(
            self.batch.list_namespaced_job,
            self.ns,
            label_selector="app.kubernetes.io/managed-by=ferry-operator",
        )["items"]
        return [
            j
            for j in items
            if j["metadata"]["labels"].get("ferry.dev/transferjob", "").startswith(prefix)
            and not j["metadata"].get("deletionTimestamp")
        ]

    def job_of(self, name: str) -> Obj | None:
        try:
            return _raw(self.batch.read_namespaced_job, f"ferry-{name}", self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def phases(self) -> dict[str, str]:
        return {
            o["metadata"]["name"]: str((o.get("status") or {}).get("phase")) for o in self.tjs()
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    report = Report()
    report("n", args.n)
    report("running", args.running)
    cluster = bring_up(Path(args.state_dir))
    if args.image_archive:
        import_image(cluster, Path(args.image_archive))
    install(cluster, Path(args.chart), args.image, args.set)
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    op = operator_pod(core)
    report("operator image", op["spec"]["containers"][0]["image"])

    def earlier_runs_gone() -> bool:
        spaces = _raw(core.list_namespace)["items"]
        return not [n for n in spaces if n["metadata"]["name"].startswith("bench-")]

    wait("an earlier run's namespace gone", earlier_runs_gone, 900, every=1)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})  # type: ignore[arg-type]
    load = Load(api, ns)
    try:
        src = local_claim(core, ns, "src", ("ReadWriteMany",))
        local_claim(core, ns, "dst", ("ReadWriteMany",))
        (src / "tiny").write_bytes(b"x" * 1000)
        os.chmod(src / "tiny", 0o644)

        # 1. burst
        names = [(f"tj-{i:04d}", i < args.running) for i in range(args.n)]
        # What the operator spends on it, less sensitive than the time to whatever else the
        # machine is doing: its CPU seconds, and the API requests on its resources.
        pid = operator_pid(cluster)
        cpu0, (_, ours0) = cpu_seconds(pid), api_requests(cluster)
        start = time.monotonic()
        load.create_all(names)
        created = time.monotonic() - start
        report("burst: all created (client side)", created, "s")
        # Listing every Job is itself load on the API server: not too often.
        wait("every TransferJob's Job", lambda: len(load.jobs("tj-")) >= args.n, 1200, every=3)
        report("burst: every one has its Job", time.monotonic() - start, "s")
        report("burst: operator CPU per TransferJob", (cpu_seconds(pid) - cpu0) / args.n, "s")
        requests = api_requests(cluster)[1] - ours0 - args.n  # less the benchmark's creates
        report(
            "burst: API requests per TransferJob (transferjobs/jobs/pods/events)", requests / args.n
        )

        # 2. latency at load
        lat = []
        for i in range(5):
            name = f"probe-{i}"
            t0 = time.monotonic()
            load.create(name, running=False)
            wait("the probe's Job", lambda: load.job_of(name), 120, every=0.05)  # noqa: B023
            lat.append(time.monotonic() - t0)
        report("new TransferJob -> Job at load (median)", statistics.median(lat), "s")
        report("new TransferJob -> Job at load (max)", max(lat), "s")

        # 3. at rest
        running = {n for n, r in names if r}

        def settled() -> dict[str, str] | None:
            ph = load.phases()
            done = all(ph.get(n) in ("Succeeded", "Failed") for n in running) and all(
                p == "Suspended" for n, p in ph.items() if n not in running
            )
            return ph if done else None

        final = wait("the running ones finished, the rest Suspended", settled, 1800, every=2)
        report("burst: all final (Succeeded/Suspended)", time.monotonic() - start, "s")
        report("burst: running ones Succeeded", sum(final[n] == "Succeeded" for n in running))
        time.sleep(args.settle)  # let the last events drain before measuring rest
        total0, ours0 = api_requests(cluster)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.rest_seconds)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        total1, ours1 = api_requests(cluster)
        n_all = args.n + len(lat)
        span = t1 - t0
        report("rest: API requests/s (all clients)", (total1 - total0) / span, "/s")
        report("rest: API requests/s on operator resources", (ours1 - ours0) / span, "/s")
        report("rest: per TransferJob", (ours1 - ours0) / span / n_all, "/s")
        report("rest: operator CPU (share of one core)", (cpu1 - cpu0) / span)
        report("rest: operator RSS", rss_mib(pid), "MiB")

        # 4. delete all
        everything = [o["metadata"]["name"] for o in load.tjs()]
        gone_at: dict[str, float] = {}
        start = time.monotonic()
        deleter = threading.Thread(
            target=lambda: list(ThreadPoolExecutor(8).map(load.delete, everything))
        )
        deleter.start()

        def all_gone() -> bool:
            left = {o["metadata"]["name"] for o in load.tjs()}
            now = time.monotonic() - start
            for n in everything:
                if n not in left and n not in gone_at:
                    gone_at[n] = now
            return not left

        wait("every TransferJob gone", all_gone, 600, every=0.2)
        deleter.join()
        took = list(gone_at.values())
        report("delete-all: every TransferJob gone", max(took), "s")
        report("delete-all: per object p50", pct(took, 0.5), "s")
        report("delete-all: per object p99", pct(took, 0.99), "s")
        report("delete-all: slower than 10 s", sum(1 for t in took if t > 10))

        # 5. restart mid-burst
        burst = [(f"rs-{i:04d}", False) for i in range(args.restart_n)]
        creator = threading.Thread(target=load.create_all, args=(burst,))
        creator.start()
        wait(
            "a fifth of the restart burst's Jobs",
            lambda: len(load.jobs("rs-")) >= args.restart_n // 5,
            300,
            every=0.05,
        )
        # Scaled to 0 rather than the pod deleted: no successor runs meanwhile, so every Job
        # created in that window is the old process's.
        apps = client.AppsV1Api(api)
        old = operator_pod(core)["metadata"]["name"]
        killed_at = datetime.now(UTC)
        apps.patch_namespaced_deployment_scale(
            f"{RELEASE}-operator", RELEASE_NS, {"spec": {"replicas": 0}}
        )

        def old_gone() -> bool:
            pods = _raw(core.list_namespaced_pod, RELEASE_NS)["items"]
            return all(p["metadata"]["name"] != old for p in pods)

        wait("the old operator pod gone", old_gone, 300, every=0.1)
        exited = (datetime.now(UTC) - killed_at).total_seconds()
        creator.join()
        made = load.jobs("rs-")
        # SIGTERM follows the scale-down within a moment; creationTimestamp has 1 s resolution.
        after = killed_at.replace(microsecond=0) + timedelta(seconds=2)
        by_old = [j for j in made if _ts(j["metadata"]["creationTimestamp"]) > after]
        report("restart: Jobs before the stop", len(made) - len(by_old))
        report("restart: Jobs by the old process after SIGTERM", len(by_old))
        report("restart: old operator gone after SIGTERM", exited, "s")
        apps.patch_namespaced_deployment_scale(
            f"{RELEASE}-operator", RELEASE_NS, {"spec": {"replicas": 1}}
        )
        operator_pod(core, not_named=old)

        def finished() -> bool:
            ph = load.phases()
            return len(ph) == len(burst) and all(p == "Suspended" for p in ph.values())

        wait("every restart-burst TransferJob Suspended", finished, 900, every=1)
        per: dict[str, int] = {}
        for j in load.jobs("rs-"):
            tj = j["metadata"]["labels"]["ferry.dev/transferjob"]
            per[tj] = per.get(tj, 0) + 1
        report("restart: TransferJobs with a Job", len(per))
        report("restart: duplicate Jobs", sum(c - 1 for c in per.values()))
        report("restart: all final", finished())
    finally:
        core.delete_namespace(ns)
        if args.down:
            uninstall(cluster)
            cluster_cli("down", state_dir=Path(args.state_dir))
    return report.values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.operator_load", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="TransferJobs in the burst")
    p.add_argument("--running", type=int, default=None, help="of them running (default 30%%)")
    p.add_argument("--restart-n", type=int, default=200, help="TransferJobs in the restart burst")
    p.add_argument("--chart", default=str(REPO / "charts" / "ferry"))
    p.add_argument("--image", default=FERRY_IMAGE, help="the operator's image, REPO:TAG")
    p.add_argument("--image-archive", default=None, help="import this OCI archive first")
    p.add_argument("--set", action="append", default=[], help="extra chart value KEY=VALUE")
    p.add_argument("--state-dir", default=str(default_state_dir().with_name("cluster-bench")))
    p.add_argument("--rest-seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=10.0, help="seconds before measuring rest")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--down", action="store_true", help="stop the cluster afterwards")
    args = p.parse_args(argv)
    if args.n < 1 or args.restart_n < 5:
        p.error("--n must be >= 1 and --restart-n >= 5")
    args.running = int(args.n * 0.3) if args.running is None else args.running
    if not 0 <= args.running <= args.n:
        p.error("--running must be between 0 and --n")
    values = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(values, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
