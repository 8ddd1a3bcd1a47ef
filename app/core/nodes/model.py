"""A typed, immutable snapshot of the cluster's nodes, node pools and runtime classes.

Everything here is built from the API's JSON dicts (a watch event's `object`, or an item of
`kubectl get nodes -o json`), never from the kubernetes client's model classes: dicts are what
the watch delivers, and turning 5,000 nodes into client models would cost seconds.

Only the fields that scheduling and streaming depend on are kept (labels, taints,
`spec.unschedulable`, the kubelet version, and `status.nodeInfo` architecture and OS), so two
versions of a node that differ only in heartbeats compare equal and cause no rebuild.

Nodes are grouped into pools by `kubernetes.azure.com/agentpool`, then the legacy `agentpool`
label, then the node's own name (docs/aks-facts.md §3). `NodePool` holds the facts of one pool
under the default AKS label keys; judging whether a pool can stream is `app.core.nodes.rules`'
job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Default AKS / upstream label keys (docs/aks-facts.md §3). The rules can be re-keyed; these are the
# keys under which `NodePool` reports its facts.
POOL_LABELS = ("kubernetes.azure.com/agentpool", "agentpool")
ARCH_LABEL = "kubernetes.io/arch"
OS_LABEL = "kubernetes.io/os"
OS_SKU_LABEL = "kubernetes.azure.com/os-sku"
SECURITY_TYPE_LABEL = "kubernetes.azure.com/security-type"
NODE_IMAGE_LABEL = "kubernetes.azure.com/node-image-version"
SANDBOX_LABELS = (
    "kubernetes.azure.com/kata-vm-isolation",
    "kubernetes.azure.com/kata-mshv-vm-isolation",
)
STREAMING_LABEL = "kubernetes.azure.com/artifactstreaming-enabled"

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`v1.25.6`, `1.26`, `v1.29.2-hotfix.1` -> (major, minor, patch); None if unparseable."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = ""


@dataclass(frozen=True, slots=True)
class Toleration:
    """A pod's (or a RuntimeClass's) toleration. An empty operator means Equal; an empty key
    with operator Exists tolerates every taint; an empty effect matches every effect."""

    key: str = ""
    operator: str = ""
    value: str = ""
    effect: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    kubelet_version: str = ""
    # status.nodeInfo, the fallback when the kubernetes.io/arch or /os label is missing
    architecture: str = ""
    operating_system: str = ""


@dataclass(frozen=True, slots=True)
class RuntimeClass:
    """A node.k8s.io/v1 RuntimeClass: its `scheduling` is merged into pods that name it."""

    name: str
    handler: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True, slots=True)
class NodePool:
    """The facts of one node pool. Tuples hold the distinct values seen on its nodes (sorted;
    empty when no node carries the label); `common_labels` are the labels all nodes share."""

    name: str
    nodes: tuple[Node, ...]
    architectures: tuple[str, ...]
    operating_systems: tuple[str, ...]
    os_skus: tuple[str, ...]
    security_types: tuple[str, ...]
    node_image_versions: tuple[str, ...]
    sandboxing: tuple[str, ...]
    streaming_enabled: tuple[str, ...]
    min_kubelet_version: str
    taints: tuple[Taint, ...]
    common_labels: Mapping[str, str]

    @property
    def node_count(self) -> int:
        return len(self.nodes)


@dataclass(frozen=True, slots=True)
class Inventory:
    """One consistent view of the cluster. Replaced, never mutated, when anything changes."""

    nodes: tuple[Node, ...] = ()
    pools: tuple[NodePool, ...] = ()
    runtime_classes: Mapping[str, RuntimeClass] = field(default_factory=dict)
    synced_at: float = 0.0  # wall-clock seconds (time.time()) of the data it was built from
    label_keys: frozenset[str] = frozenset()  # every label key carried by any node
    pool_labels: tuple[str, ...] = POOL_LABELS

    def pool_name(self, node: Node) -> str:
        return pool_name(node, self.pool_labels)


EMPTY_INVENTORY = Inventory()


# ---- building from API dicts --------------------------------------------------------------


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _string_map(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items() if v is not None}


def toleration_from_api(obj: object) -> Toleration | None:
    """A toleration dict -> Toleration; None when it is not a dict or a field has the wrong
    type (such a toleration tolerates nothing)."""
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return None
    values = [obj.get(name) for name in ("key", "operator", "value", "effect")]
    if any(v is not None and not isinstance(v, str) for v in values):
        return None
    key, operator, value, effect = (v or "" for v in values)
    return Toleration(key=key, operator=operator, value=value, effect=effect)


def node_from_api(obj: Mapping[str, Any]) -> Node | None:
    """A Node object as the API returns it -> Node; None when it has no name."""
    metadata = _mapping(obj.get("metadata"))
    name = _str(metadata.get("name"))
    if not name:
        return None
    spec = _mapping(obj.get("spec"))
    info = _mapping(_mapping(obj.get("status")).get("nodeInfo"))
    raw_taints = spec.get("taints")
    taints = tuple(
        Taint(key=_str(t.get("key")), value=_str(t.get("value")), effect=_str(t.get("effect")))
        for t in (raw_taints if isinstance(raw_taints, list) else ())
        if isinstance(t, Mapping)
    )
    return Node(
        name=name,
        labels=_string_map(metadata.get("labels")),
        taints=taints,
        unschedulable=spec.get("unschedulable") is True,
        kubelet_version=_str(info.get("kubeletVersion")),
        architecture=_str(info.get("architecture")),
        operating_system=_str(info.get("operatingSystem")),
    )


def runtime_class_from_api(obj: Mapping[str, Any]) -> RuntimeClass | None:
    """A node.k8s.io/v1 RuntimeClass object -> RuntimeClass; None when it has no name."""
    name = _str(_mapping(obj.get("metadata")).get("name"))
    if not name:
        return None
    scheduling = _mapping(obj.get("scheduling"))
    raw = scheduling.get("tolerations")
    tolerations = (toleration_from_api(t) for t in (raw if isinstance(raw, list) else ()))
    return RuntimeClass(
        name=name,
        handler=_str(obj.get("handler")),
        node_selector=_string_map(scheduling.get("nodeSelector")),
        tolerations=tuple(t for t in tolerations if t is not None),
    )


# ---- pools ----------------------------------------------------------------------------------


def pool_name(node: Node, pool_labels: Iterable[str] = POOL_LABELS) -> str:
    """The node's pool: the first pool label it carries, else its own name."""
    for key in pool_labels:
        value = node.labels.get(key)
        if value:
            return value
    return node.name


