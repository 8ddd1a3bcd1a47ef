"""app.core.nodes.placement: which pools a pod spec can land on, and whether they stream."""

from __future__ import annotations

import random
from typing import Any

import pytest

from app.core.nodes.model import Inventory, Node, RuntimeClass, Taint, Toleration, build_inventory
from app.core.nodes.placement import PlacementIndex, place
from app.core.nodes.rules import PoolRulesConfig, combine, judge_node
from app.core.nodes.selectors import (
    constraints_from_pod_spec,
    labels_match,
    node_admits,
    with_runtime_class,
)
from app.core.pools import Placement, PoolFit, Streaming

AKS = "kubernetes.azure.com/"
STREAM = AKS + "artifactstreaming-enabled"
KATA = AKS + "kata-vm-isolation"


def aks_node(pool: str, index: int = 0, *, drop: tuple[str, ...] = (), **extra: Any) -> Node:
    name = f"aks-{pool}-vmss{index:06d}"
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        AKS + "agentpool": pool,
        "agentpool": pool,
        AKS + "os-sku": "Ubuntu",
        AKS + "node-image-version": "AKSUbuntu-2204gen2containerd-202410.27.0",
        "topology.kubernetes.io/zone": f"eastus-{index % 3 + 1}",
        STREAM: "true",
    }
    labels.update(extra.pop("labels", {}))
    for key in drop:
        labels.pop(key, None)
    return Node(
        name,
        labels,
        taints=extra.pop("taints", ()),
        unschedulable=extra.pop("unschedulable", False),
        kubelet_version=extra.pop("kubelet", "v1.34.4"),
        architecture="amd64",
        operating_system="linux",
    )


NODES = [
    aks_node("streamub", 0),
    aks_node("streamub", 1),
    aks_node("streamazl", 0, labels={AKS + "os-sku": "AzureLinux", "gpus": "2"}),
    aks_node("arm", 0, labels={"kubernetes.io/arch": "arm64"}),
    aks_node("nostream", 0, drop=(STREAM,), labels={"gpus": "8"}),
    aks_node("cvm", 0, labels={AKS + "security-type": "ConfidentialVM"}),
    aks_node("sandbox", 0, labels={KATA: "true"}),
    aks_node("oldkube", 0, kubelet="v1.25.6"),
    aks_node("tainted", 0, taints=(Taint("dedicated", "gpu", "NoSchedule"),)),
    aks_node("noexec", 0, taints=(Taint("maintenance", "true", "NoExecute"),)),
    aks_node("soft", 0, taints=(Taint("spot", "true", "PreferNoSchedule"),)),
    aks_node("notready", 0, taints=(Taint("node.kubernetes.io/not-ready", "", "NoExecute"),)),
    aks_node("cordoned", 0, unschedulable=True),
    # half: one cordoned streaming node, one schedulable node without streaming
    aks_node("half", 0, unschedulable=True),
    aks_node("half", 1, drop=(STREAM,)),
    aks_node("win", 0, drop=(STREAM,), labels={"kubernetes.io/os": "windows"}),
]
RUNTIME_CLASSES = [
    RuntimeClass("kata-vm-isolation", "kata", node_selector={KATA: "true"}),
    RuntimeClass(
        "gpu",
        "runc",
        node_selector={"agentpool": "tainted"},
        tolerations=(Toleration("dedicated", "Equal", "gpu", "NoSchedule"),),
    ),
    RuntimeClass("sandboxed-by-handler", "kata-mshv-vm-isolation"),
    RuntimeClass("plain", "runc"),
]
INVENTORY = build_inventory(NODES, RUNTIME_CLASSES)
INDEX = PlacementIndex(INVENTORY)

# schedulable without tolerations: everything but tainted, noexec, cordoned
DEFAULT_POOLS = [
    "arm",
    "cvm",
    "half",
    "nostream",
    "notready",
    "oldkube",
    "sandbox",
    "soft",
    "streamazl",
    "streamub",
    "win",
]
ALL_POOLS = sorted({*DEFAULT_POOLS, "tainted", "noexec", "cordoned"})


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


def names(placement: Placement) -> list[str]:
    return [p.name for p in placement.pools]


