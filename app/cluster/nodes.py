"""The live node inventory: Nodes and RuntimeClasses watched in the background, in memory.

`NodeWatcher` runs two `Reflector`s (list + watch of v1 Nodes and node.k8s.io/v1
RuntimeClasses) in daemon threads, off the asyncio loop: the official `kubernetes` client is
synchronous, and a thread keeps the watch's blocking reads and the occasional snapshot rebuild
(tens of milliseconds for thousands of nodes) away from the admission path. Admission only
reads an immutable `PlacementIndex` through one attribute access, so no lock is taken there.

`InventoryStore` holds the objects and rebuilds the snapshot (`Inventory` + `PlacementIndex`)
when something that matters changed: node heartbeats that only touch status conditions compare
equal after parsing and cost nothing.

An API outage keeps the last inventory; `age_seconds` says how long ago the API was last heard
from (a watch restarts at least every `watch_timeout_seconds`, so a healthy watcher stays
below about that).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config

from app.cluster.reflector import Reflector, ReflectorSettings, start_threads, stop_threads
from app.core.nodes.model import (
    EMPTY_INVENTORY,
    Inventory,
    Node,
    RuntimeClass,
    build_inventory,
    node_from_api,
    runtime_class_from_api,
)
from app.core.nodes.placement import PlacementIndex
from app.core.nodes.rules import PoolRulesConfig
from app.core.pools import UNKNOWN_PLACEMENT, Placement

logger = logging.getLogger(__name__)


class InventoryStore:
    """Nodes and RuntimeClasses by name; publishes a new `PlacementIndex` on every change."""

    def __init__(self, rules: PoolRulesConfig | None = None) -> None:
        self._rules = rules or PoolRulesConfig()
        self._lock = threading.Lock()
        self._nodes: dict[str, Node] = {}
        self._runtime_classes: dict[str, RuntimeClass] = {}
        self._index = PlacementIndex(EMPTY_INVENTORY, self._rules)
        self.rebuilds = 0

    @property
    def index(self) -> PlacementIndex:
        return self._index

    def replace_nodes(self, items: list[Mapping[str, Any]]) -> None:
        parsed = (node_from_api(item) for item in items)
        nodes = {n.name: n for n in parsed if n is not None}
        with self._lock:
            self._nodes = nodes
            self._rebuild()

    def node_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        node = node_from_api(obj)
        if node is None:
            return
        with self._lock:
            if kind == "DELETED":
                changed = self._nodes.pop(node.name, None) is not None
            else:
                changed = self._nodes.get(node.name) != node
                self._nodes[node.name] = node
            if changed:
                self._rebuild()

    def replace_runtime_classes(self, items: list[Mapping[str, Any]]) -> None:
        parsed = (runtime_class_from_api(item) for item in items)
        with self._lock:
            self._runtime_classes = {rc.name: rc for rc in parsed if rc is not None}
            self._rebuild()

    def runtime_class_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        runtime_class = runtime_class_from_api(obj)
        if runtime_class is None:
            return
        with self._lock:
            if kind == "DELETED":
                changed = self._runtime_classes.pop(runtime_class.name, None) is not None
            else:
                changed = self._runtime_classes.get(runtime_class.name) != runtime_class
                self._runtime_classes[runtime_class.name] = runtime_class
            if changed:
                self._rebuild()

    def _rebuild(self) -> None:
        started = time.perf_counter()
        inventory = build_inventory(
            self._nodes.values(),
            self._runtime_classes.values(),
            synced_at=time.time(),
            pool_labels=self._rules.pool_labels,
        )
        self._index = PlacementIndex(inventory, self._rules)
        self.rebuilds += 1
        logger.debug(
            "inventory rebuilt: %d nodes, %d pools, %d groups, %d runtime classes in %.1f ms",
            len(inventory.nodes),
            len(inventory.pools),
            self._index.group_count,
            len(inventory.runtime_classes),
            (time.perf_counter() - started) * 1000,
        )


def api_client_from_config(kubeconfig: str | None = None, *, context: str | None = None) -> Any:
    """A kubernetes `ApiClient` from a kubeconfig file, or from the in-cluster service account
    when `kubeconfig` is None. Its own Configuration: the client's global one is left alone."""
    configuration = client.Configuration()
    if kubeconfig is None:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    return client.ApiClient(configuration)


class NodeWatcher:
    """The live inventory; a `PlacementSource` (app/core/pools.py). Start once, stop once."""

    def __init__(
        self,
        api_client: Any,
        *,
        rules: PoolRulesConfig | None = None,
        settings: ReflectorSettings | None = None,
    ) -> None:
        self._store = InventoryStore(rules)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reflectors = (
            Reflector(
                "nodes",
                client.CoreV1Api(api_client).list_node,
                on_replace=self._store.replace_nodes,
                on_event=self._store.node_event,
                stop=self._stop,
                settings=settings,
            ),
            Reflector(
                "runtimeclasses",
                client.NodeV1Api(api_client).list_runtime_class,
                on_replace=self._store.replace_runtime_classes,
                on_event=self._store.runtime_class_event,
                stop=self._stop,
                settings=settings,
            ),
        )

    @classmethod
    def from_config(
        cls,
        kubeconfig: str | None = None,
        *,
        context: str | None = None,
        rules: PoolRulesConfig | None = None,
        settings: ReflectorSettings | None = None,
    ) -> NodeWatcher:
        """From a kubeconfig path, or in-cluster config when `kubeconfig` is None."""
        api_client = api_client_from_config(kubeconfig, context=context)
        return cls(api_client, rules=rules, settings=settings)

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if not self._threads:
            self._threads = start_threads(self._reflectors)

    def stop(self, timeout: float = 2.0) -> None:
        """Stops the watches; returns within about `timeout` seconds."""
        stop_threads(self._stop, self._reflectors, self._threads, timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Blocks until `ready` or `timeout` seconds (for start-up scripts and tests)."""
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.05)
        return self.ready

    # ---- state ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once Nodes and RuntimeClasses have each been listed in full."""
        return all(r.synced for r in self._reflectors)

    @property
    def age_seconds(self) -> float:
        """Seconds since the API was last heard from for both kinds; inf before `ready`."""
        if not self.ready:
            return math.inf
        return time.monotonic() - min(r.last_contact for r in self._reflectors)

    @property
    def last_error(self) -> str:
        return "; ".join(f"{r.kind}: {r.last_error}" for r in self._reflectors if r.last_error)

    @property
    def index(self) -> PlacementIndex:
        return self._store.index

    def snapshot(self) -> Inventory:
        return self._store.index.inventory

    def place(self, pod_spec: Mapping[str, Any]) -> Placement:
        """PlacementSource: unknown until the first full list, then the current snapshot's."""
        if not self.ready:
            return UNKNOWN_PLACEMENT
        return self._store.index.place(pod_spec)