def _distinct(nodes: Iterable[Node], key: str) -> tuple[str, ...]:
    return tuple(sorted({n.labels[key] for n in nodes if key in n.labels}))


def _min_kubelet(nodes: Iterable[Node]) -> str:
    versions = [(v, n.kubelet_version) for n in nodes if (v := parse_version(n.kubelet_version))]
    return min(versions)[1] if versions else ""


def build_pool(name: str, nodes: tuple[Node, ...]) -> NodePool:
    """Aggregates the facts of one pool's nodes (under the default AKS label keys)."""
    common = dict(nodes[0].labels) if nodes else {}
    for node in nodes[1:]:
        common = {k: v for k, v in common.items() if node.labels.get(k) == v}
    archs = {n.labels.get(ARCH_LABEL) or n.architecture for n in nodes}
    oses = {n.labels.get(OS_LABEL) or n.operating_system for n in nodes}
    taints = {t: None for n in nodes for t in n.taints}  # ordered, distinct
    return NodePool(
        name=name,
        nodes=nodes,
        architectures=tuple(sorted(a for a in archs if a)),
        operating_systems=tuple(sorted(o for o in oses if o)),
        os_skus=_distinct(nodes, OS_SKU_LABEL),
        security_types=_distinct(nodes, SECURITY_TYPE_LABEL),
        node_image_versions=_distinct(nodes, NODE_IMAGE_LABEL),
        sandboxing=tuple(sorted({v for key in SANDBOX_LABELS for v in _distinct(nodes, key)})),
        streaming_enabled=_distinct(nodes, STREAMING_LABEL),
        min_kubelet_version=_min_kubelet(nodes),
        taints=tuple(taints),
        common_labels=common,
    )


def build_inventory(
    nodes: Iterable[Node],
    runtime_classes: Iterable[RuntimeClass] = (),
    *,
    synced_at: float = 0.0,
    pool_labels: Iterable[str] = POOL_LABELS,
) -> Inventory:
    """Groups nodes into pools (sorted by pool name, nodes by name) and indexes runtime classes."""
    keys = tuple(pool_labels)
    ordered = tuple(sorted(nodes, key=lambda n: n.name))
    by_pool: dict[str, list[Node]] = {}
    for node in ordered:
        by_pool.setdefault(pool_name(node, keys), []).append(node)
    pools = tuple(build_pool(name, tuple(members)) for name, members in sorted(by_pool.items()))
    return Inventory(
        nodes=ordered,
        pools=pools,
        runtime_classes={rc.name: rc for rc in runtime_classes},
        synced_at=synced_at,
        label_keys=frozenset(k for n in ordered for k in n.labels),
        pool_labels=keys,
    )


def inventory_from_api(
    nodes: Iterable[Mapping[str, Any]],
    runtime_classes: Iterable[Mapping[str, Any]] = (),
    *,
    synced_at: float = 0.0,
    pool_labels: Iterable[str] = POOL_LABELS,
) -> Inventory:
    """From API dicts (e.g. the `items` of `kubectl get nodes,runtimeclasses -o json`)."""
    parsed_nodes = (node_from_api(n) for n in nodes if isinstance(n, Mapping))
    parsed_rcs = (runtime_class_from_api(r) for r in runtime_classes if isinstance(r, Mapping))
    return build_inventory(
        (n for n in parsed_nodes if n is not None),
        (r for r in parsed_rcs if r is not None),
        synced_at=synced_at,
        pool_labels=pool_labels,
    )