PLACEMENT_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no-constraints", {}, DEFAULT_POOLS),
    ("node-name", {"nodeName": "aks-arm-vmss000000"}, ["arm"]),
    # nodeName skips the scheduler: the kubelet checks NoExecute taints only, not the cordon
    ("node-name-noschedule-taint", {"nodeName": "aks-tainted-vmss000000"}, ["tainted"]),
    ("node-name-noexecute-taint", {"nodeName": "aks-noexec-vmss000000"}, []),
    (
        "node-name-noexecute-tolerated",
        {
            "nodeName": "aks-noexec-vmss000000",
            "tolerations": [{"key": "maintenance", "operator": "Exists"}],
        },
        ["noexec"],
    ),
    ("node-name-cordoned", {"nodeName": "aks-cordoned-vmss000000"}, ["cordoned"]),
    (
        "node-name-and-selector",
        {"nodeName": "aks-arm-vmss000000", "nodeSelector": {"agentpool": "win"}},
        [],
    ),
    ("node-name-unknown", {"nodeName": "nope"}, []),
    ("selector", {"nodeSelector": {"kubernetes.io/arch": "arm64"}}, ["arm"]),
    (
        "selector-hostname",
        {"nodeSelector": {"kubernetes.io/hostname": "aks-streamub-vmss000001"}},
        ["streamub"],
    ),
    ("selector-no-match", {"nodeSelector": {"agentpool": "missing"}}, []),
    (
        "in",
        affinity({"matchExpressions": [expr("agentpool", "In", "arm", "cvm", "tainted")]}),
        ["arm", "cvm"],
    ),
    (
        "notin",
        affinity({"matchExpressions": [expr("kubernetes.io/os", "NotIn", "linux")]}),
        ["win"],
    ),
    ("exists", affinity({"matchExpressions": [expr("gpus", "Exists")]}), ["nostream", "streamazl"]),
    (
        "doesnotexist",
        affinity({"matchExpressions": [expr(STREAM, "DoesNotExist")]}),
        ["half", "nostream", "win"],
    ),
    ("gt", affinity({"matchExpressions": [expr("gpus", "Gt", "4")]}), ["nostream"]),
    ("lt", affinity({"matchExpressions": [expr("gpus", "Lt", "4")]}), ["streamazl"]),
    (
        "terms-ored",
        affinity(
            {"matchExpressions": [expr("agentpool", "In", "arm")]},
            {"matchExpressions": [expr("agentpool", "In", "win")]},
        ),
        ["arm", "win"],
    ),
    (
        "expressions-anded",
        affinity(
            {
                "matchExpressions": [
                    expr("agentpool", "In", "arm", "win"),
                    expr("kubernetes.io/os", "In", "linux"),
                ]
            }
        ),
        ["arm"],
    ),
    ("empty-terms", affinity(), []),
    (
        "fields-name",
        affinity({"matchFields": [expr("metadata.name", "In", "aks-cvm-vmss000000")]}),
        ["cvm"],
    ),
    (
        "fields-notin",
        {**affinity({"matchFields": [expr("metadata.name", "NotIn", "aks-cvm-vmss000000")]})},
        [p for p in DEFAULT_POOLS if p != "cvm"],
    ),
    (
        "hostname-notin",
        affinity(
            {
                "matchExpressions": [
                    expr("kubernetes.io/hostname", "NotIn", "aks-streamub-vmss000000")
                ]
            }
        ),
        DEFAULT_POOLS,
    ),
    (
        "hostname-in-two",
        affinity(
            {
                "matchExpressions": [
                    expr(
                        "kubernetes.io/hostname",
                        "In",
                        "aks-streamub-vmss000000",
                        "aks-win-vmss000000",
                    )
                ]
            }
        ),
        ["streamub", "win"],
    ),
    (
        "daemonset-style",
        affinity({"matchFields": [expr("metadata.name", "In", "aks-tainted-vmss000000")]})
        | {"tolerations": [{"operator": "Exists"}]},
        ["tainted"],
    ),
    (
        "toleration-equal",
        {
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
            ]
        },
        sorted([*DEFAULT_POOLS, "tainted"]),
    ),
    (
        "toleration-wrong-value",
        {"tolerations": [{"key": "dedicated", "value": "cpu"}]},
        DEFAULT_POOLS,
    ),
    (
        "toleration-exists-key",
        {"tolerations": [{"key": "maintenance", "operator": "Exists"}]},
        sorted([*DEFAULT_POOLS, "noexec"]),
    ),
    (
        "toleration-wrong-effect",
        {"tolerations": [{"key": "maintenance", "operator": "Exists", "effect": "NoSchedule"}]},
        DEFAULT_POOLS,
    ),
    ("tolerate-everything", {"tolerations": [{"operator": "Exists"}]}, ALL_POOLS),
    (
        "tolerate-unschedulable",
        {
            "tolerations": [
                {
                    "key": "node.kubernetes.io/unschedulable",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                }
            ]
        },
        sorted([*DEFAULT_POOLS, "cordoned"]),
    ),
    ("runtime-class-selector", {"runtimeClassName": "kata-vm-isolation"}, ["sandbox"]),
    ("runtime-class-tolerations", {"runtimeClassName": "gpu"}, ["tainted"]),
    (
        "runtime-class-conflict",
        {"runtimeClassName": "gpu", "nodeSelector": {"agentpool": "arm"}},
        [],
    ),
    ("runtime-class-missing", {"runtimeClassName": "nope"}, []),
    (
        "runtime-class-plain",
        {"runtimeClassName": "plain", "nodeSelector": {"agentpool": "win"}},
        ["win"],
    ),
    ("impossible-selector", {"nodeSelector": {"agentpool": 3}}, []),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in PLACEMENT_CASES], ids=[c[0] for c in PLACEMENT_CASES]
)
def test_placement(spec: dict[str, Any], expected: list[str]) -> None:
    placement = INDEX.place(spec)
    assert placement.known
    assert names(placement) == sorted(expected)


