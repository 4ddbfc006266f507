"""The image built from the Dockerfile (`e2e/node/image.sh`) honours its runtime contract.

The OCI archive the script prints (what containerd will import), imported by buildah, is run
by runc the way the operator's pod specs run it: uid 65532,
read-only root filesystem, /tmp a tmpfs, no network. Needs root (apt, mmdebstrap, runc);
the first build takes ~4 min, later runs reuse the cached archive.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.strict import unavailable

pytestmark = [pytest.mark.image, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
UID = 65532


# The image as containerd unpacks it (the layers' uncompressed sizes): the issue measured
# 517 MB before image/slim.py; the budget holds it under 300 MB.
SIZE_BUDGET = 300_000_000


@dataclass
class Image:
    archive: Path
    rootfs: Path
    config: dict[str, Any]  # the OCI image config's "config" (Env, Entrypoint, User, ...)


def _blob(tar: tarfile.TarFile, digest: str) -> Any:
    f = tar.extractfile("blobs/" + digest.replace(":", "/"))
    assert f is not None, digest
    return json.load(f)


def _manifest(tar: tarfile.TarFile) -> Any:
    index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    return _blob(tar, index["manifests"][0]["digest"])


def _image_config(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        return dict(_blob(tar, _manifest(tar)["config"]["digest"])["config"])


def _unpacked_size(archive: Path) -> int:
    """Bytes of the image's layers uncompressed (what a node stores), summed."""
    total = 0
    with tarfile.open(archive) as tar:
        for layer in _manifest(tar)["layers"]:
            blob = tar.extractfile("blobs/" + layer["digest"].replace(":", "/"))
            assert blob is not None, layer
            stream = gzip.GzipFile(fileobj=blob) if layer["mediaType"].endswith("gzip") else blob
            while chunk := stream.read(1 << 20):
                total += len(chunk)
    return total


def _largest(root: Path, depth: int = 4, top: int = 25) -> str:
    """The biggest directories down to `depth`, for a failure message that says what grew."""
    out = subprocess.run(
        ["du", "-x", "-k", f"--max-depth={depth}", str(root)], capture_output=True, text=True
    ).stdout
    rows = sorted((line.split("\t") for line in out.splitlines()), key=lambda r: -int(r[0]))
    return "\n".join(f"{int(k) // 1024:>6} MiB  {p}" for k, p in rows[:top])


