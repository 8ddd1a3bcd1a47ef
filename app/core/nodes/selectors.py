"""kube-scheduler's hard node constraints, as pure functions over plain data.

A pod spec is normalised once into `Constraints` (hashable, so placements can be memoised per
distinct constraint set); the predicates then judge a node's labels, name and taints. They
follow k8s.io/component-helpers `scheduling/corev1/nodeaffinity` and the NodeAffinity,
TaintToleration and NodeUnschedulable filter plugins:

- `nodeSelector`: every key=value must be a label of the node.
- required node affinity: `nodeSelectorTerms` are OR'ed; inside a term `matchExpressions` and
  `matchFields` are AND'ed. A term that is empty, or that has an invalid requirement, matches
  no node; an empty list of terms matches no node.
- operators: In, NotIn (also true when the label is missing), Exists, DoesNotExist, Gt and Lt
  (label and value both base-10 integers). `matchFields` supports only In/NotIn with exactly
  one value; the only field a node has is `metadata.name`.
- taints with effect NoSchedule or NoExecute must each be tolerated; PreferNoSchedule is
  ignored. `spec.unschedulable` needs a toleration of `node.kubernetes.io/unschedulable`.
- `nodeName` bypasses the scheduler: the kubelet admits the pod when labels/affinity match
  and its NoExecute taints are tolerated (NoSchedule taints and the cordon don't apply).

Malformed input never raises. A field of the wrong type is no constraint when it is a container
(`nodeSelector` not a mapping, `affinity` not a mapping); a requirement or selector value of
the wrong type matches nothing (the apiserver would have rejected it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from app.core.nodes.model import RuntimeClass, Taint, Toleration, toleration_from_api

IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT = "In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"
NAME_FIELD = "metadata.name"
UNSCHEDULABLE_TAINT = Taint(key="node.kubernetes.io/unschedulable", effect="NoSchedule")
_FILTERED_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_KUBELET_EFFECTS = frozenset({"NoExecute"})
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_INT64 = (-(2**63), 2**63 - 1)

# The DefaultTolerationSeconds admission plugin gives every pod these (with a 300 s limit), so
# a pod template that lacks them still tolerates a node that is briefly not ready.
DEFAULT_TOLERATIONS = (
    Toleration(key="node.kubernetes.io/not-ready", operator="Exists", effect="NoExecute"),
    Toleration(key="node.kubernetes.io/unreachable", operator="Exists", effect="NoExecute"),
)

Requirement = tuple[str, str, tuple[str, ...]]  # key, operator, values


@dataclass(frozen=True, slots=True)
class Term:
    """One valid, non-empty node selector term."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()


@dataclass(frozen=True, slots=True)
class Constraints:
    """The hard scheduling constraints of one pod spec.

    `terms` is None without required node affinity; `()` when it is present but can match no
    node. `impossible` marks a spec that can fit no node at all (a malformed `nodeSelector`
    value, or a RuntimeClass selector that conflicts with the pod's).
    """

    node_name: str | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    terms: tuple[Term, ...] | None = None
    tolerations: tuple[Toleration, ...] = ()
    runtime_class: str | None = None
    impossible: bool = False


# ---- parsing ------------------------------------------------------------------------------


def _is_map(value: object) -> TypeGuard[Mapping[str, Any]]:
    # dict first: the ABC check of isinstance(..., Mapping) is slow on the admission path
    return type(value) is dict or isinstance(value, Mapping)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if _is_map(value) else {}


def _requirement(raw: object, *, fields: bool) -> Requirement | None:
    """A NodeSelectorRequirement -> (key, operator, values); None when the scheduler would
    reject it (which makes its whole term match nothing)."""
    if not _is_map(raw):
        return None
    key, operator, values = raw.get("key"), raw.get("operator"), raw.get("values")
    values = [] if values is None else values
    if not isinstance(key, str) or not isinstance(operator, str) or not isinstance(values, list):
        return None
    if not all(isinstance(v, str) for v in values):
        return None
    if fields:
        valid = operator in (IN, NOT_IN) and len(values) == 1
    elif operator in (IN, NOT_IN):
        valid = len(values) > 0
    elif operator in (EXISTS, DOES_NOT_EXIST):
        valid = not values
    elif operator in (GT, LT):
        valid = len(values) == 1 and _int64(values[0]) is not None
    else:
        valid = False
    return (key, operator, tuple(values)) if valid else None


def _term(raw: object) -> Term | None:
    """A NodeSelectorTerm -> Term; None when it matches nothing (empty, or invalid)."""
    if not _is_map(raw):
        return None
    parsed: list[tuple[Requirement, ...]] = []
    for name, fields in (("matchExpressions", False), ("matchFields", True)):
        items = raw.get(name)
        items = [] if items is None else items
        if not isinstance(items, list):
            return None
        reqs = [_requirement(item, fields=fields) for item in items]
        if any(r is None for r in reqs):
            return None
        parsed.append(tuple(r for r in reqs if r is not None))
    expressions, fields_ = parsed
    return Term(expressions, fields_) if expressions or fields_ else None


def _required_terms(affinity: object) -> tuple[Term, ...] | None:
    node_affinity = _mapping(_mapping(affinity).get("nodeAffinity"))
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if not _is_map(required):
        return None  # absent (or not even an object): no constraint
    raw_terms = required.get("nodeSelectorTerms")
    if not isinstance(raw_terms, list):
        return ()  # present but without terms: the scheduler matches no node
    terms = (_term(t) for t in raw_terms)
    return tuple(t for t in terms if t is not None)