def fit(name: str, placement: Placement) -> PoolFit:
    return next(p for p in placement.pools if p.name == name)


def test_pools_carry_their_reasons() -> None:
    placement = INDEX.place({"tolerations": [{"operator": "Exists"}]})
    assert fit("streamub", placement) == PoolFit("streamub", Streaming.YES)
    assert fit("arm", placement) == PoolFit("arm", Streaming.NO, ("arm64",))
    assert fit("cvm", placement).reasons == ("Confidential VM",)
    assert fit("sandbox", placement).reasons == ("Pod Sandboxing",)
    assert fit("oldkube", placement).reasons == ("kubelet v1.25.6 < 1.26",)
    assert fit("nostream", placement).reasons == ("streaming not enabled",)
    assert fit("win", placement).reasons == ("windows", "streaming not enabled")
    assert placement.non_streaming and placement.streaming_pools


def test_a_pool_is_judged_on_the_nodes_the_pod_can_use() -> None:
    # in "half", the streaming node is cordoned: only the node without streaming is usable
    assert fit("half", INDEX.place({})).streaming is Streaming.NO
    tolerant = INDEX.place(
        {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}
    )
    assert fit("half", tolerant) == PoolFit("half", Streaming.NO, ("streaming not enabled",))
    only_streaming = INDEX.place(
        {
            "nodeSelector": {"agentpool": "half", STREAM: "true"},
            "tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}],
        }
    )
    assert only_streaming.pools == (PoolFit("half", Streaming.YES),)


def test_sandbox_runtime_class_is_a_reason_on_every_pool() -> None:
    placement = INDEX.place({"runtimeClassName": "kata-vm-isolation"})
    assert placement.pools == (
        PoolFit("sandbox", Streaming.NO, ("Pod Sandboxing", "Pod Sandboxing runtime class")),
    )
    by_handler = INDEX.place(
        {"runtimeClassName": "sandboxed-by-handler", "nodeSelector": {"agentpool": "streamub"}}
    )
    assert by_handler.pools == (
        PoolFit("streamub", Streaming.NO, ("Pod Sandboxing runtime class",)),
    )
    assert by_handler.steer_label is None


