"""Calls whose answer the operator does not use still give their connection back to the pool.

Measured at 1,000 TransferJobs: with each create/patch/delete response left unread, urllib3
dropped the connection and the next call opened another (a TLS handshake each side), most of
the burst's time. A real HTTP/1.1 keep-alive server here counts the connections it accepts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes
import pytest

from ferry.operator import workload
from ferry.operator.kube import Kube
from ferry.operator.transferjob import parse_spec
from tests.operator.fixtures import PVC_TO_PVC, transferjob


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"kind": "Status", "metadata": {"name": "x"}, "items": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    accepted = 0

    def get_request(self):  # type: ignore[no-untyped-def]
        conn = super().get_request()
        self.accepted += 1
        return conn


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_unread_answers_keep_the_connection(server: _Server) -> None:
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{server.server_address[1]}"
    kube = Kube(kubernetes.client.ApiClient(config))
    tj = transferjob(PVC_TO_PVC)
    built = workload.build(tj, parse_spec(tj), workload.Context(), workload.MoverSettings())
    for obj in built.objects():  # ConfigMap, ServiceAccount, Role, RoleBinding, Job
        assert kube.create(obj)
    assert kube.create(tj)
    kube.patch_status("team", "x", {"phase": "Running"})
    kube.patch_job("team", "x", {"spec": {"suspend": True}})
    kube.delete_job("team", "x")
    kube.delete_transferjob("team", "x")
    assert kube.get_job("team", "x") is not None
    assert kube.list_pods("team", "a=b") == []
    assert server.accepted == 1  # one connection, kept for all twelve calls