def tolerations_from(raw: object) -> tuple[Toleration, ...]:
    """A list of toleration dicts -> Tolerations; malformed entries are dropped."""
    parsed = (toleration_from_api(t) for t in (raw if isinstance(raw, list) else ()))
    return tuple(t for t in parsed if t is not None)


def constraints_from_pod_spec(spec: object) -> Constraints:
    """Normalises a pod spec (a mapping; anything else is an empty spec) into Constraints."""
    spec = _mapping(spec)
    node_name = spec.get("nodeName")
    selector = _mapping(spec.get("nodeSelector"))
    runtime_class = spec.get("runtimeClassName")
    tolerations = tolerations_from(spec.get("tolerations"))
    return Constraints(
        node_name=node_name if isinstance(node_name, str) and node_name else None,
        node_selector=tuple(sorted((str(k), v) for k, v in selector.items() if isinstance(v, str))),
        terms=_required_terms(spec.get("affinity")),
        tolerations=tuple(dict.fromkeys(tolerations)),
        runtime_class=runtime_class if isinstance(runtime_class, str) and runtime_class else None,
        impossible=any(not isinstance(v, str) for v in selector.values()),
    )


def with_runtime_class(constraints: Constraints, runtime_class: RuntimeClass) -> Constraints:
    """Merges a RuntimeClass's `scheduling` as the RuntimeClass admission plugin does: its
    nodeSelector joins the pod's (a different value for the same key rejects the pod) and its
    tolerations are added."""
    selector = dict(constraints.node_selector)
    for key, value in runtime_class.node_selector.items():
        if selector.setdefault(key, value) != value:
            return replace(constraints, impossible=True)
    tolerations = dict.fromkeys((*constraints.tolerations, *runtime_class.tolerations))
    return replace(
        constraints, node_selector=tuple(sorted(selector.items())), tolerations=tuple(tolerations)
    )


# ---- matching -----------------------------------------------------------------------------


def _int64(text: str) -> int | None:
    if not _INTEGER.match(text):
        return None
    value = int(text)
    return value if _INT64[0] <= value <= _INT64[1] else None


def requirement_matches(req: Requirement, labels: Mapping[str, str]) -> bool:
    key, operator, values = req
    value = labels.get(key)
    if operator == IN:
        return value is not None and value in values
    if operator == NOT_IN:
        return value is None or value not in values
    if operator == EXISTS:
        return value is not None
    if operator == DOES_NOT_EXIST:
        return value is None
    if value is None:
        return False
    have, want = _int64(value), _int64(values[0])
    if have is None or want is None:
        return False
    return have > want if operator == GT else have < want


def term_matches(term: Term, labels: Mapping[str, str], name: str) -> bool:
    if not all(requirement_matches(r, labels) for r in term.expressions):
        return False
    node_fields = {NAME_FIELD: name}
    for key, operator, values in term.fields:
        equal = node_fields.get(key, "") == values[0]
        if equal != (operator == IN):
            return False
    return True


def labels_match(constraints: Constraints, labels: Mapping[str, str], name: str) -> bool:
    """nodeName, nodeSelector and required node affinity against one node's labels and name."""
    if constraints.impossible:
        return False
    if constraints.node_name is not None and constraints.node_name != name:
        return False
    if any(labels.get(k) != v for k, v in constraints.node_selector):
        return False
    terms = constraints.terms
    return terms is None or any(term_matches(t, labels, name) for t in terms)


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """v1.Toleration.ToleratesTaint."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator in ("", "Equal"):
        return toleration.value == taint.value
    return toleration.operator == "Exists"


def untolerated(
    tolerations: Iterable[Toleration],
    taints: Iterable[Taint],
    effects: frozenset[str] = _FILTERED_EFFECTS,
) -> Taint | None:
    """The first taint with one of `effects` (by default NoSchedule and NoExecute, as the
    scheduler filters) that no toleration tolerates; None when all are tolerated."""
    tolerations = (*tuple(tolerations), *DEFAULT_TOLERATIONS)
    for taint in taints:
        if taint.effect in effects and not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


def schedulable(tolerations: tuple[Toleration, ...], *, unschedulable: bool) -> bool:
    """The NodeUnschedulable filter: a cordoned node takes only pods tolerating it."""
    return not unschedulable or any(tolerates(t, UNSCHEDULABLE_TAINT) for t in tolerations)


def node_admits(
    constraints: Constraints, taints: tuple[Taint, ...], *, unschedulable: bool
) -> bool:
    """Do the node's taints and cordon let the pod run there? A pod with `nodeName` skips the
    scheduler: only the kubelet's admission applies, which checks NoExecute taints alone and
    ignores the cordon."""
    if constraints.node_name is not None:
        return untolerated(constraints.tolerations, taints, _KUBELET_EFFECTS) is None
    return untolerated(constraints.tolerations, taints) is None and schedulable(
        constraints.tolerations, unschedulable=unschedulable
    )


def label_keys(constraints: Constraints) -> frozenset[str]:
    """The node label keys the constraints read."""
    keys = {k for k, _ in constraints.node_selector}
    for term in constraints.terms or ():
        keys.update(k for k, _, _ in term.expressions)
    return frozenset(keys)


def reads_names(constraints: Constraints) -> bool:
    """Do the constraints depend on the node's name (nodeName or matchFields)?"""
    return constraints.node_name is not None or any(t.fields for t in constraints.terms or ())