def test_no_streaming_label_anywhere_is_unknown() -> None:
    nodes = [
        aks_node("a", 0, drop=(STREAM,)),
        aks_node("b", 0, drop=(STREAM,), labels={"kubernetes.io/arch": "arm64"}),
    ]
    placement = place({}, build_inventory(nodes))
    assert placement.pools == (
        PoolFit("a", Streaming.UNKNOWN, ("no streaming label in cluster",)),
        PoolFit("b", Streaming.NO, ("arm64",)),
    )
    assert placement.steer_label is None


# ---- steering -----------------------------------------------------------------------------------

STEER = (STREAM, "true")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"nodeSelector": {"agentpool": "streamub"}}, None),  # all stream: pointless
        (affinity({"matchExpressions": [expr("agentpool", "In", "streamub", "nostream")]}), STEER),
        (
            affinity(
                {"matchExpressions": [expr("agentpool", "In", "streamub", "win", "nostream")]}
            ),
            STEER,
        ),
        # arm carries the label too: requiring it would not keep the pod off arm
        (affinity({"matchExpressions": [expr("agentpool", "In", "streamub", "arm")]}), None),
        (
            affinity({"matchExpressions": [expr("agentpool", "In", "nostream", "win")]}),
            None,
        ),  # nothing would remain
        ({"nodeSelector": {"agentpool": "nope"}}, None),
        # "half": its schedulable node lacks the label, so requiring it drops the pool
        (affinity({"matchExpressions": [expr("agentpool", "In", "streamub", "half")]}), STEER),
    ],
    ids=[
        "all-streaming",
        "one-without-label",
        "two-without-label",
        "non-streaming-labelled",
        "none-streaming",
        "no-pools",
        "half-pool",
    ],
)
def test_steer_label(spec: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert INDEX.place(spec).steer_label == expected


def test_steering_off_when_streaming_rule_is_off() -> None:
    index = PlacementIndex(
        INVENTORY, PoolRulesConfig.model_validate({"streamingLabel": {"enabled": False}})
    )
    spec = affinity({"matchExpressions": [expr("agentpool", "In", "streamub", "win")]})
    assert index.place(spec).steer_label is None


# ---- robustness ---------------------------------------------------------------------------------


def _junk(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [
        None,
        0,
        -1,
        3.5,
        True,
        "",
        "x",
        "In",
        "Exists",
        "NoSchedule",
        "metadata.name",
    ]
    kind = rng.randrange(4 if depth < 4 else 1)
    if kind == 0:
        return rng.choice(choices)
    if kind == 1:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(3))]
    keys = [
        "nodeName", "nodeSelector", "affinity", "nodeAffinity", "tolerations", "runtimeClassName",
        "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms", "matchExpressions",
        "matchFields", "key", "operator", "values", "effect", "value", "agentpool",
    ]  # fmt: skip
    return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_random_junk_never_raises() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        spec = _junk(rng)
        placement = INDEX.place(spec)
        assert placement.known


def test_an_empty_inventory_places_nowhere() -> None:
    placement = PlacementIndex(Inventory()).place({})
    assert placement == Placement(known=True)


def test_memoised_per_constraints() -> None:
    index = PlacementIndex(INVENTORY)
    first = index.place({"nodeSelector": {"agentpool": "arm"}, "containers": [{"image": "a"}]})
    second = index.place({"nodeSelector": {"agentpool": "arm"}, "containers": [{"image": "b"}]})
    assert first is second


# ---- differential: the grouped index equals a node-by-node evaluation ---------------------------


def reference(spec: Any, inventory: Inventory, rules: PoolRulesConfig) -> tuple[PoolFit, ...]:
    """Node by node, no grouping or narrowing: the definition `PlacementIndex` must match."""
    constraints = constraints_from_pod_spec(spec)
    extra = None
    if constraints.runtime_class is not None:
        rc = inventory.runtime_classes.get(constraints.runtime_class)
        if rc is None:
            return ()
        constraints = with_runtime_class(constraints, rc)
        if (
            rc.name in rules.sandboxing.runtime_classes
            or rc.handler in rules.sandboxing.runtime_classes
        ):
            extra = rules.sandboxing.runtime_class_reason
    seen = rules.streaming_label.key in inventory.label_keys
    fitting: dict[str, list[Any]] = {}
    for node in inventory.nodes:
        if labels_match(constraints, node.labels, node.name) and node_admits(
            constraints, node.taints, unschedulable=node.unschedulable
        ):
            pool = inventory.pool_name(node)
            fitting.setdefault(pool, []).append(judge_node(node, rules, streaming_label_seen=seen))
    out = []
    for pool in sorted(fitting):
        judgement = combine(fitting[pool])
        if extra:
            judgement = combine([judgement, type(judgement)(Streaming.NO, (extra,))])
        out.append(PoolFit(pool, judgement.streaming, judgement.reasons))
    return tuple(out)


