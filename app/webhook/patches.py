"""JSONPatch operations that add annotations (and, opt-in, a node-affinity term).

Paths come from the workload table (`app.core.workloads`), so every kind is patched where its
metadata and pod template live. Images are never touched: rewriting a tag into a digest would
switch streaming off. Shapes are checked with `isinstance(x, dict)` (see app.core.workloads).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from app.core.workloads import Workload, escape_pointer, pointer

Op = dict[str, Any]


def _get(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


# Pointers are the same few strings on every admission: escaped once.
@functools.lru_cache(maxsize=256)
def _annotations_path(meta: tuple[str, ...]) -> str:
    return pointer((*meta, "annotations"))


@functools.lru_cache(maxsize=1024)
def _annotation_path(meta: tuple[str, ...], key: str) -> str:
    return f"{_annotations_path(meta)}/{escape_pointer(key)}"


def _annotate(obj: Mapping[str, Any], meta: tuple[str, ...], values: Mapping[str, str]) -> list[Op]:
    metadata = _get(obj, meta)
    if not isinstance(metadata, dict):
        return [{"op": "add", "path": pointer(meta), "value": {"annotations": dict(values)}}]
    existing = metadata.get("annotations")
    if not isinstance(existing, dict):
        return [{"op": "add", "path": _annotations_path(meta), "value": dict(values)}]
    return [
        {"op": "add", "path": _annotation_path(meta, key), "value": value}
        for key, value in values.items()
        if existing.get(key) != value
    ]


def annotation_ops(workload: Workload, values: Mapping[str, str]) -> list[Op]:
    """Annotate the object and, for workloads, its pod template."""
    if not values:
        return []
    ops = _annotate(workload.obj, ("metadata",), values)
    template = workload.template_metadata_path
    if template is not None:
        ops += _annotate(workload.obj, template, values)
    return ops


_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


def steer_ops(workload: Workload, label: tuple[str, str]) -> list[Op]:
    """Require `label` on the node: added to every node-selector term (terms are OR'ed, so
    each must carry it); creates the affinity structure when absent."""
    key, value = label
    expr = {"key": key, "operator": "In", "values": [value]}
    spec = workload.spec_path
    affinity = _get(workload.obj, (*spec, "affinity"))
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, dict) else None
    required = node_affinity.get(_REQUIRED) if isinstance(node_affinity, dict) else None
    new_required = {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}
    if not isinstance(affinity, dict):
        return [
            {
                "op": "add",
                "path": pointer((*spec, "affinity")),
                "value": {"nodeAffinity": {_REQUIRED: new_required}},
            }
        ]
    if not isinstance(node_affinity, dict):
        return [
            {
                "op": "add",
                "path": pointer((*spec, "affinity", "nodeAffinity")),
                "value": {_REQUIRED: new_required},
            }
        ]
    base = (*spec, "affinity", "nodeAffinity", _REQUIRED)
    terms = required.get("nodeSelectorTerms") if isinstance(required, dict) else None
    if not isinstance(terms, list):
        return [{"op": "add", "path": pointer(base), "value": new_required}]
    ops: list[Op] = []
    for i, term in enumerate(terms):
        exprs = term.get("matchExpressions") if isinstance(term, dict) else None
        where = (*base, "nodeSelectorTerms", str(i), "matchExpressions")
        if isinstance(exprs, list):
            if expr not in exprs:
                ops.append({"op": "add", "path": pointer(where) + "/-", "value": expr})
        elif isinstance(term, dict):
            ops.append({"op": "add", "path": pointer(where), "value": [expr]})
    return ops
