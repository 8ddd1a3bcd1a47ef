"""app.core.nodes.selectors: kube-scheduler's hard node constraints, operator by operator."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.nodes.model import RuntimeClass, Taint, Toleration
from app.core.nodes.selectors import (
    Constraints,
    Term,
    constraints_from_pod_spec,
    labels_match,
    node_admits,
    requirement_matches,
    schedulable,
    tolerates,
    untolerated,
    with_runtime_class,
)

LABELS = {"zone": "1", "tier": "web", "gpus": "4", "neg": "-3", "word": "four", "empty": ""}


# ---- matchExpressions operators ------------------------------------------------------------

OPERATOR_CASES = [
    ("in-match", ("tier", "In", ("web", "db")), True),
    ("in-other-value", ("tier", "In", ("db",)), False),
    ("in-missing-label", ("absent", "In", ("x",)), False),
    ("in-empty-value", ("empty", "In", ("",)), True),
    ("notin-other", ("tier", "NotIn", ("db",)), True),
    ("notin-match", ("tier", "NotIn", ("web",)), False),
    ("notin-missing-label", ("absent", "NotIn", ("x",)), True),
    ("exists", ("tier", "Exists", ()), True),
    ("exists-empty-value", ("empty", "Exists", ()), True),
    ("exists-missing", ("absent", "Exists", ()), False),
    ("doesnotexist", ("absent", "DoesNotExist", ()), True),
    ("doesnotexist-present", ("tier", "DoesNotExist", ()), False),
    ("gt-true", ("gpus", "Gt", ("3",)), True),
    ("gt-equal", ("gpus", "Gt", ("4",)), False),
    ("gt-negative", ("neg", "Gt", ("-4",)), True),
    ("gt-plus-sign", ("gpus", "Gt", ("+3",)), True),
    ("gt-missing", ("absent", "Gt", ("0",)), False),
    ("gt-non-integer-label", ("word", "Gt", ("0",)), False),
    ("gt-empty-label", ("empty", "Gt", ("-1",)), False),
    ("lt-true", ("gpus", "Lt", ("5",)), True),
    ("lt-equal", ("gpus", "Lt", ("4",)), False),
    ("lt-negative", ("neg", "Lt", ("0",)), True),
    ("lt-missing", ("absent", "Lt", ("9",)), False),
]


@pytest.mark.parametrize(
    ("req", "expected"), [c[1:] for c in OPERATOR_CASES], ids=[c[0] for c in OPERATOR_CASES]
)
def test_requirement_operators(req: tuple[str, str, tuple[str, ...]], expected: bool) -> None:
    assert requirement_matches(req, LABELS) is expected


# ---- parsing terms: what the scheduler refuses matches nothing ---------------------------------


def affinity(*terms: Any) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


TERM_CASES = [
    ("in", {"matchExpressions": [expr("a", "In", "1")]}, Term((("a", "In", ("1",)),))),
    ("exists", {"matchExpressions": [expr("a", "Exists")]}, Term((("a", "Exists", ()),))),
    (
        "exists-null-values",
        {"matchExpressions": [{"key": "a", "operator": "Exists", "values": None}]},
        Term((("a", "Exists", ()),)),
    ),
    (
        "fields",
        {"matchFields": [expr("metadata.name", "In", "n1")]},
        Term((), (("metadata.name", "In", ("n1",)),)),
    ),
    (
        "both",
        {
            "matchExpressions": [expr("a", "DoesNotExist")],
            "matchFields": [expr("metadata.name", "NotIn", "n1")],
        },
        Term((("a", "DoesNotExist", ()),), (("metadata.name", "NotIn", ("n1",)),)),
    ),
    ("empty-term", {}, None),
    ("empty-lists", {"matchExpressions": [], "matchFields": []}, None),
    ("in-without-values", {"matchExpressions": [expr("a", "In")]}, None),
    ("notin-without-values", {"matchExpressions": [expr("a", "NotIn")]}, None),
    ("exists-with-values", {"matchExpressions": [expr("a", "Exists", "1")]}, None),
    ("doesnotexist-with-values", {"matchExpressions": [expr("a", "DoesNotExist", "1")]}, None),
    ("gt-two-values", {"matchExpressions": [expr("a", "Gt", "1", "2")]}, None),
    ("gt-not-integer", {"matchExpressions": [expr("a", "Gt", "x")]}, None),
    ("lt-overflow", {"matchExpressions": [expr("a", "Lt", "9223372036854775808")]}, None),
    ("unknown-operator", {"matchExpressions": [expr("a", "Like", "1")]}, None),
    ("lowercase-operator", {"matchExpressions": [expr("a", "in", "1")]}, None),
    ("fields-exists", {"matchFields": [expr("metadata.name", "Exists")]}, None),
    ("fields-two-values", {"matchFields": [expr("metadata.name", "In", "a", "b")]}, None),
    ("one-bad-requirement", {"matchExpressions": [expr("a", "In", "1"), expr("b", "In")]}, None),
    ("int-value", {"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}, None),
    (
        "values-not-list",
        {"matchExpressions": [{"key": "a", "operator": "In", "values": "1"}]},
        None,
    ),
    ("key-not-string", {"matchExpressions": [{"key": 1, "operator": "Exists"}]}, None),
    ("expressions-not-list", {"matchExpressions": {"key": "a"}}, None),
    ("requirement-not-map", {"matchExpressions": ["a=1"]}, None),
    ("term-not-map", "a=1", None),
]


@pytest.mark.parametrize(
    ("term", "expected"), [c[1:] for c in TERM_CASES], ids=[c[0] for c in TERM_CASES]
)
def test_term_parsing(term: Any, expected: Term | None) -> None:
    terms = constraints_from_pod_spec(affinity(term)).terms
    assert terms == ((expected,) if expected else ())


def test_an_invalid_term_does_not_spoil_the_others() -> None:
    spec = affinity(
        {"matchExpressions": [expr("a", "In")]}, {"matchExpressions": [expr("tier", "In", "web")]}
    )
    constraints = constraints_from_pod_spec(spec)
    assert constraints.terms == (Term((("tier", "In", ("web",)),)),)
    assert labels_match(constraints, LABELS, "n1")


# ---- nodeSelector + affinity + fields together --------------------------------------------------

MATCH_CASES = [
    ("no-constraints", {}, True),
    ("node-name", {"nodeName": "n1"}, True),
    ("other-node-name", {"nodeName": "n2"}, False),
    ("selector", {"nodeSelector": {"tier": "web", "zone": "1"}}, True),
    ("selector-one-wrong", {"nodeSelector": {"tier": "web", "zone": "2"}}, False),
    ("selector-missing-key", {"nodeSelector": {"absent": ""}}, False),
    ("selector-empty-value", {"nodeSelector": {"empty": ""}}, True),
    (
        "terms-ored",
        affinity(
            {"matchExpressions": [expr("tier", "In", "db")]},
            {"matchExpressions": [expr("zone", "In", "1")]},
        ),
        True,
    ),
    (
        "expressions-anded",
        affinity({"matchExpressions": [expr("tier", "In", "web"), expr("zone", "In", "2")]}),
        False,
    ),
    ("empty-terms-list", affinity(), False),
    ("only-empty-term", affinity({}), False),
    ("fields-name-in", affinity({"matchFields": [expr("metadata.name", "In", "n1")]}), True),
    ("fields-name-in-other", affinity({"matchFields": [expr("metadata.name", "In", "n2")]}), False),
    ("fields-name-notin", affinity({"matchFields": [expr("metadata.name", "NotIn", "n2")]}), True),
    (
        "fields-name-notin-self",
        affinity({"matchFields": [expr("metadata.name", "NotIn", "n1")]}),
        False,
    ),
    ("fields-unknown-in", affinity({"matchFields": [expr("spec.podCIDR", "In", "x")]}), False),
    ("fields-unknown-notin", affinity({"matchFields": [expr("spec.podCIDR", "NotIn", "x")]}), True),
    (
        "fields-and-expressions",
        affinity(
            {
                "matchExpressions": [expr("tier", "In", "web")],
                "matchFields": [expr("metadata.name", "In", "n2")],
            }
        ),
        False,
    ),
    (
        "selector-and-affinity",
        {
            "nodeSelector": {"tier": "db"},
            **affinity({"matchExpressions": [expr("zone", "Exists")]}),
        },
        False,
    ),
    (
        "required-null",
        {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": None}}},
        True,
    ),
    (
        "required-without-terms",
        {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}},
        False,
    ),
    (
        "terms-not-list",
        {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "x"}
                }
            }
        },
        False,
    ),
    (
        "preferred-only",
        {
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 1,
                            "preference": {"matchExpressions": [expr("tier", "In", "db")]},
                        }
                    ]
                }
            }
        },
        True,
    ),
    (
        "pod-affinity-ignored",
        {
            "affinity": {
                "podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone"}]
                }
            }
        },
        True,
    ),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in MATCH_CASES], ids=[c[0] for c in MATCH_CASES]
)
def test_labels_match(spec: dict[str, Any], expected: bool) -> None:
    assert labels_match(constraints_from_pod_spec(spec), LABELS, "n1") is expected


# ---- malformed specs: never raise ---------------------------------------------------------------

MALFORMED: list[tuple[str, Any, Constraints]] = [
    ("spec-none", None, Constraints()),
    ("spec-list", [1, 2], Constraints()),
    ("spec-str", "junk", Constraints()),
    ("node-name-int", {"nodeName": 5}, Constraints()),
    ("node-name-empty", {"nodeName": ""}, Constraints()),
    ("selector-list", {"nodeSelector": ["a=b"]}, Constraints()),
    ("selector-null", {"nodeSelector": None}, Constraints()),
    ("selector-int-value", {"nodeSelector": {"a": 1}}, Constraints(impossible=True)),
    ("selector-null-value", {"nodeSelector": {"a": None}}, Constraints(impossible=True)),
    ("affinity-str", {"affinity": "x"}, Constraints()),
    ("node-affinity-list", {"affinity": {"nodeAffinity": []}}, Constraints()),
    (
        "required-list",
        {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}},
        Constraints(),
    ),
    ("tolerations-map", {"tolerations": {"key": "a"}}, Constraints()),
    ("toleration-junk", {"tolerations": ["a", None, {"key": 3}]}, Constraints()),
    ("runtime-class-int", {"runtimeClassName": 3}, Constraints()),
    ("runtime-class-empty", {"runtimeClassName": ""}, Constraints()),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_specs(spec: Any, expected: Constraints) -> None:
    assert constraints_from_pod_spec(spec) == expected


def test_constraints_are_hashable_and_normalised() -> None:
    a = constraints_from_pod_spec(
        {
            "nodeSelector": {"b": "2", "a": "1"},
            "tolerations": [{"operator": "Exists"}, {"operator": "Exists"}],
        }
    )
    b = constraints_from_pod_spec(
        {"nodeSelector": {"a": "1", "b": "2"}, "tolerations": [{"operator": "Exists"}]}
    )
    assert a == b
    assert hash(a) == hash(b)


# ---- taints and tolerations --------------------------------------------------------------------

GPU = Taint("dedicated", "gpu", "NoSchedule")
TOLERATION_CASES = [
    ("equal-match", Toleration("dedicated", "Equal", "gpu", "NoSchedule"), GPU, True),
    ("empty-operator-is-equal", Toleration("dedicated", "", "gpu", "NoSchedule"), GPU, True),
    ("equal-other-value", Toleration("dedicated", "Equal", "cpu", "NoSchedule"), GPU, False),
    ("equal-empty-value", Toleration("dedicated", "Equal", "", ""), GPU, False),
    ("exists-key", Toleration("dedicated", "Exists"), GPU, True),
    ("exists-other-key", Toleration("other", "Exists"), GPU, False),
    ("exists-all", Toleration(operator="Exists"), GPU, True),
    ("empty-key-equal", Toleration(value="gpu"), GPU, True),  # as ToleratesTaint does
    (
        "effect-empty-matches-all",
        Toleration("dedicated", "Exists", effect=""),
        Taint("dedicated", "gpu", "NoExecute"),
        True,
    ),
    ("effect-mismatch", Toleration("dedicated", "Exists", effect="NoExecute"), GPU, False),
    ("effect-match", Toleration("dedicated", "Exists", effect="NoSchedule"), GPU, True),
    ("unknown-operator", Toleration("dedicated", "Gt", "1"), GPU, False),
    ("exists-all-effect-bound", Toleration(operator="Exists", effect="NoExecute"), GPU, False),
]


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [c[1:] for c in TOLERATION_CASES],
    ids=[c[0] for c in TOLERATION_CASES],
)
def test_tolerates(toleration: Toleration, taint: Taint, expected: bool) -> None:
    assert tolerates(toleration, taint) is expected


UNTOLERATED_CASES = [
    ("no-taints", (), (), None),
    ("noschedule", (), (GPU,), GPU),
    ("noexecute", (), (Taint("maint", "", "NoExecute"),), Taint("maint", "", "NoExecute")),
    ("prefer-noschedule-ignored", (), (Taint("soft", "", "PreferNoSchedule"),), None),
    ("tolerated", (Toleration("dedicated", "Exists"),), (GPU,), None),
    (
        "one-of-two",
        (Toleration("dedicated", "Exists"),),
        (GPU, Taint("maint", "", "NoExecute")),
        Taint("maint", "", "NoExecute"),
    ),
    ("both", (Toleration(operator="Exists"),), (GPU, Taint("maint", "", "NoExecute")), None),
    ("not-ready-by-default", (), (Taint("node.kubernetes.io/not-ready", "", "NoExecute"),), None),
    (
        "unreachable-by-default",
        (),
        (Taint("node.kubernetes.io/unreachable", "", "NoExecute"),),
        None,
    ),
    (
        "not-ready-noschedule",
        (),
        (Taint("node.kubernetes.io/not-ready", "", "NoSchedule"),),
        Taint("node.kubernetes.io/not-ready", "", "NoSchedule"),
    ),
]


@pytest.mark.parametrize(
    ("tolerations", "taints", "expected"),
    [c[1:] for c in UNTOLERATED_CASES],
    ids=[c[0] for c in UNTOLERATED_CASES],
)
def test_untolerated(
    tolerations: tuple[Toleration, ...], taints: tuple[Taint, ...], expected: Taint | None
) -> None:
    assert untolerated(tolerations, taints) == expected


@pytest.mark.parametrize(
    ("tolerations", "unschedulable", "expected"),
    [
        ((), False, True),
        ((), True, False),
        (
            (Toleration("node.kubernetes.io/unschedulable", "Exists", effect="NoSchedule"),),
            True,
            True,
        ),
        ((Toleration(operator="Exists"),), True, True),
        (
            (Toleration("node.kubernetes.io/unschedulable", "Exists", effect="NoExecute"),),
            True,
            False,
        ),
    ],
    ids=["schedulable", "cordoned", "tolerates-unschedulable", "tolerates-all", "wrong-effect"],
)
def test_schedulable(
    tolerations: tuple[Toleration, ...], unschedulable: bool, expected: bool
) -> None:
    assert schedulable(tolerations, unschedulable=unschedulable) is expected


# ---- runtime classes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "runtime_class", "selector", "tolerations", "impossible"),
    [
        ({}, RuntimeClass("rc", node_selector={"a": "1"}), (("a", "1"),), (), False),
        (
            {"nodeSelector": {"b": "2"}},
            RuntimeClass("rc", node_selector={"a": "1"}),
            (("a", "1"), ("b", "2")),
            (),
            False,
        ),
        (
            {"nodeSelector": {"a": "1"}},
            RuntimeClass("rc", node_selector={"a": "1"}),
            (("a", "1"),),
            (),
            False,
        ),
        (
            {"nodeSelector": {"a": "2"}},
            RuntimeClass("rc", node_selector={"a": "1"}),
            (("a", "2"),),
            (),
            True,
        ),
        (
            {"tolerations": [{"key": "x", "operator": "Exists"}]},
            RuntimeClass("rc", tolerations=(Toleration("y", "Exists"), Toleration("x", "Exists"))),
            (),
            (Toleration("x", "Exists"), Toleration("y", "Exists")),
            False,
        ),
    ],
    ids=["selector-added", "selectors-merged", "same-value", "conflict", "tolerations-appended"],
)
def test_with_runtime_class(
    spec: dict[str, Any],
    runtime_class: RuntimeClass,
    selector: tuple[tuple[str, str], ...],
    tolerations: tuple[Toleration, ...],
    impossible: bool,
) -> None:
    merged = with_runtime_class(constraints_from_pod_spec(spec), runtime_class)
    assert merged.impossible is impossible
    if not impossible:
        assert merged.node_selector == selector
        assert merged.tolerations == tolerations


NOEXEC = Taint("maint", "", "NoExecute")


@pytest.mark.parametrize(
    ("spec", "taints", "unschedulable", "expected"),
    [
        ({}, (GPU,), False, False),
        ({}, (), True, False),
        ({"nodeName": "n1"}, (GPU,), False, True),
        ({"nodeName": "n1"}, (), True, True),
        ({"nodeName": "n1"}, (NOEXEC,), False, False),
        (
            {"nodeName": "n1", "tolerations": [{"key": "maint", "operator": "Exists"}]},
            (NOEXEC,),
            False,
            True,
        ),
    ],
    ids=[
        "scheduler-noschedule",
        "scheduler-cordon",
        "kubelet-ignores-noschedule",
        "kubelet-ignores-cordon",
        "kubelet-checks-noexecute",
        "kubelet-noexecute-tolerated",
    ],
)
def test_node_admits(
    spec: dict[str, Any], taints: tuple[Taint, ...], unschedulable: bool, expected: bool
) -> None:
    constraints = constraints_from_pod_spec(spec)
    assert node_admits(constraints, taints, unschedulable=unschedulable) is expected
