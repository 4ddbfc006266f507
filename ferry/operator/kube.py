"""The few Kubernetes API calls the operator makes, returning plain camelCase dicts.

Handlers work on dicts (what kopf gives and what the builders produce), so
responses are read raw (`_preload_content=False`) instead of as client model
objects. Creation is create-or-adopt: a 409 means a previous reconcile (maybe
by a previous operator process) already made it, which is the point of
deterministic names. No Secret is ever read.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from ferry.operator import api


def load_config(kubeconfig: str | None = None) -> None:
    """In-cluster config inside a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig)


def _json(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resp.data)
    return data


def _done(resp: Any) -> None:
    """Read a response we do not use to its end: only a fully read response gives its
    connection back to the pool. Left unread, the connection is dropped and the next call
    opens a new one (a TLS handshake on both sides: most of a burst's cost, measured)."""
    resp.data  # noqa: B018 - reading is the point


def not_found(exc: ApiException) -> bool:
    return exc.status == 404


def server_message(exc: ApiException, limit: int = 300) -> str:
    """The API server's own words for a refusal (its Status `message`), bounded."""
    try:
        body = json.loads(exc.body or "")
        text = str(body.get("message") or "") if isinstance(body, dict) else ""
    except (TypeError, ValueError):
        text = ""
    text = " ".join((text or str(exc.reason or f"HTTP {exc.status}")).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Stopping(RuntimeError):
    """The operator is shutting down: it creates nothing more (the next process will)."""


class Kube:
    """Thin typed wrappers; one instance per operator process.

    `stopping` is set the moment the operator is told to stop: from then on
    `create` refuses, so a reconcile still running in a worker thread cannot
    leave a child behind that the next operator process did not decide on.
    """

    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.stopping = threading.Event()
        self.client = client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    # ------------------------------------------------------------ generic

    def create(self, obj: dict[str, Any]) -> bool:
        """Create `obj`; False if it already existed (adopted by name). Refused once stopping."""
        if self.stopping.is_set():
            raise Stopping(f"operator stopping: not creating {obj['kind']}")
        ns = obj["metadata"].get("namespace")
        kind = obj["kind"]
        calls: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "Job": self.batch.create_namespaced_job,
            "Secret": self.core.create_namespaced_secret,  # the wire's certificates (created only)
            "Service": self.core.create_namespaced_service,
        }
        try:
            if kind in calls:
                _done(calls[kind](ns, obj, _preload_content=False))
            elif kind == api.TransferJobKind.kind:
                _done(
                    self.custom.create_namespaced_custom_object(
                        api.GROUP,
                        api.VERSION,
                        ns,
                        api.TransferJobKind.plural,
                        obj,
                        _preload_content=False,
                    )
                )
            else:
                raise ValueError(f"cannot create {kind}")
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # ------------------------------------------------------------ reads

    def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self.batch.read_namespaced_job(name, ns, _preload_content=False))
        except ApiException as exc:
            if not_found(exc):
                return None
            raise

    def read(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        """One namespaced child of a TransferJob by kind and name; None if absent."""
        calls: dict[str, Callable[..., Any]] = {
            "ConfigMap": self.core.read_namespaced_config_map,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
            "Job": self.batch.read_namespaced_job,
            "Service": self.core.read_namespaced_service,
        }
        try:
            return _json(calls[kind](name, ns, _preload_content=False))
        except ApiException as exc:
            if not_found(exc):
                return None
            raise

    def list_pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = _json(
            self.core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False)
        )["items"]
        return items

    def get_pvcs(self, ns: str, names: list[str]) -> list[dict[str, Any]]:
        out = []
        for name in dict.fromkeys(names):
            try:
                out.append(
                    _json(
                        self.core.read_namespaced_persistent_volume_claim(
                            name, ns, _preload_content=False
                        )
                    )
                )
            except ApiException as exc:
                if not not_found(exc):
                    raise
        return out

    def get_pv(self, name: str) -> dict[str, Any] | None:
        try:
            return _json(self.core.read_persistent_volume(name, _preload_content=False))
        except ApiException as exc:
            if not_found(exc):
                return None
            raise

    def namespace_annotations(self, ns: str) -> dict[str, str]:
        body = _json(self.core.read_namespace(ns, _preload_content=False))
        return dict(body.get("metadata", {}).get("annotations") or {})

    def get_pool(self, name: str) -> dict[str, Any] | None:
        try:
            return _json(
                self.custom.get_cluster_custom_object(
                    api.GROUP, api.VERSION, api.MoverPoolKind.plural, name, _preload_content=False
                )
            )
        except ApiException as exc:
            if not_found(exc):
                return None
            raise

    def get_transferjob(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(
                self.custom.get_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    ns,
                    api.TransferJobKind.plural,
                    name,
                    _preload_content=False,
                )
            )
        except ApiException as exc:
            if not_found(exc):
                return None
            raise

    def list_transferjobs(self, ns: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = _json(
            self.custom.list_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                ns,
                api.TransferJobKind.plural,
                label_selector=selector,
                _preload_content=False,
            )
        )["items"]
        return items

    # ------------------------------------------------------------ writes

    def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a TransferJob's status subresource (a 404 means it is gone: nothing to do)."""
        try:
            _done(
                self.custom.patch_namespaced_custom_object_status(
                    api.GROUP,
                    api.VERSION,
                    ns,
                    api.TransferJobKind.plural,
                    name,
                    {"status": status},
                    _preload_content=False,
                )
            )
        except ApiException as exc:
            if not not_found(exc):
                raise

    def patch_job(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        _done(self.batch.patch_namespaced_job(name, ns, patch, _preload_content=False))

    def delete_job(self, ns: str, name: str) -> None:
        try:
            _done(
                self.batch.delete_namespaced_job(
                    name, ns, propagation_policy="Background", _preload_content=False
                )
            )
        except ApiException as exc:
            if not not_found(exc):
                raise

    def delete_labelled(self, kind: str, ns: str, selector: str) -> None:
        """Delete the Jobs, Services or Secrets of `ns` matching `selector`. Secrets by one
        deletecollection (the operator never lists or reads them); the others listed first,
        then deleted by name (not every API server takes a deletecollection of Services)."""
        if kind == "Secret":
            self.core.delete_collection_namespaced_secret(
                ns, label_selector=selector, _preload_content=False
            )
            return
        lists: dict[str, Callable[..., Any]] = {
            "Job": self.batch.list_namespaced_job,
            "Service": self.core.list_namespaced_service,
        }
        deletes: dict[str, Callable[..., Any]] = {
            "Job": self.batch.delete_namespaced_job,
            "Service": self.core.delete_namespaced_service,
        }
        items = _json(lists[kind](ns, label_selector=selector, _preload_content=False))["items"]
        for item in items:
            try:
                deletes[kind](
                    item["metadata"]["name"],
                    ns,
                    propagation_policy="Background",
                    _preload_content=False,
                )
            except ApiException as exc:
                if not not_found(exc):
                    raise

    def delete_transferjob(self, ns: str, name: str) -> None:
        try:
            _done(
                self.custom.delete_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    ns,
                    api.TransferJobKind.plural,
                    name,
                    propagation_policy="Background",
                    _preload_content=False,
                )
            )
        except ApiException as exc:
            if not not_found(exc):
                raise
