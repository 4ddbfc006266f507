"""One thread per pod: prepare volumes, run containers, report status, honour deletion."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..fsutil import safe_rmtree
from . import envvars
from .kube import MERGE, Obj, get_or_none, now, raw
from .podstatus import HOST_IP, ContainerState, image_repository, render
from .runtime import Launch, Mount, Runtime, checkout, signal_group
from .volumes import Unsupported, Volume, VolumeBuilder

log = logging.getLogger(__name__)

TICK = 0.1
#: Annotation on a PVC naming the node whose pod last mounted it.
ATTACHED_NODE = "ferry.dev/attached-node"
MAX_MESSAGE = 4096
BACKOFF_CAP = 10.0


class Deleted(Exception):
    """The pod went away or is being deleted: stop what we are doing."""


class Run:
    """A container's live process plus its reported state."""

    def __init__(self, spec: Obj) -> None:
        self.spec = spec
        self.state = ContainerState(spec["name"], spec.get("image", ""))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = ""
        self.not_before = 0.0
        self.done = False


class PodWorker(threading.Thread):
    """Owns one pod bound to one of the agent's nodes, from scheduling to deletion."""

    def __init__(self, rt: Runtime, core: client.CoreV1Api, node_alloc: dict[str, str], pod: Obj):
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.rt = rt
        self.core = core
        self.alloc = node_alloc
        self.pod = pod
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.dir = rt.layout.pods / self.uid
        self.changed = threading.Event()
        self.removed = False
        self.stopping = False
        self.ip: str | None = pod.get("status", {}).get("podIP")
        self.start_time: str | None = pod.get("status", {}).get("startTime")
        self.init = [Run(c) for c in pod["spec"].get("initContainers", [])]
        self.main = [Run(c) for c in pod["spec"]["containers"]]
        self.initialized = not self.init
        self.phase = "Pending"
        self.message = ""
        self.reason = ""
        self.last_report: Obj | None = None

    # -- events from the watch -------------------------------------------------------------
    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.changed.set()

    def gone(self) -> None:
        self.removed = True
        self.changed.set()

    def shutdown(self) -> None:
        """Agent is exiting: kill containers now."""
        self.stopping = True
        self.changed.set()

    @property
    def deleting(self) -> bool:
        return self.removed or self.stopping or bool(self.pod["metadata"].get("deletionTimestamp"))

    # -- main ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._lifecycle()
        except Deleted:
            pass
        except Exception:
            log.exception("pod %s/%s: agent error", self.ns, self.pod_name)
        finally:
            self._kill_all(signal.SIGKILL)
            self._wait_all(5.0)
            if self.deleting and not (self.removed or self.stopping):
                self._delete_now()  # deleted before anything ran: nothing to wait for
            try:
                safe_rmtree(self.dir)
            except Exception as exc:
                log.warning("pod %s: keeping %s: %s", self.uid, self.dir, exc)

    def _lifecycle(self) -> None:
        if self.deleting:
            raise Deleted  # e.g. seen terminating after an agent restart
        if self.pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            self._await_deletion()  # finished before an agent restart
            return
        foreign = [
            r.spec["image"]
            for r in self.init + self.main
            if image_repository(r.spec.get("image", "")) != self.rt.cfg.image_repository
        ]
        if foreign:
            for r in self.init + self.main:
                if r.spec["image"] in foreign:
                    r.state.state = {
                        "waiting": {
                            "reason": "ErrImageNeverPull",
                            "message": f"image {r.spec['image']} is not runnable by the local node agent "
                            f"(only {self.rt.cfg.image_repository}:<tag> is)",
                        }
                    }
            self._report()
            self._await_deletion()
            return
        if self.pod["spec"].get("hostNetwork"):
            self.ip = HOST_IP  # shares the node's (loopback) network, as on a real node
        elif self.ip is None:
            self.ip = self.rt.ipam.allocate()
        else:
            self.rt.ipam.reserve(self.ip)
        self.start_time = self.start_time or now()
        self._report()
        volumes = self._volumes()
        for run in self.init:
            self._run_init(run, volumes)
        self.initialized = True
        self._run_main(volumes)
        self._await_deletion()

    # -- preparation -----------------------------------------------------------------------
    def _lookup(self, kind: str, name: str) -> Obj | None:
        calls: dict[str, Any] = {
            "secret": (self.core.read_namespaced_secret, (name, self.ns)),
            "configmap": (self.core.read_namespaced_config_map, (name, self.ns)),
            "pvc": (self.core.read_namespaced_persistent_volume_claim, (name, self.ns)),
            "pv": (self.core.read_persistent_volume, (name,)),
        }
        call, args = calls[kind]
        return get_or_none(call, *args)

    def _token(self, audience: str, seconds: int) -> str:
        spec: Obj = {
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod_name,
                "uid": self.uid,
            },
        }
        if audience:
            spec["audiences"] = [audience]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        resp = raw(self.core.create_namespaced_service_account_token, sa, self.ns, body)
        token: str = resp["status"]["token"]
        return token

    def _retrying(self, what: str, fn: Any) -> Any:
        """Run `fn` until it stops failing on not-yet-there references (kubelet FailedMount)."""
        while True:
            if self.deleting:
                raise Deleted
            try:
                return fn()
            except (envvars.MissingReference, ApiException) as exc:
                if isinstance(exc, ApiException) and exc.status not in (
                    403,
                    404,
                    409,
                    429,
                    500,
                    503,
                ):
                    raise
                msg = (
                    str(exc) if not isinstance(exc, ApiException) else f"{exc.status} {exc.reason}"
                )
                self._set_waiting("ContainerCreating", f"{what}: {msg}")
                self.changed.wait(1.0)
                self.changed.clear()

    def _volumes(self) -> dict[str, Volume]:
        builder = VolumeBuilder(self.pod, self.dir, self._lookup, self._token, self.alloc)
        try:
            vols: dict[str, Volume] = self._retrying("volumes", builder.build)
        except Unsupported as exc:
            self._fail_config(str(exc))
            raise AssertionError("unreachable") from None
        self._note_attachments()
        return vols

    def _note_attachments(self) -> None:
        """Record on each claim which node mounts it (annotation ATTACHED_NODE), best effort."""
        node = self.pod["spec"].get("nodeName", "")
        for vol in self.pod["spec"].get("volumes", []):
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            patch = {"metadata": {"annotations": {ATTACHED_NODE: node}}}
            try:
                self.rt.admin.patch_namespaced_persistent_volume_claim(
                    claim, self.ns, patch, _content_type=MERGE
                )
            except ApiException as exc:
                log.warning("annotating claim %s/%s failed: %s", self.ns, claim, exc.status)

    def _fail_config(self, message: str) -> None:
        self._set_waiting("CreateContainerConfigError", message)
        self._await_deletion()
        raise Deleted

    def _set_waiting(self, reason: str, message: str) -> None:
        for r in self.init + self.main:
            if "waiting" in r.state.state:
                r.state.state = {"waiting": {"reason": reason, "message": message}}
        self._report()

    def _launch(self, run: Run, volumes: dict[str, Volume]) -> Launch:
        spec = run.spec
        base = {
            "PATH": f"{self.rt.venv_bin}:{envvars.BASE_PATH}",
            "PYTHONPATH": checkout(),
            "HOSTNAME": self.pod_name,
            "HOME": "/root",
            **envvars.service_env(self.rt.cfg.apiserver_port),
        }
        env = envvars.container_env(self.pod, spec, base, self._env_lookup, self.alloc)
        command = spec.get("command") or self.rt.cfg.entrypoint
        argv = [envvars.expand(a, env) for a in command + (spec.get("args") or [])]
        mounts = []
        for vm in spec.get("volumeMounts", []):
            vol = volumes.get(vm["name"])
            if vol is None:
                raise Unsupported(f"volumeMount {vm['name']} has no volume")
            source = vol.path
            sub = vm.get("subPath") or envvars.expand(vm.get("subPathExpr", ""), env)
            if sub:
                rel = PurePosixPath(sub)
                if rel.is_absolute() or ".." in rel.parts:
                    raise Unsupported(f"invalid subPath {sub!r}")
                source = vol.path / rel
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append(
                Mount(
                    str(source),
                    vm["mountPath"],
                    vol.read_only or bool(vm.get("readOnly")),
                    not source.is_dir(),
                )
            )
        term = self._termination_file(run)
        term.write_bytes(b"")
        term.chmod(0o666)  # writable whatever runAsUser is, as the kubelet makes it
        mounts.append(
            Mount(
                str(term), spec.get("terminationMessagePath") or "/dev/termination-log", False, True
            )
        )
        hosts = self.dir / "etc-hosts"
        hosts.write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{self.ip}\t{self.pod_name}\n"
        )
        mounts.append(Mount(str(hosts), "/etc/hosts", False, True))
        sc = {
            **(self.pod["spec"].get("securityContext") or {}),
            **(spec.get("securityContext") or {}),
        }
        return Launch(
            hostname=self.pod["spec"].get("hostname") or self.pod_name,
            argv=argv,
            env=env | {"FERRY_LOCAL_CLUSTER": self.rt.cfg.marker},
            mounts=mounts,
            working_dir=spec.get("workingDir"),
            uid=sc.get("runAsUser"),
            gid=sc.get("runAsGroup"),
        )

    def _env_lookup(self, kind: str, name: str) -> Obj | None:
        return self._lookup(kind, name)

    def _termination_file(self, run: Run) -> Path:
        path = self.dir / "containers" / run.spec["name"] / "termination-log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- running ---------------------------------------------------------------------------
    def _start(self, run: Run, volumes: dict[str, Volume]) -> None:
        try:
            launch = self._retrying("environment", lambda: self._launch(run, volumes))
        except Unsupported as exc:
            self._fail_config(str(exc))
        if not launch.argv:
            self._fail_config("no command: set command or args")
        logf = self.rt.layout.container_log(self.ns, self.pod_name, run.spec["name"])
        run.proc = self.rt.start(self.dir, run.spec["name"], launch, logf)
        run.started = now()
        run.state.pid = run.proc.pid
        run.state.state = {"running": {"startedAt": run.started}}
        log.info(
            "pod %s/%s: started %s pid %d: %s",
            self.ns,
            self.pod_name,
            run.spec["name"],
            run.proc.pid,
            launch.argv,
        )

    def _message(self, run: Run, code: int) -> str:
        text = ""
        with contextlib.suppress(OSError):
            text = self._termination_file(run).read_bytes()[:MAX_MESSAGE].decode(errors="replace")
        if (
            not text
            and code != 0
            and run.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            logf = self.rt.layout.container_log(self.ns, self.pod_name, run.spec["name"])
            try:
                lines = logf.read_bytes()[-2048:].decode(errors="replace").splitlines()[-80:]
                text = "\n".join(lines)
            except OSError:
                pass
        return text

    def _reap(self, run: Run) -> bool:
        """If the process exited, record it as terminated; True when it did."""
        if run.proc is None:
            return False
        code = run.proc.poll()
        if code is None:
            return False
        exit_code = 128 - code if code < 0 else code  # killed by signal n -> 128+n
        term: Obj = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": run.started,
            "finishedAt": now(),
            "containerID": f"ferry-local://{run.proc.pid}",
        }
        if code < 0:
            term["signal"] = -code
        msg = self._message(run, exit_code)
        if msg:
            term["message"] = msg
        run.state.state = {"terminated": term}
        run.proc = None
        log.info("pod %s/%s: %s exited %d", self.ns, self.pod_name, run.spec["name"], exit_code)
        return True

    def _should_restart(self, exit_code: int) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    def _schedule_restart(self, run: Run) -> None:
        """Move terminated -> lastState and wait out a short crash-loop backoff."""
        run.state.last_state = run.state.state
        run.state.restarts += 1
        delay = min(BACKOFF_CAP, 0.5 * 2 ** (run.state.restarts - 1))
        run.not_before = time.monotonic() + delay
        run.state.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:.1f}s restarting failed container",
            }
        }

    def _run_init(self, run: Run, volumes: dict[str, Volume]) -> None:
        while True:
            self._start(run, volumes)
            self._report()
            while not self._reap(run):
                self._tick()
            code = (run.state.terminated or {}).get("exitCode", 1)
            if code == 0:
                self._report()
                return
            if self.pod["spec"].get("restartPolicy", "Always") == "Never":
                self._finish("Failed")
                self._await_deletion()
                raise Deleted
            self._schedule_restart(run)
            self._report()
            while time.monotonic() < run.not_before:
                self._tick()

    def _run_main(self, volumes: dict[str, Volume]) -> None:
        for run in self.main:
            self._start(run, volumes)
        self.phase = "Running"
        self._report()
        while True:
            self._tick()
            for run in self.main:
                if run.done:
                    continue
                if run.proc is not None and self._reap(run):
                    code = (run.state.terminated or {}).get("exitCode", 1)
                    if self._should_restart(code):
                        self._schedule_restart(run)
                    else:
                        run.done = True
                elif run.proc is None and time.monotonic() >= run.not_before:
                    self._start(run, volumes)
            if all(r.done for r in self.main):
                failed = any((r.state.terminated or {}).get("exitCode", 1) != 0 for r in self.main)
                self._finish("Failed" if failed else "Succeeded")
                return
            self._report()

    def _tick(self) -> None:
        """Wait a moment; on deletion terminate everything and leave via Deleted."""
        self.changed.wait(TICK)
        self.changed.clear()
        if self.deleting:
            self._terminate()
            raise Deleted

    def _finish(self, phase: str) -> None:
        self.phase = phase
        self._report()

    # -- deletion --------------------------------------------------------------------------
    def _all_runs(self) -> list[Run]:
        return self.init + self.main

    def _kill_all(self, sig: signal.Signals) -> None:
        for run in self._all_runs():
            if run.proc is not None:
                signal_group(run.proc, sig)

    def _wait_all(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(r.proc is None or r.proc.poll() is not None for r in self._all_runs()):
                return
            time.sleep(0.05)

    def _terminate(self) -> None:
        """SIGTERM, grace period, SIGKILL; final status; then remove the pod (grace 0)."""
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        if self.removed or self.stopping:
            grace = min(grace, 2)
        self._kill_all(signal.SIGTERM)
        self._wait_all(float(grace))
        self._kill_all(signal.SIGKILL)
        self._wait_all(5.0)
        for run in self._all_runs():
            self._reap(run)
        if self.removed or self.stopping:
            return
        started = [r for r in self.main if r.state.terminated is not None]
        failed = any((r.state.terminated or {}).get("exitCode", 0) != 0 for r in started)
        if self.phase not in ("Succeeded", "Failed"):
            self.phase = "Failed" if failed or not started else "Succeeded"
        self._report()
        self._delete_now()

    def _await_deletion(self) -> None:
        while not self.deleting:
            self.changed.wait(5.0)
            self.changed.clear()
        if not (self.removed or self.stopping):
            self._delete_now()

    def _delete_now(self) -> None:
        """Remove the pod object (grace 0, this uid only), as the kubelet does at the end."""
        try:
            raw(
                self.core.delete_namespaced_pod,
                self.pod_name,
                self.ns,
                grace_period_seconds=0,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # -- reporting -------------------------------------------------------------------------
    def _report(self) -> None:
        status = render(
            self.pod,
            self.phase,
            self.ip,
            self.start_time,
            [r.state for r in self.init],
            [r.state for r in self.main],
            self.initialized,
            now(),
            self.message,
            self.reason,
        )
        if status == self.last_report or self.removed:
            return
        try:
            resp = raw(
                self.core.patch_namespaced_pod_status,
                self.pod_name,
                self.ns,
                {"status": status},
                _content_type=MERGE,
            )
            self.pod = resp
            self.last_report = status
        except ApiException as exc:
            if exc.status == 404:
                self.removed = True
                return
            log.warning(
                "pod %s/%s: status patch failed: %s %s",
                self.ns,
                self.pod_name,
                exc.status,
                exc.body,
            )
