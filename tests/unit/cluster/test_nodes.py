"""app.cluster.nodes: the in-memory store behind the watch, and the watcher before it syncs.

The list + watch loop itself runs against a real kube-apiserver in
tests/e2e/test_nodes_inventory.py.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from typing import Any

from kubernetes import client

from app.cluster.nodes import InventoryStore, NodeWatcher
from app.cluster.reflector import Reflector, ReflectorSettings, iter_lines
from app.core.pools import UNKNOWN_PLACEMENT, Streaming


def api_node(name: str, pool: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "resourceVersion": "1",
            "labels": {
                "kubernetes.azure.com/agentpool": pool,
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.azure.com/artifactstreaming-enabled": "true",
                **labels,
            },
        },
        "spec": {},
        "status": {"nodeInfo": {"kubeletVersion": "v1.34.4"}, "conditions": []},
    }


def test_store_follows_events() -> None:
    store = InventoryStore()
    store.replace_nodes([api_node("a1", "a"), api_node("b1", "b")])
    assert [p.name for p in store.index.inventory.pools] == ["a", "b"]

    store.node_event("ADDED", api_node("c1", "c", **{"kubernetes.io/arch": "arm64"}))
    assert store.index.place({"nodeSelector": {"kubernetes.azure.com/agentpool": "c"}}).pools[
        0
    ].reasons == ("arm64",)

    relabelled = api_node("a1", "a", team="x")
    store.node_event("MODIFIED", relabelled)
    assert [p.name for p in store.index.place({"nodeSelector": {"team": "x"}}).pools] == ["a"]

    tainted = copy.deepcopy(relabelled)
    tainted["spec"]["taints"] = [{"key": "k", "value": "v", "effect": "NoSchedule"}]
    store.node_event("MODIFIED", tainted)
    assert store.index.place({"nodeSelector": {"team": "x"}}).pools == ()

    store.node_event("DELETED", api_node("b1", "b"))
    assert [p.name for p in store.index.inventory.pools] == ["a", "c"]


def test_heartbeats_do_not_rebuild() -> None:
    store = InventoryStore()
    store.replace_nodes([api_node("a1", "a")])
    before = store.index
    heartbeat = api_node("a1", "a")
    heartbeat["metadata"]["resourceVersion"] = "2"
    heartbeat["status"]["conditions"] = [{"type": "Ready", "lastHeartbeatTime": "now"}]
    store.node_event("MODIFIED", heartbeat)
    store.node_event("DELETED", api_node("never-seen", "z"))
    store.node_event("ADDED", {"metadata": {}})
    assert store.index is before


def test_store_follows_runtime_classes() -> None:
    store = InventoryStore()
    store.replace_nodes([api_node("a1", "a", sandbox="yes")])
    rc = {"metadata": {"name": "kata-vm-isolation"}, "handler": "kata"}
    store.replace_runtime_classes([])
    assert store.index.place({"runtimeClassName": "kata-vm-isolation"}).pools == ()
    store.runtime_class_event("ADDED", rc)
    (pool,) = store.index.place({"runtimeClassName": "kata-vm-isolation"}).pools
    assert pool.streaming is Streaming.NO
    assert pool.reasons == ("Pod Sandboxing runtime class",)
    rc_selecting = {**rc, "scheduling": {"nodeSelector": {"sandbox": "no"}}}
    store.runtime_class_event("MODIFIED", rc_selecting)
    assert store.index.place({"runtimeClassName": "kata-vm-isolation"}).pools == ()
    store.runtime_class_event("DELETED", rc)
    assert store.index.inventory.runtime_classes == {}


def test_watcher_before_sync_knows_nothing() -> None:
    watcher = NodeWatcher(client.ApiClient(client.Configuration()))
    assert not watcher.ready
    assert math.isinf(watcher.age_seconds)
    assert watcher.place({}) is UNKNOWN_PLACEMENT
    assert watcher.snapshot().nodes == ()
    watcher.stop()  # never started: returns at once


class _Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Any:
        return iter(self.chunks)


def test_watch_lines_are_split_across_chunks() -> None:
    response = _Chunks(b'{"a":', b'1}\n{"b":2}\n\n{"c"', b":3}")
    assert list(iter_lines(response)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


class _Response:
    """What a kubernetes list_* call returns with _preload_content=False."""

    def __init__(self, body: Any = None, lines: list[Any] | None = None) -> None:
        self.data = json.dumps(body).encode() if body is not None else b""
        self.lines = lines or []

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Any:
        return iter([json.dumps(line).encode() + b"\n" for line in self.lines])

    def release_conn(self) -> None:
        pass


class _Api:
    """A scripted list/watch endpoint: each call takes the next response."""

    def __init__(self, stop: threading.Event, *responses: _Response) -> None:
        self.stop = stop
        self.responses = list(responses)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> _Response:
        self.calls.append(kwargs)
        if not self.responses:
            self.stop.set()
            raise ConnectionError("script finished")
        return self.responses.pop(0)


def _list(rv: str, *names: str) -> _Response:
    return _Response(
        {"metadata": {"resourceVersion": rv}, "items": [api_node(n, "p") for n in names]}
    )


def test_reflector_relists_on_410_and_resumes_watches() -> None:
    stop = threading.Event()
    store = InventoryStore()
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    added = {
        "type": "ADDED",
        "object": api_node("n3", "p")
        | {"metadata": {**api_node("n3", "p")["metadata"], "resourceVersion": "12"}},
    }
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}
    api = _Api(
        stop,
        _list("10", "n1"),
        _Response(lines=[gone]),
        _list("11", "n1", "n2"),
        _Response(lines=[added, bookmark]),
    )
    reflector = Reflector(
        "nodes", api, on_replace=store.replace_nodes, on_event=store.node_event, stop=stop,
        settings=ReflectorSettings(backoff_initial=0.01),
    )  # fmt: skip
    reflector.run()  # returns once the script is exhausted (it sets stop)
    assert [("watch" in c, c.get("resource_version")) for c in api.calls] == [
        (False, None),
        (True, "10"),
        (False, None),  # 410: list again
        (True, "11"),
        (True, "15"),  # the watch ended: resume from the bookmark
    ]
    assert [n.name for n in store.index.inventory.nodes] == ["n1", "n2", "n3"]
    assert reflector.synced


def test_stop_during_the_watch_call_still_cuts_the_watch() -> None:
    """stop() can come while the watch request is being made: interrupt() then finds no
    response to cut. The reflector cuts it itself once the call returns, so a quiet watch
    does not hold the thread until its timeout."""
    import socket

    stop = threading.Event()
    ours, theirs = socket.socketpair()  # the watch's connection; the server never writes
    ours.settimeout(30)

    class _Quiet:
        connection = type("Conn", (), {"sock": ours})()

        def stream(self, amt: int | None = None, decode_content: bool = False) -> Any:
            chunk = ours.recv(1024)  # blocks until data, or returns b"" once shut down
            return iter([chunk] if chunk else [])

        def release_conn(self) -> None:
            pass

    def api(**kwargs: Any) -> Any:
        if "watch" not in kwargs:
            return _list("10", "n1")
        stop.set()  # stop() arrives now, while this call is being made
        return _Quiet()

    store = InventoryStore()
    reflector = Reflector(
        "nodes", api, on_replace=store.replace_nodes, on_event=store.node_event, stop=stop
    )
    thread = threading.Thread(target=reflector.run, daemon=True)
    thread.start()
    thread.join(5)
    try:
        assert not thread.is_alive(), "the watch was not cut: the thread waits for its timeout"
    finally:
        ours.close()
        theirs.close()
