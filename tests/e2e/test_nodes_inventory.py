"""The node inventory against a real kube-apiserver (hack/cluster.sh).

The watcher must follow nodes added, relabelled, tainted and deleted (and runtime classes)
within a few seconds, keep its inventory through an API outage, come back after it, and stop
promptly. The outage is made real by putting a TCP proxy between the watcher and the
apiserver and closing it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from app.cluster.nodes import NodeWatcher
from app.cluster.reflector import ReflectorSettings
from app.core.nodes.model import Inventory, NodePool
from app.core.pools import Streaming

pytestmark = pytest.mark.e2e

FAST = ReflectorSettings(watch_timeout_seconds=5, backoff_initial=0.2, backoff_max=1.0)
FOLLOW_WITHIN = 5.0  # seconds: "within a few seconds"
AKS = "kubernetes.azure.com/"
T = TypeVar("T")

# The pools hack/cluster/nodes.yaml creates, and what the default rules say about them.
EXPECTED_POOLS = {
    "streamub": (Streaming.YES, ()),
    "streamazl": (Streaming.YES, ()),
    "tainted": (Streaming.YES, ()),
    "arm": (Streaming.NO, ("arm64",)),
    "osguard": (Streaming.NO, ("OS Guard",)),
    "cvm": (Streaming.NO, ("Confidential VM",)),
    "gen1": (Streaming.NO, ("Gen1 VM",)),
    "sandbox": (Streaming.NO, ("Pod Sandboxing",)),
    "win": (Streaming.NO, ("windows", "streaming not enabled")),
    "nostream": (Streaming.NO, ("streaming not enabled",)),
    "oldkube": (Streaming.NO, ("kubelet v1.25.6 < 1.26",)),
}


def eventually(check: Callable[[], T | None], *, timeout: float = FOLLOW_WITHIN) -> T:
    """Polls `check` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {check.__doc__ or check}")
        time.sleep(0.05)


@pytest.fixture
def watcher(cluster: Path) -> Iterator[NodeWatcher]:
    w = NodeWatcher.from_config(str(cluster), settings=FAST)
    w.start()
    assert w.wait_ready(15), w.last_error
    yield w
    w.stop()


def temp_node(name: str, pool: str, **labels: str) -> dict[str, Any]:
    """A Node nobody else's pods land on (tainted), kept Ready by KWOK."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                AKS + "agentpool": pool,
                "type": "kwok",
                **labels,
            },
        },
        "spec": {
            "taints": [{"key": "streamgate-e2e", "value": "inventory", "effect": "NoSchedule"}]
        },
    }


def pool_of(inventory: Inventory, name: str) -> NodePool | None:
    return next((p for p in inventory.pools if p.name == name), None)


def test_initial_inventory_matches_the_cluster(watcher: NodeWatcher, kubectl: Any) -> None:
    inventory = watcher.snapshot()
    api_nodes = kubectl.json("get", "nodes")["items"]
    assert {n.name for n in inventory.nodes} == {n["metadata"]["name"] for n in api_nodes}
    assert "kata-vm-isolation" in inventory.runtime_classes
    status = {fit.name: (fit.streaming, fit.reasons) for fit in watcher.index.pool_status()}
    for pool, expected in EXPECTED_POOLS.items():
        assert status[pool] == expected, pool
    assert watcher.age_seconds < FAST.watch_timeout_seconds + 5


def test_follows_node_added_relabelled_tainted_deleted(watcher: NodeWatcher, kubectl: Any) -> None:
    name = f"e2e-inv-{secrets.token_hex(3)}"
    pool = name
    manifest = temp_node(name, pool, **{"kubernetes.io/arch": "arm64"})
    tolerate_e2e = {"tolerations": [{"key": "streamgate-e2e", "operator": "Exists"}]}
    try:
        kubectl("create", "-f", "-", stdin=json.dumps(manifest))

        def added() -> bool:
            """the new node shows up as an arm64 pool"""
            node_pool = pool_of(watcher.snapshot(), pool)
            return node_pool is not None and node_pool.architectures == ("arm64",)

        eventually(added)

        def placeable() -> bool:
            """a pod tolerating the e2e taint may land there (once KWOK made it Ready)"""
            placed = watcher.place({"nodeSelector": {AKS + "agentpool": pool}, **tolerate_e2e})
            expected = [(pool, ("arm64", "streaming not enabled"))]
            return [(p.name, p.reasons) for p in placed.pools] == expected

        eventually(placeable, timeout=15)

        kubectl(
            "label", "node", name, "--overwrite",
            "kubernetes.io/arch=amd64", AKS + "artifactstreaming-enabled=true",
        )  # fmt: skip

        def relabelled() -> bool:
            """the relabelled node's pool streams"""
            placed = watcher.place({"nodeSelector": {AKS + "agentpool": pool}, **tolerate_e2e})
            return [(p.name, p.streaming) for p in placed.pools] == [(pool, Streaming.YES)]

        eventually(relabelled)

        kubectl("taint", "node", name, "maintenance=now:NoExecute")

        def tainted() -> bool:
            """the new taint keeps a pod that only tolerates the e2e taint away"""
            placed = watcher.place({"nodeSelector": {AKS + "agentpool": pool}, **tolerate_e2e})
            return placed.known and placed.pools == ()

        eventually(tainted)
        everything = watcher.place(
            {"nodeSelector": {AKS + "agentpool": pool}, "tolerations": [{"operator": "Exists"}]}
        )
        assert [p.name for p in everything.pools] == [pool]

        kubectl("delete", "node", name, "--wait=false")

        def deleted() -> bool:
            """the pool is gone with its only node"""
            return pool_of(watcher.snapshot(), pool) is None

        eventually(deleted)
    finally:
        kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)


