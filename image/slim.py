"""Trim the image's root filesystem to what Ferry runs, then precompile only that.

Run by the Dockerfile as root, in the build stage, with the virtualenv's Python, after
`pip install` and `pip check`; the final stage copies the trimmed root filesystem. Each
removal is something no Ferry command loads (the measurements: e2e/test_image.py, which
also runs the image). Standard library only: pip is gone by the time this ends.
"""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

VENV = Path(sys.prefix)
SITE = Path(sysconfig.get_paths()["purelib"])
STDLIB = Path(sysconfig.get_paths()["stdlib"])

# Never imported at run time: the installers (nothing installs into the image once built),
# the Kubernetes client's asyncio copy (kopf talks to the API with aiohttp, Ferry with the
# sync client), zstandard's CFFI backend (the C backend is the one it loads), NumPy's build
# tooling (f2py, distutils, the PyInstaller hook, C and Cython headers).
SITE_REMOVE = [
    "pip",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "distutils-precedence.pth",
    "wheel",
    "kubernetes/aio",
    "zstandard/_cffi.cpython-311-x86_64-linux-gnu.so",
    "zstandard/backend_cffi.py",
    "numpy/_core/include",
    "numpy/f2py",
    "numpy/distutils",
    "numpy/_pyinstaller",
    "numpy/doc",
]
SITE_REMOVE_DIST = ["pip", "setuptools", "wheel"]

# botocore's service models: Ferry talks to S3; the credential providers call STS (assume
# role, web identity: IRSA), SSO and SSO-OIDC, and sign-in (`aws login`). The rest (~450
# services) is never loaded.
BOTOCORE_SERVICES = {"s3", "sts", "sso", "sso-oidc", "signin"}

# The Debian side: documentation (the copyright files stay), translations, the package
# indexes, the wheels `python3 -m venv` seeds pip from, and the standard library's test
# suite, IDE, Tk and 2to3; glibc's iconv modules (Python brings its own codecs; UTF-8 is
# built into glibc) and the system time zones but UTC (the `tzdata` wheel serves zoneinfo).
OS_REMOVE_TREES = [
    "/usr/share/man",
    "/usr/share/info",
    "/usr/share/locale",
    "/usr/share/lintian",
    "/usr/share/python-wheels",
    "/var/lib/apt/lists",
    "/var/cache/apt",
]
# apt recreates its indexes and cache below these (`apt-get update` in a derived image).
OS_KEEP_DIRS = ["/var/lib/apt/lists/partial", "/var/cache/apt/archives/partial"]
STDLIB_REMOVE = [
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "unittest/test",
]

# What runs: every Ferry module (the CLI, the pod, the operator, each backend), then an S3
# and an STS client built offline (botocore loads its handlers and models lazily).
IMPORT_PASS = r"""
import json, pkgutil, sys, importlib
import ferry
for mod in pkgutil.walk_packages(ferry.__path__, "ferry."):
    if mod.name.rsplit(".", 1)[-1] != "__main__":
        importlib.import_module(mod.name)
import boto3
session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x")
for service in ("s3", "sts"):
    session.client(service, region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
files = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
print(json.dumps(sorted({f for f in files if f and f.endswith(".py")})))
"""


def rm(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def remove_all(paths: Iterable[Path]) -> None:
    for path in list(paths):  # collected first: removing while a glob walks confuses it
        rm(path)


def trim_site() -> None:
    remove_all(SITE / name for name in SITE_REMOVE)
    remove_all(p for d in SITE_REMOVE_DIST for p in SITE.glob(f"{d}-*.dist-info"))
    remove_all(p for p in (VENV / "bin").glob("pip*"))
    data = SITE / "botocore/data"
    remove_all(p for p in data.iterdir() if p.is_dir() and p.name not in BOTOCORE_SERVICES)
    # Test suites and type stubs ship in wheels; nothing imports them.
    remove_all(p for p in SITE.rglob("*") if p.is_dir() and p.name == "tests")
    remove_all(p for p in SITE.rglob("*.pyi"))
    remove_all(p for p in SITE.rglob("*.pxd"))


def trim_os() -> None:
    remove_all(Path(p) for p in OS_REMOVE_TREES)
    for p in OS_KEEP_DIRS:
        Path(p).mkdir(parents=True, exist_ok=True)
    remove_all(Path("/var/cache/debconf").glob("*-old"))
    doc = Path("/usr/share/doc")
    if doc.is_dir():
        remove_all(p for p in doc.rglob("*") if p.is_file() and p.name != "copyright")
    remove_all(STDLIB / name for name in STDLIB_REMOVE)
    remove_all(Path("/usr/lib").glob("*/gconv"))
    zoneinfo = Path("/usr/share/zoneinfo")
    if zoneinfo.is_dir():
        remove_all(p for p in zoneinfo.iterdir() if p.name not in ("Etc", "UTC"))
        remove_all(p for p in (zoneinfo / "Etc").glob("*") if p.name != "UTC")
    if doc.is_dir():  # the directories left empty, deepest first
        for d in sorted((p for p in doc.rglob("*") if p.is_dir()), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()


def drop_bytecode() -> None:
    roots = [STDLIB, SITE, Path("/usr/lib/python3"), Path("/usr/share/python3")]
    for root in roots:
        if root.is_dir():
            remove_all(list(root.rglob("__pycache__")))


def compile_what_runs() -> int:
    """Precompile the modules an import pass loads; unchecked hashes (the image never changes)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run(
        [str(VENV / "bin/python"), "-P", "-c", IMPORT_PASS],
        cwd="/",
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    files = json.loads(out)
    for f in files:
        py_compile.compile(
            f,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    return len(files)


def main() -> None:
    trim_site()
    trim_os()
    drop_bytecode()
    n = compile_what_runs()
    print(f"slim.py: precompiled {n} modules")


if __name__ == "__main__":
    main()
