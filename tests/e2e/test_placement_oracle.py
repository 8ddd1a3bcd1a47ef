"""kube-scheduler as the oracle for placement (hack/cluster.sh: real scheduler, KWOK nodes).

Random pod specs (nodeSelector, required node affinity with every operator, matchFields,
tolerations, the Pod Sandboxing runtime class) are drawn over the labels of the cluster's AKS
node pools. For each, the webhook's prediction is taken from the live inventory; then the pods
are created and the real scheduler decides:

- a pod predicted to fit some pools must be bound to a node of one of them;
- a pod predicted to fit no pool must stay Pending (the scheduler marks it Unschedulable).

The seed is fixed (override with STREAMGATE_ORACLE_SEED) so failures reproduce.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cluster.nodes import NodeWatcher
from app.cluster.reflector import ReflectorSettings
from app.core.nodes.model import Inventory
from app.core.pools import Placement

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("STREAMGATE_ORACLE_SEED", "20261127"))
MIN_SPECS, MIN_FIT, MIN_NONE = 40, 25, 8
BIND_TIMEOUT = 60.0
PENDING_FOR = 5.0  # seconds a pod predicted to fit nowhere must stay unbound
AKS = "kubernetes.azure.com/"
KEYS = [
    AKS + "agentpool",
    "agentpool",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "kubernetes.io/hostname",
    AKS + "os-sku",
    AKS + "security-type",
    AKS + "artifactstreaming-enabled",
    AKS + "kata-vm-isolation",
    AKS + "mode",
    "topology.kubernetes.io/zone",
]
OPERATORS = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
TOLERATIONS = [
    {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    {"key": "dedicated", "operator": "Exists"},
    {"key": "dedicated", "operator": "Equal", "value": "cpu"},
    {"operator": "Exists"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"},
]


@pytest.fixture(scope="module")
def watcher(cluster: Path) -> Iterator[NodeWatcher]:
    w = NodeWatcher.from_config(str(cluster), settings=ReflectorSettings(watch_timeout_seconds=10))
    w.start()
    assert w.wait_ready(15), w.last_error
    yield w
    w.stop()


@pytest.fixture
def namespace(kubectl: Any) -> Iterator[str]:
    name = f"streamgate-oracle-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        assert time.monotonic() < deadline, "no default ServiceAccount in the new namespace"
        time.sleep(0.2)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def universe(inventory: Inventory) -> dict[str, list[str]]:
    """Label key -> the values the cluster's nodes carry."""
    values: dict[str, set[str]] = {key: set() for key in KEYS}
    for node in inventory.nodes:
        for key in KEYS:
            if key in node.labels:
                values[key].add(node.labels[key])
    return {k: sorted(v) for k, v in values.items() if v}


def random_spec(
    rng: random.Random, labels: dict[str, list[str]], node_names: list[str]
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
        "terminationGracePeriodSeconds": 0,
    }
    keys = sorted(labels)

    def real_or_not(key: str) -> str:
        return rng.choice(labels[key]) if rng.random() < 0.85 else "nope"

    if rng.random() < 0.45:
        chosen = rng.sample(keys, rng.randint(1, 2))
        spec["nodeSelector"] = {key: real_or_not(key) for key in chosen}
    if rng.random() < 0.55:
        terms = []
        for _ in range(rng.randint(1, 2)):
            expressions = []
            for _ in range(rng.randint(1, 2)):
                operator = rng.choice(OPERATORS)
                if operator in ("Gt", "Lt"):
                    expressions.append(
                        {
                            "key": "topology.kubernetes.io/zone",
                            "operator": operator,
                            "values": [rng.choice(["0", "1"])],
                        }
                    )
                    continue
                key = rng.choice(keys)
                requirement: dict[str, Any] = {"key": key, "operator": operator}
                if operator in ("In", "NotIn"):
                    requirement["values"] = sorted(
                        {real_or_not(key) for _ in range(rng.randint(1, 3))}
                    )
                expressions.append(requirement)
            term: dict[str, Any] = {"matchExpressions": expressions}
            if rng.random() < 0.15:
                term["matchFields"] = [
                    {
                        "key": "metadata.name",
                        "operator": rng.choice(["In", "NotIn"]),
                        "values": [rng.choice(node_names)],
                    }
                ]
            terms.append(term)
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
            }
        }
    if rng.random() < 0.35:
        spec["tolerations"] = rng.sample(TOLERATIONS, rng.randint(1, 2))
    if rng.random() < 0.1:
        spec["runtimeClassName"] = "kata-vm-isolation"
    return spec  # fmt: skip


