"""Materialise a pod's volumes as host paths the sandbox bind-mounts.

PVC -> the directory of its bound PV; Secret/ConfigMap/projected/downwardAPI ->
files written under the pod directory (projected ServiceAccount tokens come
from the TokenRequest API, bound to the pod); emptyDir -> a directory under
the pod directory; hostPath -> the host path itself.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .envvars import MissingReference, field_value, resource_value
from .kube import Obj

TokenFn = Callable[[str, int], str]  # (audience or "", expirationSeconds) -> token
Lookup = Callable[[str, str], Obj | None]  # (kind, name) -> Secret/ConfigMap/PVC/PV


# The kubelet's fsGroup masks (pkg/volume/volume_linux.go): group read for read-only volumes,
# read-write otherwise; directories also get group search and setgid.
RO_MASK, RW_MASK, EXEC_MASK = 0o440, 0o660, 0o110


def supplementary_groups(pod: Obj) -> list[int]:
    """The groups a container runtime adds to every process of the pod: fsGroup, then
    supplementalGroups."""
    sc = pod["spec"].get("securityContext") or {}
    fs = [sc["fsGroup"]] if sc.get("fsGroup") is not None else []
    return list(dict.fromkeys(int(g) for g in [*fs, *(sc.get("supplementalGroups") or [])]))


def own(root: Path, gid: int, read_only: bool) -> None:
    """What the kubelet does to a volume it manages when the pod sets fsGroup: every entry
    group-owned by `gid`, files OR'ed with the mask (a 0400 secret key becomes 0440, so a
    non-root mover in that group reads it), directories also setgid and group-searchable."""
    mask = RO_MASK if read_only else RW_MASK
    for path in [root, *root.rglob("*")]:
        os.lchown(path, -1, gid)
        if path.is_symlink():
            continue
        extra = mask | (stat.S_ISGID | EXEC_MASK if path.is_dir() else 0)
        path.chmod(stat.S_IMODE(path.stat().st_mode) | extra)


class Unsupported(RuntimeError):
    """A volume type this agent cannot provide."""


@dataclass(frozen=True)
class Volume:
    """A host path standing in for a pod volume."""

    path: Path
    read_only: bool


def _safe_join(root: Path, rel: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        raise Unsupported(f"invalid item path {rel!r}")
    return root / p


def _write(root: Path, rel: str, data: bytes, mode: int) -> None:
    path = _safe_join(root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _kv_files(
    kind: str, obj: Obj | None, src: Obj, root: Path, default_mode: int, name: str
) -> None:
    """Secret/ConfigMap keys (optionally selected by `items`) as files."""
    if obj is None:
        if src.get("optional"):
            return
        raise MissingReference(f"{kind} {name} not found")
    data: dict[str, bytes] = {}
    if kind == "secret":
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    else:
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    items = src.get("items")
    if not items:
        for key, value in data.items():
            _write(root, key, value, default_mode)
        return
    for item in items:
        if item["key"] not in data:
            if src.get("optional"):
                continue
            raise MissingReference(f"{kind} {name} has no key {item['key']}")
        _write(root, item["path"], data[item["key"]], item.get("mode", default_mode))


def _downward(pod: Obj, items: list[Obj], root: Path, mode: int, alloc: Mapping[str, str]) -> None:
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    for item in items:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            ref = item["resourceFieldRef"]
            value = resource_value(containers.get(ref.get("containerName", ""), {}), ref, alloc)
        _write(root, item["path"], value.encode(), item.get("mode", mode))


# Volumes whose files the kubelet itself writes, and so re-owns for fsGroup (volumes of
# storage, PVCs and hostPath, keep the ownership they have here).
KUBELET_MANAGED = {"emptyDir", "secret", "configMap", "downwardAPI", "projected"}


class VolumeBuilder:
    """Builds every volume of one pod below `pod_dir/volumes`."""

    def __init__(
        self, pod: Obj, pod_dir: Path, lookup: Lookup, token: TokenFn, alloc: Mapping[str, str]
    ):
        self.pod = pod
        self.root = pod_dir / "volumes"
        self.lookup = lookup
        self.token = token
        self.alloc = alloc

    def build(self) -> dict[str, Volume]:
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        out = {}
        for v in self.pod["spec"].get("volumes", []):
            out[v["name"]] = vol = self._one(v)
            if fs_group is not None and set(v) & KUBELET_MANAGED:
                own(vol.path, int(fs_group), vol.read_only)
        return out

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _one(self, vol: Obj) -> Volume:
        name = vol["name"]
        if "emptyDir" in vol:
            path = self._dir(name)
            path.chmod(0o777)  # as the kubelet creates emptyDirs
            return Volume(path, False)
        if "hostPath" in vol:
            hp = vol["hostPath"]
            path = Path(hp["path"])
            if hp.get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif hp.get("type") == "FileOrCreate" and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            return Volume(path, False)
        if "persistentVolumeClaim" in vol:
            return self._pvc(vol["persistentVolumeClaim"])
        for field, kind, name_key in (
            ("secret", "secret", "secretName"),
            ("configMap", "configmap", "name"),
        ):
            if field in vol:
                src = vol[field]
                path = self._dir(name)
                _kv_files(
                    kind,
                    self.lookup(kind, src[name_key]),
                    src,
                    path,
                    src.get("defaultMode", 0o644),
                    src[name_key],
                )
                return Volume(path, True)
        if "downwardAPI" in vol:
            src = vol["downwardAPI"]
            path = self._dir(name)
            _downward(
                self.pod, src.get("items", []), path, src.get("defaultMode", 0o644), self.alloc
            )
            return Volume(path, True)
        if "projected" in vol:
            return Volume(self._projected(name, vol["projected"]), True)
        kinds = sorted(set(vol) - {"name"})
        raise Unsupported(
            f"volume {name}: type {','.join(kinds)} is not supported by the local node agent"
        )

    def _projected(self, name: str, spec: Obj) -> Path:
        path = self._dir(name)
        mode = spec.get("defaultMode", 0o644)
        for src in spec.get("sources", []):
            if "serviceAccountToken" in src:
                sat = src["serviceAccountToken"]
                token = self.token(sat.get("audience", ""), int(sat.get("expirationSeconds", 3600)))
                _write(path, sat["path"], token.encode(), mode)
            elif "secret" in src:
                s = src["secret"]
                _kv_files("secret", self.lookup("secret", s["name"]), s, path, mode, s["name"])
            elif "configMap" in src:
                c = src["configMap"]
                _kv_files(
                    "configmap", self.lookup("configmap", c["name"]), c, path, mode, c["name"]
                )
            elif "downwardAPI" in src:
                _downward(self.pod, src["downwardAPI"].get("items", []), path, mode, self.alloc)
            else:
                raise Unsupported(f"projected source {sorted(src)} is not supported")
        return path

    def _pvc(self, src: Obj) -> Volume:
        claim = src["claimName"]
        pvc = self.lookup("pvc", claim)
        if pvc is None or pvc.get("status", {}).get("phase") != "Bound":
            raise MissingReference(f"persistentvolumeclaim {claim} is not bound")
        pv = self.lookup("pv", pvc["spec"]["volumeName"])
        if pv is None:
            raise MissingReference(f"persistentvolume {pvc['spec']['volumeName']} not found")
        spec = pv["spec"]
        raw_path = (spec.get("hostPath") or spec.get("local") or {}).get("path")
        if not raw_path:
            raise Unsupported(f"persistentvolume {pv['metadata']['name']} is not a local directory")
        path = Path(raw_path)
        if not path.is_dir():
            os.makedirs(path, exist_ok=True)
        return Volume(path, bool(src.get("readOnly")))