def _script(*args: str) -> str:
    """Last stdout line of e2e/node/image.sh; its log tail on failure."""
    done = subprocess.run(
        ["bash", str(REPO / "e2e/node/image.sh"), *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        pytest.fail(
            f"e2e/node/image.sh {' '.join(args)} failed:\n{done.stderr[-4000:]}", pytrace=False
        )
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def image() -> Image:
    if os.geteuid() != 0:
        unavailable("building and running the image needs root (mmdebstrap, runc)")
    archive = Path(_script("build"))
    # The archive imported by buildah (cached per archive); runc mounts it read-only and
    # creates no mount point in it (the tests bind to /srv and /mnt, which Debian ships).
    rootfs = Path(_script("rootfs"))
    assert (rootfs / "opt/ferry/bin/ferry").is_file(), rootfs
    return Image(archive, rootfs, _image_config(archive))


def runc(image: Image, tmp: Path, args: list[str], mounts: list[dict[str, Any]]) -> str:
    """Run `args` in the image as the pods do; returns stdout, fails on a non-zero exit."""
    bundle = tmp / f"bundle-{uuid.uuid4().hex[:8]}"
    bundle.mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": str(image.rootfs), "readonly": True}
    spec["process"].update(
        terminal=False,
        args=args,
        env=[*image.config["Env"], "HOME=/tmp"],
        cwd="/tmp",
        user={"uid": UID, "gid": UID},
    )
    spec["mounts"].append(
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
    )
    spec["mounts"] += mounts
    (bundle / "config.json").write_text(json.dumps(spec))
    state = tmp / "runc-state"
    result = subprocess.run(
        ["runc", "--root", str(state), "run", "--bundle", str(bundle), bundle.name],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout


def test_config_is_the_runtime_contract(image: Image) -> None:
    assert image.config.get("Entrypoint") == ["ferry"]
    assert image.config.get("User") == f"{UID}:{UID}"


def test_version_as_non_root_on_a_read_only_root(image: Image, tmp_path: Path) -> None:
    out = runc(image, tmp_path, [*image.config["Entrypoint"], "--version"], [])
    assert "0.1.0" in out
    # Not root; the root filesystem refuses writes (EROFS), /tmp takes them; tzdata zones load.
    code = (
        "import os, zoneinfo\n"
        "print(os.getuid())\n"
        "try:\n    open('/opt/ferry/x', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
        "open('/tmp/x', 'w').write('ok')\n"
        "print(zoneinfo.ZoneInfo('Europe/Berlin').key)\n"
    )
    out = runc(image, tmp_path, ["/opt/ferry/bin/python", "-c", code], [])
    assert out.split() == [str(UID), "30", "Europe/Berlin"]


def test_copy_between_bind_mounted_dirs(image: Image, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_bytes(b"hello from the image\n")
    (src / "b.bin").write_bytes(os.urandom(300_000))
    dst.mkdir()
    os.chown(dst, UID, UID)  # a fresh volume the mover may write (the chart sets fsGroup)

    def bind(host: Path, path: str, *opts: str) -> dict[str, Any]:
        return {
            "destination": path,
            "type": "bind",
            "source": str(host),
            "options": ["rbind", *opts],
        }

    runc(
        image,
        tmp_path,
        [*image.config["Entrypoint"], "copy", "/srv", "/mnt"],
        [bind(src, "/srv", "ro"), bind(dst, "/mnt", "rw")],
    )
    assert (dst / "sub" / "a.txt").read_bytes() == b"hello from the image\n"
    assert (dst / "b.bin").read_bytes() == (src / "b.bin").read_bytes()
    assert (dst / "b.bin").stat().st_uid == UID


def test_size_is_within_budget(image: Image) -> None:
    size = _unpacked_size(image.archive)
    print(
        f"image: {size / 1e6:.1f} MB unpacked, {image.archive.stat().st_size / 1e6:.1f} MB archive"
    )
    assert size <= SIZE_BUDGET, (
        f"the image unpacks to {size / 1e6:.1f} MB, over the {SIZE_BUDGET / 1e6:.0f} MB budget; "
        f"largest directories:\n{_largest(image.rootfs)}"
    )


def test_only_what_runs_is_installed(image: Image, tmp_path: Path) -> None:
    """No installer at run time; what never loads is gone; what loads is precompiled."""
    code = (
        "import importlib.util as u\n"
        "gone = ('pip', 'setuptools', 'kubernetes.aio', 'ensurepip', 'test', 'lib2to3')\n"
        "print([m for m in gone if u.find_spec(m) is not None])\n"
    )
    out = runc(image, tmp_path, ["/opt/ferry/bin/python", "-c", code], [])
    assert out.strip() == "[]", out
    site = next((image.rootfs / "opt/ferry/lib").glob("python3*/site-packages"))
    assert not list((image.rootfs / "opt/ferry/bin").glob("pip*"))
    # Precompiled: the CLI, the operator's client; not precompiled: what nothing imports.
    assert list((site / "ferry/__pycache__").glob("cli.*.pyc"))
    assert list((site / "kubernetes/client/__pycache__").glob("__init__.*.pyc"))
    stdlib = next(
        p
        for p in (image.rootfs / "usr/local/lib/python3.11", image.rootfs / "usr/lib/python3.11")
        if (p / "os.py").is_file()
    )
    assert (stdlib / "imaplib.py").is_file()  # kept, but nothing Ferry runs imports it
    assert not list((stdlib / "__pycache__").glob("imaplib.*.pyc"))
    assert list((stdlib / "__pycache__").glob("os.*.pyc"))
    assert not list(site.rglob("*.pyi"))
    assert not [p for p in site.rglob("tests") if p.is_dir()]
    assert not list((image.rootfs / "usr/share/locale").glob("*"))
    assert not list((image.rootfs / "usr/share/man").glob("*"))
    assert not list((image.rootfs / "usr/lib").glob("*/gconv"))
    assert sorted(p.name for p in (image.rootfs / "usr/share/zoneinfo").iterdir()) == ["Etc", "UTC"]