def random_cluster(rng: random.Random, pools: int, per_pool: int) -> Inventory:
    nodes = []
    for p in range(pools):
        for i in range(per_pool):
            labels = {"tier": str(rng.randrange(4)), "team": rng.choice(["a", "b", "c"])}
            if rng.random() < 0.7:
                labels[STREAM] = "true"
            if rng.random() < 0.2:
                labels["kubernetes.io/arch"] = "arm64"
            taints: tuple[Taint, ...] = ()
            if rng.random() < 0.2:
                taints = (
                    Taint(
                        "dedicated",
                        rng.choice(["x", "y"]),
                        rng.choice(["NoSchedule", "NoExecute", "PreferNoSchedule"]),
                    ),
                )
            nodes.append(
                aks_node(
                    f"p{p}", i, labels=labels, taints=taints, unschedulable=rng.random() < 0.1,
                    kubelet=rng.choice(["v1.34.1", "v1.25.0"]),
                )
            )  # fmt: skip
    return build_inventory(nodes, RUNTIME_CLASSES)


def random_spec(rng: random.Random, inventory: Inventory) -> dict[str, Any]:
    node_names = [n.name for n in inventory.nodes]
    spec: dict[str, Any] = {}
    if rng.random() < 0.1:
        spec["nodeName"] = rng.choice(node_names)
    if rng.random() < 0.3:
        spec["nodeSelector"] = {"team": rng.choice("abc")}
    if rng.random() < 0.1:
        spec["nodeSelector"] = {"kubernetes.io/hostname": rng.choice(node_names)}
    if rng.random() < 0.5:
        terms = []
        for _ in range(rng.randrange(0, 3)):
            exprs = []
            for _ in range(rng.randrange(0, 3)):
                op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"])
                key = rng.choice(["tier", "team", STREAM, "kubernetes.io/hostname", "agentpool"])
                values = {"In": 2, "NotIn": 1, "Gt": 1, "Lt": 1}.get(op, 0)
                pool_values = [f"p{rng.randrange(6)}", rng.choice(node_names), rng.choice("abc")]
                vals = [
                    str(rng.randrange(4)) if op in ("Gt", "Lt") else rng.choice(pool_values)
                    for _ in range(values)
                ]
                exprs.append({"key": key, "operator": op, "values": vals})
            term: dict[str, Any] = {"matchExpressions": exprs}
            if rng.random() < 0.2:
                term["matchFields"] = [
                    {
                        "key": "metadata.name",
                        "operator": rng.choice(["In", "NotIn"]),
                        "values": [rng.choice(node_names)],
                    }
                ]
            terms.append(term)
        spec.update(affinity(*terms))
    if rng.random() < 0.4:
        spec["tolerations"] = [
            rng.choice(
                [
                    {"operator": "Exists"},
                    {"key": "dedicated", "operator": "Equal", "value": rng.choice("xy")},
                    {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"},
                ]
            )
        ]
    if rng.random() < 0.1:
        spec["runtimeClassName"] = rng.choice(["kata-vm-isolation", "gpu", "plain", "missing"])
    return spec


@pytest.mark.parametrize("seed", range(6))
def test_index_equals_node_by_node_reference(seed: int) -> None:
    rng = random.Random(seed)
    inventory = random_cluster(rng, pools=6, per_pool=5)
    rules = PoolRulesConfig()
    index = PlacementIndex(inventory, rules)
    for _ in range(300):
        spec = random_spec(rng, inventory)
        assert index.place(spec).pools == reference(spec, inventory, rules), spec


# ---- scale ---------------------------------------------------------------------------------------


def big_cluster(pools: int = 100, per_pool: int = 50) -> Inventory:
    nodes = []
    for p in range(pools):
        for i in range(per_pool):
            labels = {
                "team": f"t{p % 7}",
                "tier": str(p % 5),
                "node.kubernetes.io/instance-type": "Standard_D4s_v5",
                **{f"extra.example.com/l{k}": f"v{p % 4}" for k in range(8)},
            }
            if p % 10 == 0:
                labels["kubernetes.io/arch"] = "arm64"
            taints = (Taint("dedicated", f"t{p % 7}", "NoSchedule"),) if p % 4 == 0 else ()
            nodes.append(aks_node(f"pool{p:03d}", i, labels=labels, taints=taints))
    return build_inventory(nodes)


def test_5000_nodes_100_pools_answer_as_the_reference() -> None:
    """At scale the index answers what checking every node would. Its speed is the
    benchmark's (`make bench`, scale of state; docs/node-pools.md), not a timed test's."""
    inventory = big_cluster()
    rules = PoolRulesConfig()
    index = PlacementIndex(inventory, rules)
    rng = random.Random(1)
    specs: list[dict[str, Any]] = [
        {"nodeSelector": {"team": f"t{rng.randrange(7)}"}},
        {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "t0"}]},
        affinity(
            {
                "matchExpressions": [
                    expr("tier", "Gt", "1"),
                    expr("kubernetes.io/arch", "In", "amd64"),
                ]
            }
        ),
        {"nodeSelector": {"kubernetes.io/hostname": "aks-pool005-vmss000007"}},
        {},
    ]
    for spec in specs:
        assert index.place(spec).pools == reference(spec, inventory, rules), spec
    assert len(index.place({}).pools) == sum(1 for p in range(100) if p % 4)  # untainted ones


