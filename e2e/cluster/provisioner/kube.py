"""Thin helpers over the kubernetes client that speak plain API-shaped dicts (camelCase
keys, as the API serves them): a client per identity, raw calls, a list-then-watch loop."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def api_client(kubeconfig: str) -> client.ApiClient:
    """A client for one identity, independent of the global default configuration."""
    return config.new_client_from_config(config_file=kubeconfig)


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
    """Call a generated API method and return the JSON body as a dict."""
    resp = call(*args, _preload_content=False, **kwargs)
    data: Obj = json.loads(resp.data)
    return data


def informer(
    name: str,
    list_call: Callable[..., Any],
    handle: Callable[[str, Obj], None],
    stop: threading.Event,
    **kwargs: Any,
) -> None:
    """List then watch forever (relisting on errors/410), calling handle(type, obj).

    A relist (after an error or 410 Gone) replays every object as ADDED, so
    handlers must be idempotent.
    Runs until `stop` is set; meant for a daemon thread.
    """
    while not stop.is_set():
        try:
            listing = raw(list_call, **kwargs)
            for item in listing.get("items", []):
                handle("ADDED", item)
            rv = listing["metadata"]["resourceVersion"]
            while not stop.is_set():
                # deserialize=False yields {"type", "object"} with the JSON object.
                for event in watch.Watch().stream(
                    list_call,
                    resource_version=rv,
                    timeout_seconds=30,
                    deserialize=False,
                    allow_watch_bookmarks=True,
                    **kwargs,
                ):
                    kind, obj = event["type"], event["object"]
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind != "BOOKMARK":
                        handle(kind, obj)
                    if stop.is_set():
                        return
        except Exception as exc:  # the watch must survive apiserver hiccups and 410s
            if stop.is_set():
                return
            log.warning("%s: watch ended (%s); relisting", name, exc)
            stop.wait(1.0)


def start_thread(name: str, target: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return t
