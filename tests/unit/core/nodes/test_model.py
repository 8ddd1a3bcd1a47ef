"""app.core.nodes.model: parsing API dicts, grouping nodes into pools, pool facts."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.nodes.model import (
    Node,
    RuntimeClass,
    Taint,
    Toleration,
    build_inventory,
    inventory_from_api,
    node_from_api,
    parse_version,
    pool_name,
    runtime_class_from_api,
    toleration_from_api,
)

AKS = "kubernetes.azure.com/"


def api_node(name: str, labels: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}, "resourceVersion": "7"},
        "spec": {},
        "status": {
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "v1.30.4",
            },
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    obj.update(extra)
    return obj


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v1.25.6", (1, 25, 6)),
        ("1.26", (1, 26, 0)),
        ("v1.29.2-hotfix.20240322", (1, 29, 2)),
        ("v1.30.0+k3s1", (1, 30, 0)),
        (" v1.31.1 ", (1, 31, 1)),
        ("", None),
        ("latest", None),
        ("v1", None),
    ],
    ids=["full", "major-minor", "suffix", "build-meta", "spaces", "empty", "word", "major-only"],
)
def test_parse_version(text: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == expected


def test_node_from_api_reads_the_scheduling_fields() -> None:
    obj = api_node(
        "n1",
        {"kubernetes.io/arch": "arm64", "team": "a"},
        spec={
            "unschedulable": True,
            "taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            ],
        },
    )
    node = node_from_api(obj)
    assert node == Node(
        name="n1",
        labels={"kubernetes.io/arch": "arm64", "team": "a"},
        taints=(
            Taint("dedicated", "gpu", "NoSchedule"),
            Taint("node.kubernetes.io/unschedulable", "", "NoSchedule"),
        ),
        unschedulable=True,
        kubelet_version="v1.30.4",
        architecture="amd64",
        operating_system="linux",
    )


def test_heartbeat_only_changes_compare_equal() -> None:
    before = api_node("n1", {"a": "1"})
    after = api_node("n1", {"a": "1"})
    after["metadata"]["resourceVersion"] = "8"
    after["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:00Z"
    assert node_from_api(before) == node_from_api(after)


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"metadata": {}},
        {"metadata": {"name": ""}},
        {"metadata": {"name": 5}},
        {"metadata": "n1"},
    ],
    ids=["empty", "no-name", "empty-name", "int-name", "metadata-str"],
)
def test_node_without_a_name_is_skipped(obj: dict[str, Any]) -> None:
    assert node_from_api(obj) is None


def test_node_with_malformed_fields_still_parses() -> None:
    obj = {
        "metadata": {"name": "n1", "labels": ["not", "a", "map"]},
        "spec": {
            "taints": [{"key": "a", "effect": "NoSchedule"}, "junk", 3],
            "unschedulable": "yes",
        },
        "status": {"nodeInfo": "junk"},
    }
    node = node_from_api(obj)
    assert node == Node(name="n1", taints=(Taint("a", "", "NoSchedule"),))


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"operator": "Exists"}, Toleration(operator="Exists")),
        (
            {"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"},
            Toleration("k", "Equal", "v", "NoSchedule"),
        ),
        ({"key": "k", "tolerationSeconds": 30}, Toleration(key="k")),
        ({"key": "k", "value": 5}, None),
        ("junk", None),
        ({"key": None, "operator": "Exists"}, Toleration(operator="Exists")),
    ],
    ids=["exists-all", "equal", "seconds-ignored", "int-value", "not-a-map", "null-key"],
)
def test_toleration_from_api(obj: object, expected: Toleration | None) -> None:
    assert toleration_from_api(obj) == expected


def test_runtime_class_from_api() -> None:
    obj = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "kata-vm-isolation"},
        "handler": "kata",
        "scheduling": {
            "nodeSelector": {AKS + "kata-vm-isolation": "true"},
            "tolerations": [{"key": "sandbox", "operator": "Exists"}, "junk"],
        },
    }
    assert runtime_class_from_api(obj) == RuntimeClass(
        name="kata-vm-isolation",
        handler="kata",
        node_selector={AKS + "kata-vm-isolation": "true"},
        tolerations=(Toleration(key="sandbox", operator="Exists"),),
    )


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"metadata": {"name": "gvisor"}, "handler": "runsc"}, RuntimeClass("gvisor", "runsc")),
        ({"metadata": {"name": "x"}, "scheduling": None}, RuntimeClass("x")),
        ({"metadata": {"name": "x"}, "scheduling": {"nodeSelector": "a=b"}}, RuntimeClass("x")),
        ({"metadata": {}}, None),
    ],
    ids=["no-scheduling", "null-scheduling", "selector-str", "no-name"],
)
def test_runtime_class_edge_cases(obj: dict[str, Any], expected: RuntimeClass | None) -> None:
    assert runtime_class_from_api(obj) == expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({AKS + "agentpool": "user1", "agentpool": "legacy"}, "user1"),
        ({"agentpool": "legacy"}, "legacy"),
        ({AKS + "agentpool": "", "agentpool": "legacy"}, "legacy"),
        ({}, "node-0"),
    ],
    ids=["aks-label", "legacy-label", "empty-aks-label", "node-itself"],
)
def test_pool_name(labels: dict[str, str], expected: str) -> None:
    assert pool_name(Node("node-0", labels)) == expected


def test_pool_name_with_custom_keys() -> None:
    node = Node("n", {"eks.amazonaws.com/nodegroup": "ng1", "agentpool": "x"})
    assert pool_name(node, ("eks.amazonaws.com/nodegroup",)) == "ng1"


def _aks(pool: str, index: int, **labels: str) -> Node:
    base = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": f"aks-{pool}-{index}",
        AKS + "agentpool": pool,
        AKS + "os-sku": "Ubuntu",
        AKS + "node-image-version": "AKSUbuntu-2204gen2containerd-202410.27.0",
        AKS + "artifactstreaming-enabled": "true",
    }
    base.update(labels)
    return Node(f"aks-{pool}-{index}", base, kubelet_version="v1.30.4")


def test_pool_facts() -> None:
    nodes = [
        _aks("mixed", 0),
        Node(
            "aks-mixed-1",
            {
                **_aks("mixed", 1).labels,
                "kubernetes.io/arch": "arm64",
                AKS + "kata-vm-isolation": "true",
            },
            taints=(Taint("dedicated", "gpu", "NoSchedule"),),
            kubelet_version="v1.25.6",
        ),
        _aks("mixed", 2, **{AKS + "security-type": "ConfidentialVM"}),
    ]
    (pool,) = build_inventory(nodes).pools
    assert pool.name == "mixed"
    assert pool.node_count == 3
    assert pool.architectures == ("amd64", "arm64")
    assert pool.operating_systems == ("linux",)
    assert pool.os_skus == ("Ubuntu",)
    assert pool.security_types == ("ConfidentialVM",)
    assert pool.node_image_versions == ("AKSUbuntu-2204gen2containerd-202410.27.0",)
    assert pool.sandboxing == ("true",)
    assert pool.streaming_enabled == ("true",)
    assert pool.min_kubelet_version == "v1.25.6"
    assert pool.taints == (Taint("dedicated", "gpu", "NoSchedule"),)
    assert "kubernetes.io/hostname" not in pool.common_labels
    assert "kubernetes.io/arch" not in pool.common_labels
    assert pool.common_labels[AKS + "os-sku"] == "Ubuntu"


def test_pool_facts_fall_back_to_node_info() -> None:
    node = Node("bare", {}, architecture="arm64", operating_system="linux", kubelet_version="junk")
    (pool,) = build_inventory([node]).pools
    assert pool.name == "bare"
    assert pool.architectures == ("arm64",)
    assert pool.operating_systems == ("linux",)
    assert pool.min_kubelet_version == ""
    assert pool.streaming_enabled == ()


def test_kubelet_minimum_compares_versions_not_strings() -> None:
    nodes = [
        Node("a", {"agentpool": "p"}, kubelet_version="v1.9.0"),
        Node("b", {"agentpool": "p"}, kubelet_version="v1.10.0"),
    ]
    assert build_inventory(nodes).pools[0].min_kubelet_version == "v1.9.0"


def test_inventory_groups_sorts_and_indexes() -> None:
    nodes = [_aks("b", 1), _aks("a", 0), _aks("b", 0), Node("standalone", {"x": "1"})]
    rcs = [RuntimeClass("kata-vm-isolation", "kata"), RuntimeClass("runc", "runc")]
    inventory = build_inventory(nodes, rcs, synced_at=123.0)
    assert [p.name for p in inventory.pools] == ["a", "b", "standalone"]
    assert [n.name for n in inventory.pools[1].nodes] == ["aks-b-0", "aks-b-1"]
    assert [n.name for n in inventory.nodes] == ["aks-a-0", "aks-b-0", "aks-b-1", "standalone"]
    assert set(inventory.runtime_classes) == {"kata-vm-isolation", "runc"}
    assert inventory.synced_at == 123.0
    assert "x" in inventory.label_keys
    assert AKS + "artifactstreaming-enabled" in inventory.label_keys


def test_inventory_from_api_skips_junk() -> None:
    inventory = inventory_from_api(
        [api_node("n1", {"agentpool": "p"}), {"metadata": {}}, "junk"],  # type: ignore[list-item]
        [{"metadata": {"name": "rc"}, "handler": "h"}, 7],  # type: ignore[list-item]
    )
    assert [n.name for n in inventory.nodes] == ["n1"]
    assert list(inventory.runtime_classes) == ["rc"]


def test_empty_inventory() -> None:
    inventory = build_inventory([])
    assert inventory.pools == ()
    assert inventory.label_keys == frozenset()