def test_repeated_scheduling_fields_answer_from_the_memo() -> None:
    index = PlacementIndex(INVENTORY)
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "containers": [{"name": "a", "image": "x"}],
    }
    first = index.place(spec)
    other_template = {**spec, "containers": [{"name": "b", "image": "y"}], "volumes": []}
    assert index.place(other_template) is first  # only the scheduling fields count
    changed = {**spec, "nodeSelector": {"kubernetes.io/arch": "arm64"}}
    assert [p.name for p in index.place(changed).pools] == [
        p.name for p in PlacementIndex(INVENTORY).place(changed).pools
    ]
    assert index.place(changed) is not first
    # values that are not plain JSON skip the memo and are still judged
    odd = {**spec, "nodeName": object()}
    assert index.place(odd).known


def test_a_cluster_without_the_streaming_label_says_streaming_is_off_everywhere() -> None:
    from app.cli.poolreport import pool_table

    nodes = [aks_node("user1", 0, drop=(STREAM,)), aks_node("user2", 0, drop=(STREAM,))]
    index = PlacementIndex(build_inventory(nodes, []))
    placement = index.place({"containers": [{"name": "a", "image": "x"}]})
    assert placement.pools and not placement.streaming_enabled
    assert {p.streaming for p in placement.pools} == {Streaming.UNKNOWN}
    table = pool_table(index)
    assert table.splitlines()[-1].startswith(
        "no node pool in this cluster has artifact streaming enabled; enable it: "
        "az aks nodepool update"
    )
    labelled = PlacementIndex(build_inventory([aks_node("user1", 0)], []))
    assert labelled.place({}).streaming_enabled
    assert "no node pool" not in pool_table(labelled)


def test_a_huge_node_selector_is_judged_but_never_memoised() -> None:
    index = PlacementIndex(INVENTORY)
    selector = {f"label-{i}": "x" * 50 for i in range(40)}  # > 1 KiB of scheduling fields
    for i in range(20):
        placement = index.place({"nodeSelector": {**selector, "n": str(i)}})
        assert placement.known and placement.pools == ()
    assert len(index._spec_memo) == 0
    assert index._memo.cache_info().currsize == 0
    index.place({"nodeSelector": {"kubernetes.io/arch": "arm64"}})
    assert len(index._spec_memo) == 1