def generate(watcher: NodeWatcher) -> list[tuple[dict[str, Any], Placement]]:
    inventory = watcher.snapshot()
    labels = universe(inventory)
    node_names = [n.name for n in inventory.nodes]
    rng = random.Random(SEED)
    fit: list[tuple[dict[str, Any], Placement]] = []
    none: list[tuple[dict[str, Any], Placement]] = []
    for _ in range(2000):
        spec = random_spec(rng, labels, node_names)
        placement = watcher.place(spec)
        assert placement.known
        (fit if placement.pools else none).append((spec, placement))
        if len(fit) + len(none) >= MIN_SPECS and len(fit) >= MIN_FIT and len(none) >= MIN_NONE:
            break
    assert len(fit) >= MIN_FIT and len(none) >= MIN_NONE, "generator too lopsided"
    return fit + none


def test_scheduler_agrees_with_placement(
    watcher: NodeWatcher, kubectl: Any, namespace: str
) -> None:
    cases = generate(watcher)
    assert len(cases) >= 30
    names = [f"oracle-{i:03d}" for i in range(len(cases))]
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        for name, (spec, _) in zip(names, cases, strict=True)
    ]
    kubectl(
        "create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": pods})
    )
    created = time.monotonic()
    predicted = {name: placement for name, (_, placement) in zip(names, cases, strict=True)}
    expect_bound = {n for n, p in predicted.items() if p.pools}

    def current() -> dict[str, dict[str, Any]]:
        items = kubectl.json("get", "pods", "-n", namespace)["items"]
        return {pod["metadata"]["name"]: pod for pod in items}

    pods_now = current()
    while time.monotonic() - created < BIND_TIMEOUT:
        bound = {n for n, pod in pods_now.items() if pod["spec"].get("nodeName")}
        if expect_bound <= bound and time.monotonic() - created >= PENDING_FOR:
            break
        time.sleep(0.5)
        pods_now = current()

    inventory = watcher.snapshot()
    pool_of = {node.name: inventory.pool_name(node) for node in inventory.nodes}
    failures = []
    for name, placement in predicted.items():
        pod = pods_now[name]
        node = pod["spec"].get("nodeName")
        pools = [p.name for p in placement.pools]
        # What the webhook sees for a Pod CREATE (after the built-in admission plugins merged
        # the RuntimeClass and default tolerations; before binding set nodeName) must be
        # judged the same way.
        stored = {k: v for k, v in pod["spec"].items() if k != "nodeName"}
        again = [p.name for p in watcher.place(stored).pools]
        if again != pools:
            failures.append(f"{name}: stored spec predicted {again}, original {pools}")
        if pools and node is None:
            failures.append(f"{name}: predicted {pools}, but not bound: {pod['status']}")
        elif pools and pool_of.get(node) not in pools:
            failures.append(f"{name}: bound to {node} ({pool_of.get(node)}), predicted {pools}")
        elif not pools and node is not None:
            failures.append(f"{name}: predicted no pool, but bound to {node}")
        elif not pools:
            conditions = {c["type"]: c for c in pod["status"].get("conditions", [])}
            scheduled = conditions.get("PodScheduled", {})
            if scheduled.get("reason") != "Unschedulable":
                failures.append(f"{name}: predicted no pool; PodScheduled is {scheduled}")
    details = "\n".join(
        f"{f}\n    spec: {json.dumps(pods_now[f.split(':')[0]]['spec'])[:600]}" for f in failures
    )
    assert not failures, f"{len(failures)} of {len(cases)} disagree:\n{details}"
