"""The mover's progress sink that merge-patches its own TransferJob's status.

Plugged in by `ferry run` when `FERRY_TRANSFERJOB=namespace/name` is set.
Each shard writes only `status.progress.shards["<index>"]` — a map keyed by
shard index, so merge patches from parallel pods never overwrite each other —
and the operator sums the entries into the totals and printer columns.

It talks to the API server with the standard library (in-cluster token and
CA), which keeps the mover's start-up free of the Kubernetes client. The per-
job Role lets it `get` and `patch` `transferjobs/status` for its one object,
nothing else. Patches are rate-bounded (FERRY_STATUS_INTERVAL seconds) and
failures never fail the transfer: the termination message carries the result.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ferry.mover.progress import SHARD_PROGRESS_FIELDS, Sink, Snapshot

if TYPE_CHECKING:
    from ferry.mover.result import Summary

log = logging.getLogger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_INTERVAL = 2.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TransferJobStatusSink(Sink):
    def __init__(
        self,
        namespace: str,
        name: str,
        shard: int,
        server: str,
        token_file: str | None,
        ca_file: str | None,
        interval: float = DEFAULT_INTERVAL,
        pod: str | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.namespace, self.name, self.shard = namespace, name, shard
        self.url = (
            f"{server.rstrip('/')}/apis/ferry.dev/v1alpha1/namespaces/{namespace}"
            f"/transferjobs/{name}/status"
        )
        self.token_file = token_file
        self.ctx = (
            ssl.create_default_context(cafile=ca_file) if server.startswith("https") else None
        )
        # The API server is reached directly, never through the HTTP(S)_PROXY a user gives the
        # mover for its storage (a corporate proxy cannot reach, or should not see, it).
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.ctx is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ctx))
        self._opener = urllib.request.build_opener(*handlers)
        self.interval = interval
        self.pod = pod
        self._clock = clock
        self._last_sent = float("-inf")
        self._last_bytes = -1
        self._last_progress_time: str | None = None
        self._failures = 0
        self.patches_sent = 0

    @classmethod
    def from_env(cls) -> TransferJobStatusSink:
        """Configure from FERRY_TRANSFERJOB, JOB_COMPLETION_INDEX and the in-cluster service account."""
        ns, _, name = os.environ["FERRY_TRANSFERJOB"].partition("/")
        if not ns or not name:
            raise ValueError("FERRY_TRANSFERJOB must be namespace/name")
        shard = int(
            os.environ.get("JOB_COMPLETION_INDEX") or os.environ.get("FERRY_SHARD_INDEX") or 0
        )
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        sa_dir = os.environ.get("FERRY_SA_DIR", SA_DIR)
        ca = f"{sa_dir}/ca.crt"
        return cls(
            ns,
            name,
            shard,
            server=f"https://{host}:{port}",
            token_file=f"{sa_dir}/token",
            ca_file=ca if os.path.exists(ca) else None,
            interval=float(os.environ.get("FERRY_STATUS_INTERVAL") or DEFAULT_INTERVAL),
            pod=os.environ.get("FERRY_POD_NAME") or os.environ.get("HOSTNAME"),
        )

    # ------------------------------------------------------------ Sink

    def update(self, snap: Snapshot) -> None:
        now = self._clock()
        if now - self._last_sent < self.interval:
            return
        self._send(self._entry(snap.to_json()))

    def finish(self, summary: Summary) -> None:
        s = summary.to_json()
        entry = {
            "bytesDone": s["bytesTransferred"] + s.get("bytesSkipped", 0),
            "filesDone": s["filesCopied"] + s["filesUpdated"] + s["filesSkipped"],
            "bytesPerSecond": 0,
            "etaSeconds": None,
            "phase": "done" if s["exitCode"] == 0 else "failed",
            "finished": True,
            "updateTime": _now(),
        }
        if s["exitCode"] == 0:
            entry["bytesTotal"] = entry["bytesDone"]
            entry["filesTotal"] = entry["filesDone"]
            entry["scanComplete"] = True
        self._send(entry, force=True)

    # ------------------------------------------------------------ internals

    def _entry(self, snap: dict[str, Any]) -> dict[str, Any]:
        entry = {k: snap.get(k) for k in SHARD_PROGRESS_FIELDS}
        done = int(snap.get("bytesDone") or 0) + int(snap.get("filesDone") or 0)
        stamp = _now()
        if done != self._last_bytes:
            self._last_bytes = done
            self._last_progress_time = stamp
        entry["updateTime"] = stamp
        entry["lastProgressTime"] = self._last_progress_time
        entry["finished"] = False
        if self.pod:
            entry["pod"] = self.pod
        return entry

    def body(self, entry: dict[str, Any]) -> bytes:
        return json.dumps({"status": {"progress": {"shards": {str(self.shard): entry}}}}).encode()

    def _send(self, entry: dict[str, Any], force: bool = False) -> None:
        self._last_sent = self._clock()
        if self._failures >= 5 and not force:
            return  # the API is unreachable or we lack rights: stop trying until the final patch
        req = urllib.request.Request(
            self.url,
            data=self.body(entry),
            method="PATCH",
            headers={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
        )
        if self.token_file and os.path.exists(self.token_file):
            with open(self.token_file) as fh:
                req.add_header("Authorization", f"Bearer {fh.read().strip()}")
        try:
            with self._opener.open(req, timeout=5) as resp:
                resp.read()
            self.patches_sent += 1
            self._failures = 0
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._failures += 1
            log.warning("status patch of %s/%s failed: %s", self.namespace, self.name, exc)
