"""Session fixtures for cluster tests.

By default they bring up the local control plane (building the pinned
binaries on first use) in its own state dir and take it down at the end.
With `FERRY_E2E_KUBECONFIG` set they start nothing and test that cluster
(e.g. kind) instead. A cluster that cannot be built or started fails the run
(skip only with `FERRY_TESTS_PARTIAL=1`, see `tests/strict.py`).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from kubernetes import client

from e2e.cluster import binaries
from e2e.cluster.layout import Layout, default_state_dir
from e2e.support import Cluster, cluster_cli
from tests.strict import unavailable


def _claim_state_dir() -> tuple[Path, IO[bytes]]:
    """A state dir no other live test session uses, locked for this session.

    `$FERRY_E2E_CLUSTER_DIR` is waited for; otherwise the first free one of
    `~/.cache/ferry/cluster-e2e`, `cluster-e2e-1`, ... is taken, so concurrent
    sessions on one machine never tear down each other's cluster.
    """
    env = os.environ.get("FERRY_E2E_CLUSTER_DIR")
    base = Path(env).resolve() if env else default_state_dir().with_name("cluster-e2e")
    candidates = (
        [base] if env else [base, *(base.with_name(f"{base.name}-{i}") for i in range(1, 16))]
    )
    for path in candidates:
        path.mkdir(parents=True, exist_ok=True)
        lock = (path / ".session.lock").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if env else fcntl.LOCK_NB))
        except BlockingIOError:
            lock.close()
            continue
        return path, lock
    raise RuntimeError(f"every e2e state dir next to {base} is in use")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The cluster under test; a local one lives for the whole session."""
    external = os.environ.get("FERRY_E2E_KUBECONFIG")
    if external:
        yield Cluster(Path(external), None, None)
        return
    try:
        bin_dir = binaries.ensure()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        unavailable(f"cannot build the local control plane here: {exc}")
    state, lock = _claim_state_dir()
    try:
        result = cluster_cli("up", state_dir=state, timeout=1800)
        if result.returncode != 0:
            pytest.fail(f"local cluster did not start:\n{result.stderr[-4000:]}")
        yield Cluster(state / "kubeconfig", Layout(state), bin_dir)
        if not os.environ.get("FERRY_E2E_KEEP"):
            cluster_cli("down", state_dir=state)
    finally:
        lock.close()


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    with cluster.api() as c:
        yield c


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    yield name
    core.delete_namespace(name)
