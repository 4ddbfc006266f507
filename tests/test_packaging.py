"""The package and the image as a product: metadata, the hashed lock, the build context,
the publishing workflow and the chart's default image agree with each other.

The image itself (size, contents, runtime contract) is built and run by e2e/test_image.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, tuple[str, list[str]]]:
    """requirements/image.lock as {name: (version, hashes)}; continuation lines joined."""
    text = (REPO / "requirements/image.lock").read_text().replace("\\\n", " ")
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, *opts = line.split()
        name, _, version = spec.partition("==")
        assert version, f"image.lock: {spec!r} is not pinned with =="
        out[_norm(name)] = (version, [o.removeprefix("--hash=") for o in opts])
    return out


def test_metadata_is_current_and_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    """PEP 639: an SPDX license expression; the setuptools of the lock emits no warnings."""
    code = (
        "import sys\n"
        "from setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", code, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    metadata = (tmp_path / done.stdout.split()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata


def test_build_backend_reads_spdx_and_dev_uses_the_locked_setuptools() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    (requires,) = project["build-system"]["requires"]
    assert requires.startswith("setuptools>="), requires
    floor = tuple(int(x) for x in requires.split(">=")[1].split("."))
    assert floor >= (77,), "setuptools reads an SPDX `license` string from 77 on"
    locked = _lock()["setuptools"][0]
    assert tuple(int(x) for x in locked.split(".")[:1]) >= floor[:1]
    assert f"setuptools=={locked}" in project["project"]["optional-dependencies"]["dev"]


def test_lock_pins_every_package_with_a_hash_and_agrees_with_pyproject() -> None:
    lock = _lock()
    for name, (_version, hashes) in lock.items():
        assert hashes, f"image.lock: {name} has no --hash (pip --require-hashes refuses it)"
        for h in hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), (name, h)
    assert "pip" not in lock and "ferry" not in lock
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", dep)
        if m:
            name, version = _norm(m[1]), m[2]
            assert name in lock, f"{name} is pinned in pyproject.toml but not in image.lock"
            assert lock[name][0] == version, (
                f"{name}: pyproject.toml pins {version}, image.lock has {lock[name][0]} "
                "(regenerate: bash e2e/node/image.sh lock)"
            )
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile


def test_dockerignore_admits_every_path_the_dockerfile_copies() -> None:
    admitted = {
        line[1:].strip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert "*" in (REPO / ".dockerignore").read_text().splitlines(), "deny by default"
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO / "Dockerfile").read_text(), re.M)
    assert copies
    for sources in copies:
        for src in sources.split():
            top = src.split("/")[0]
            assert top in admitted, f".dockerignore keeps {src} (COPY in Dockerfile) out"
            assert (REPO / src).exists(), src
    # e2e/node/image.sh stages the same files (its `sources`), .dockerignore included.
    script = (REPO / "e2e/node/image.sh").read_text()
    for name in admitted - {"ferry", "requirements", "image"}:
        assert name in script, f"e2e/node/image.sh does not stage {name}"


def test_base_is_pinned_by_digest() -> None:
    m = re.search(r"^ARG BASE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert m, "Dockerfile: no ARG BASE default"
    assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", m[1]), m[1]


def test_workflow_publishes_the_image_the_chart_defaults_to() -> None:
    flow = yaml.safe_load((REPO / ".github/workflows/image.yml").read_text())
    # PyYAML reads the key `on` as True.
    assert flow[True]["push"]["tags"] == ["v*"]
    assert flow["permissions"]["packages"] == "write"
    steps = flow["jobs"]["image"]["steps"]
    run = "\n".join(s.get("run", "") for s in steps)
    assert "charts/ferry/values.yaml" in run and "Chart.yaml" in run and "pyproject.toml" in run
    (push,) = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action")]
    assert push["with"]["push"] is True
    assert push["with"]["tags"] == "${{ steps.meta.outputs.image }}"
    values = yaml.safe_load((REPO / "charts/ferry/values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts/ferry/Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert values["image"]["repository"].startswith("ghcr.io/")
    assert values["image"]["tag"] == "", "the chart's image tag follows its appVersion"
    assert chart["appVersion"] == version, "a release tag publishes one version for both"
    # The awk in the workflow reads the same repository the chart renders.
    awk = re.search(r"repository=\$\(awk '([^']+)' charts/ferry/values.yaml\)", run)
    assert awk, run
    got = subprocess.run(
        ["awk", awk[1], str(REPO / "charts/ferry/values.yaml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert got == values["image"]["repository"]


def _first_run(cwd: Path, cache: Path, what: str) -> str:
    script = REPO / "scripts/first_run.sh"
    return subprocess.run(
        ["bash", "-c", f"source {script} && first_run_notice {what}"],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "FERRY_CACHE": str(cache)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_first_run_says_what_it_builds_and_how_long(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = _first_run(tmp_path, cache, "test")
    for piece in ("virtualenv", "versitygw", "control plane", "containerd", "Ferry image"):
        assert piece in out, out
    assert re.search(r"about \d+ min in all", out), out
    assert "versitygw" not in _first_run(tmp_path, cache, "demo")
    # Once everything is cached, nothing is said.
    for path in (
        "versitygw-v1/bin/versitygw",
        "k8s-v1/bin/kube-apiserver",
        "node-v2/bin/containerd",
        "image/ferry-0123.oci.tar",
    ):
        (cache / path).parent.mkdir(parents=True, exist_ok=True)
        (cache / path).touch()
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv/.ferry-installed").touch()
    assert _first_run(tmp_path, cache, "test") == ""
