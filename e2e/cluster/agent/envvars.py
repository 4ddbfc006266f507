"""A container's environment as the kubelet would build it.

Order: service variables for the apiserver (pointing at 127.0.0.1 so in-cluster
config works), envFrom, then env with `$(VAR)` expansion and valueFrom
(fieldRef, resourceFieldRef, secretKeyRef, configMapKeyRef).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .kube import Obj

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class MissingReference(RuntimeError):
    """A referenced Secret/ConfigMap/key does not exist (yet): the container cannot start."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known names replaced, `$$` escapes, unknown kept."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def service_env(port: int) -> dict[str, str]:
    """What the kubelet injects for the `kubernetes` Service, redirected to loopback."""
    host = "127.0.0.1"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": str(port),
        "KUBERNETES_PORT_443_TCP_ADDR": host,
    }


def field_value(pod: Obj, path: str) -> str:
    """Resolve a downward-API fieldRef path against the pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs", [])),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs", [])),
    }
    if path == "metadata.labels":
        return "\n".join(f'{k}="{v}"' for k, v in sorted(meta.get("labels", {}).items()))
    if path == "metadata.annotations":
        return "\n".join(f'{k}="{v}"' for k, v in sorted(meta.get("annotations", {}).items()))
    if path not in simple:
        raise MissingReference(f"unsupported fieldRef {path}")
    return str(simple[path] or "")


_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "m": 1e-3,
}


def quantity(text: str) -> float:
    """Parse a resource quantity like 500m, 2Gi, 1.5."""
    for suffix, mult in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * mult
    return float(text)


def resource_value(container: Obj, ref: Obj, node_alloc: Mapping[str, str]) -> str:
    """resourceFieldRef: the container's limit/request, node allocatable when unset."""
    kind, _, res = ref["resource"].partition(".")
    value = container.get("resources", {}).get(kind, {}).get(res) or node_alloc.get(res, "0")
    divisor = quantity(str(ref.get("divisor", "1")))
    return str(math.ceil(quantity(str(value)) / divisor))


Lookup = Callable[[str, str], Obj | None]  # (kind "secret"/"configmap", name) -> object


def _data(kind: str, obj: Obj) -> dict[str, str]:
    if kind == "secret":
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def container_env(
    pod: Obj, container: Obj, base: Mapping[str, str], lookup: Lookup, node_alloc: Mapping[str, str]
) -> dict[str, str]:
    """The full environment for one container."""
    env = dict(base)
    for src in container.get("envFrom", []):
        prefix = src.get("prefix", "")
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            if key not in src:
                continue
            ref = src[key]
            obj = lookup(kind, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise MissingReference(f"{kind} {ref['name']} not found")
            env.update({prefix + k: v for k, v in _data(kind, obj).items()})
    for var in container.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_value(container, vf["resourceFieldRef"], node_alloc)
        else:
            kind, key = (
                ("secret", "secretKeyRef")
                if "secretKeyRef" in vf
                else ("configmap", "configMapKeyRef")
            )
            ref = vf[key]
            obj = lookup(kind, ref["name"])
            data = _data(kind, obj) if obj is not None else None
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise MissingReference(f"{kind} {ref['name']} key {ref['key']} not found")
            env[name] = data[ref["key"]]
    return env