def test_follows_runtime_classes(watcher: NodeWatcher, kubectl: Any) -> None:
    name = f"e2e-rc-{secrets.token_hex(3)}"
    manifest = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": name},
        "handler": "kata-vm-isolation",
        "scheduling": {"nodeSelector": {AKS + "agentpool": "streamub"}},
    }
    try:
        kubectl("create", "-f", "-", stdin=json.dumps(manifest))

        def seen() -> bool:
            """the runtime class selects streamub and counts as Pod Sandboxing"""
            pools = watcher.place({"runtimeClassName": name}).pools
            return [(p.name, p.reasons) for p in pools] == [
                ("streamub", ("Pod Sandboxing runtime class",))
            ]

        eventually(seen)
        kubectl("delete", "runtimeclass", name, "--wait=false")
        eventually(lambda: name not in watcher.snapshot().runtime_classes)
    finally:
        kubectl("delete", "runtimeclass", name, "--ignore-not-found", "--wait=false", check=False)


# ---- outage ------------------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `close()` makes an outage, `open()` ends it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_outage_keeps_the_inventory_and_recovers(
    cluster: Path, kubectl: Any, tmp_path: Path
) -> None:
    config = yaml.safe_load(cluster.read_text())
    server = config["clusters"][0]["cluster"]["server"]  # https://127.0.0.1:<port>
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    proxy.open()
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://{host}:{proxy.port}"
    proxied = tmp_path / "kubeconfig"
    proxied.write_text(yaml.safe_dump(config))

    watcher = NodeWatcher.from_config(str(proxied), settings=FAST)
    watcher.start()
    rc_name = f"e2e-outage-{secrets.token_hex(3)}"
    try:
        assert watcher.wait_ready(15), watcher.last_error
        before = watcher.snapshot()
        assert before.nodes

        proxy.close()
        time.sleep(3)
        assert watcher.ready
        assert watcher.snapshot() is before  # the last inventory is kept
        assert watcher.place({}).known
        assert watcher.age_seconds >= 2.5
        assert watcher.last_error  # it noticed

        # A change made during the outage is seen once the API is back.
        kubectl("create", "-f", "-", stdin=json.dumps({
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": rc_name}, "handler": "runc",
        }))  # fmt: skip
        proxy.open()
        eventually(lambda: rc_name in watcher.snapshot().runtime_classes, timeout=10)
        eventually(lambda: watcher.age_seconds < 2, timeout=10)
    finally:
        started = time.monotonic()
        watcher.stop()
        stopped_in = time.monotonic() - started
        proxy.close()
        kubectl(
            "delete", "runtimeclass", rc_name, "--ignore-not-found", "--wait=false", check=False
        )
    assert stopped_in < 2.0


def test_stop_is_prompt_during_a_watch(cluster: Path) -> None:
    watcher = NodeWatcher.from_config(
        str(cluster), settings=ReflectorSettings(watch_timeout_seconds=300)
    )
    before = set(threading.enumerate())
    watcher.start()
    assert watcher.wait_ready(15)
    time.sleep(0.5)  # now blocked reading a long watch
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 2.0
    ours = [t for t in set(threading.enumerate()) - before if t.name.startswith("streamgate-")]
    assert not ours
