"""The mover's status sink: what it patches, where, how often, and that failures never raise."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ferry.mover.progress import Snapshot
from ferry.mover.result import Summary
from ferry.pod.status_sink import TransferJobStatusSink


class _Recorder(BaseHTTPRequestHandler):
    def do_PATCH(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append(
            (
                self.path,
                self.headers.get("Content-Type"),
                self.headers.get("Authorization"),
                json.loads(body),
            )
        )
        self.send_response(self.server.code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def api_server():
    srv = HTTPServer(("127.0.0.1", 0), _Recorder)
    srv.seen = []
    srv.code = 200
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def snap(done: int) -> Snapshot:
    return Snapshot(
        elapsed=1.0,
        bytes_done=done,
        bytes_total=1000,
        files_done=1,
        files_total=4,
        bytes_skipped=0,
        files_skipped=0,
        bytes_per_second=100.0,
        eta_seconds=9.0,
        scan_complete=True,
        phase="transfer",
        current=["a/b"],
    )


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def make(srv, tmp_path, clock, shard=2):
    token = tmp_path / "token"
    token.write_text("tok\n")
    return TransferJobStatusSink(
        "team",
        "copy-a",
        shard,
        f"http://127.0.0.1:{srv.server_port}",
        str(token),
        None,
        interval=2.0,
        pod="copy-a-2-x",
        clock=clock,
    )


def test_patches_only_its_own_shard_entry_rate_bounded(api_server, tmp_path):
    clock = Clock()
    sink = make(api_server, tmp_path, clock)
    sink.update(snap(100))
    clock.t = 1.0
    sink.update(snap(200))  # within the interval: dropped
    clock.t = 2.5
    sink.update(snap(300))
    assert len(api_server.seen) == 2
    path, ctype, auth, body = api_server.seen[0]
    assert path == "/apis/ferry.dev/v1alpha1/namespaces/team/transferjobs/copy-a/status"
    assert ctype == "application/merge-patch+json" and auth == "Bearer tok"
    assert list(body) == ["status"] and list(body["status"]) == ["progress"]
    entry = body["status"]["progress"]["shards"]["2"]
    assert entry["bytesDone"] == 100 and entry["pod"] == "copy-a-2-x" and entry["finished"] is False
    assert "current" not in entry  # file names never go into the resource
    assert api_server.seen[1][3]["status"]["progress"]["shards"]["2"]["bytesDone"] == 300


def test_finish_sends_final_entry_even_inside_interval(api_server, tmp_path):
    clock = Clock()
    sink = make(api_server, tmp_path, clock, shard=0)
    sink.update(snap(100))
    sink.finish(Summary(files_copied=4, bytes_transferred=1000))
    entry = api_server.seen[-1][3]["status"]["progress"]["shards"]["0"]
    assert entry["finished"] is True and entry["bytesDone"] == 1000 and entry["bytesTotal"] == 1000


def test_api_errors_are_swallowed_and_counted(api_server, tmp_path):
    api_server.code = 403
    clock = Clock()
    sink = make(api_server, tmp_path, clock)
    for i in range(8):
        clock.t = i * 3.0
        sink.update(snap(i))
    assert sink.patches_sent == 0
    assert len(api_server.seen) == 5  # gives up after five failures until the final patch


def test_from_env(monkeypatch, tmp_path):
    (tmp_path / "token").write_text("t")
    monkeypatch.setenv("FERRY_TRANSFERJOB", "ns1/job1")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv("FERRY_SA_DIR", str(tmp_path))
    sink = TransferJobStatusSink.from_env()
    assert sink.shard == 3
    assert (
        sink.url
        == "https://127.0.0.1:6443/apis/ferry.dev/v1alpha1/namespaces/ns1/transferjobs/job1/status"
    )
