"""Become one container process: private mount + UTS namespace, bind mounts, chroot, exec.

Run by the agent as `python -I -S sandbox.py SPEC.json` (standard library only,
so it starts fast and needs no packages). Steps:

1. unshare(CLONE_NEWNS | CLONE_NEWUTS); make every mount private, so nothing
   below ever propagates to the host; set the hostname to the pod name.
2. Mount a tmpfs on the per-pod `root` and bind every top-level entry of the
   host's / into it (the container "image" is the host: same Python venv,
   same tools), with a private /tmp.
3. Bind each volume at its mount path. A missing mount point is created
   without touching the host: if its parent is a directory backed by the host,
   that parent is first "shadowed" -- a tmpfs copy holding bind mounts of all
   of the parent's entries is mounted over it, then the mount point is made
   in the tmpfs. Top-level paths (/data) are created in the root tmpfs itself.
4. chroot into the root, chdir to workingDir, drop to runAsUser/Group, exec.

Everything lives in the namespace and disappears with its last process.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
from pathlib import PurePosixPath
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} -> {target}",
    )


def bind(source: str, target: str, read_only: bool = False) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _touch(path: str) -> None:
    with open(path, "a"):
        pass


class Root:
    """The container's root tree and which of its directories are ours to write in."""

    def __init__(self, root: str, shadow: str) -> None:
        self.root = root
        self.shadow = shadow
        self.owned = {root}

    def populate(self, tmp: str) -> None:
        """Mirror the host's top level into the root; /tmp is the container's own."""
        mount("tmpfs", self.root, "tmpfs", 0, "mode=755")
        mount("tmpfs", self.shadow, "tmpfs", 0, "mode=700")
        for entry in os.scandir("/"):
            dst = os.path.join(self.root, entry.name)
            if entry.name == "tmp":
                os.mkdir(dst)
                os.chmod(dst, 0o1777)
                bind(tmp, dst)
                self.owned.add(dst)  # the pod's own /tmp: directories may be made in it
            else:
                self._mirror(entry, dst)
            # Top-level host dirs are binds, not ours: creating inside them shadows first.

    def _mirror(self, entry: os.DirEntry[str], dst: str) -> None:
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(dst)
            bind(entry.path, dst)
        else:
            _touch(dst)
            bind(entry.path, dst)

    def _shadow(self, directory: str) -> None:
        """Replace a host-backed directory by a tmpfs copy of binds of its entries."""
        copy = tempfile.mkdtemp(dir=self.shadow)
        os.chmod(copy, os.stat(directory).st_mode & 0o7777)
        for entry in os.scandir(directory):
            self._mirror(entry, os.path.join(copy, entry.name))
        bind(copy, directory)
        self.owned.add(directory)

    def resolve(self, target: str, is_file: bool) -> str:
        """Host path of `target` inside the root, creating missing components (not on the host)."""
        parts = list(PurePosixPath(target).parts[1:])
        cur, i, hops = self.root, 0, 0
        while i < len(parts):
            comp, last = parts[i], i == len(parts) - 1
            nxt = os.path.join(cur, comp)
            if comp == "..":
                cur = os.path.dirname(cur) if cur != self.root else cur
                i += 1
                continue
            if os.path.islink(nxt):
                hops += 1
                if hops > 40:
                    raise OSError(f"too many symlinks resolving {target}")
                link = PurePosixPath(os.readlink(nxt))
                if link.is_absolute():
                    parts, cur, i = list(link.parts[1:]) + parts[i + 1 :], self.root, 0
                else:
                    parts = parts[:i] + list(link.parts) + parts[i + 1 :]
                continue
            if not os.path.lexists(nxt):
                if cur not in self.owned:
                    self._shadow(cur)
                if last and is_file:
                    _touch(nxt)
                else:
                    os.mkdir(nxt, 0o755)
                self.owned.add(nxt)
            cur = nxt
            i += 1
        return cur


def _under(path: str, top: str) -> bool:
    top = os.path.normpath(top)
    return path == top or path.startswith(top.rstrip("/") + "/")


def setup(spec: dict[str, Any]) -> None:
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    name = spec["hostname"].encode()
    _check(_libc.sethostname(name, len(name)), "sethostname")
    root = Root(spec["root"], spec["shadow"])
    root.populate(spec["tmp"])
    mounts = sorted(spec["mounts"], key=lambda m: len(PurePosixPath(m["target"]).parts))
    for m in mounts:
        bind(m["source"], root.resolve(m["target"], m["file"]), m["readOnly"])
    for path in spec.get("runtime", []):
        # The "image" (venv, checkout, base Python) must stay visible: the pod's private
        # /tmp or a volume mounted over one of its ancestors would hide it. Bind it back.
        if _under(path, "/tmp") or any(_under(path, m["target"]) for m in mounts):
            bind(path, root.resolve(path, False), read_only=True)
    workdir = root.resolve(spec.get("workingDir") or "/", False)
    os.chroot(root.root)
    rel = os.path.relpath(workdir, root.root)
    os.chdir("/" if rel == "." else "/" + rel)
    if spec.get("uid") is not None or spec.get("gid") is not None or spec.get("groups"):
        drop_to(spec.get("uid"), spec.get("gid"), spec.get("groups") or [])


PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_DAC_READ_SEARCH = 2
_CAP_V3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_to(uid: int | None, gid: int | None, groups: list[int]) -> None:
    """Become runAsUser/runAsGroup with the pod's supplementary `groups` (fsGroup first),
    keeping only CAP_DAC_READ_SEARCH (ambient).

    The container's "image" is the host, whose Python may live below a 0700
    directory such as /root; a real image would be readable by any user. The
    one capability lets the process read and traverse it, nothing more.
    """
    _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl keepcaps")
    os.setgroups([int(g) for g in groups])
    if gid is not None:
        os.setgid(int(gid))
    if uid is not None:
        os.setuid(int(uid))
    bit = 1 << CAP_DAC_READ_SEARCH
    data = (_CapData * 2)(_CapData(bit, bit, bit), _CapData(0, 0, 0))
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAP_V3, 0)), data), "capset")
    _check(
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0),
        "prctl ambient",
    )


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        setup(spec)
    except OSError as exc:
        print(f"ferry node agent: container setup failed: {exc}", file=sys.stderr)
        os._exit(128)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:
        print(f"ferry node agent: exec {argv[0]!r} failed: {exc}", file=sys.stderr)
        os._exit(127)


if __name__ == "__main__":
    main()
