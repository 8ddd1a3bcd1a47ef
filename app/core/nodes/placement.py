"""Which node pools a pod can land on, and whether each can stream.

`PlacementIndex` is built once per inventory snapshot and then answers `place(pod_spec)` for
every admission, in memory. It implements `app.core.pools.PlacementSource`.

Speed: nodes are grouped by signature (pool, labels, taints, unschedulable, kubelet version,
nodeInfo arch/OS), so that 5,000 nodes in 100 pools are judged as a few hundred groups. Labels
whose value is the node's own name (`kubernetes.io/hostname`) are left out of the signature;
constraints that read those keys, or the node name (`nodeName`, `matchFields`), are judged per
node, narrowed first through a name/identity index where the constraint names the nodes. The
streaming judgement of each group is computed once per snapshot, and placements are memoised
per distinct `Constraints` in an LRU.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.nodes.model import Inventory, Node, Taint
from app.core.nodes.rules import (
    Judgement,
    PoolRulesConfig,
    combine,
    judge_node,
    sandbox_runtime_class,
)
from app.core.nodes.selectors import (
    IN,
    NAME_FIELD,
    Constraints,
    Term,
    constraints_from_pod_spec,
    label_keys,
    labels_match,
    node_admits,
    reads_names,
    with_runtime_class,
)
from app.core.pools import Placement, PoolFit, Streaming

logger = logging.getLogger(__name__)

# Everything `constraints_from_pod_spec` reads.
_SCHEDULING_FIELDS = ("nodeName", "nodeSelector", "affinity", "tolerations", "runtimeClassName")


def _scheduling_key(pod_spec: Mapping[str, Any]) -> bytes | None:
    """The pod spec's scheduling fields as JSON (equal bytes, equal fields); None when they are
    not plain JSON values (then placement is worked out without the memo)."""
    if not isinstance(pod_spec, Mapping):
        return None
    try:
        return orjson.dumps([pod_spec.get(f) for f in _SCHEDULING_FIELDS])
    except TypeError:
        return None


@dataclass(frozen=True, slots=True)
class _Group:
    """Nodes of one pool that the scheduler and the rules can't tell apart (but by name)."""

    index: int
    pool: str
    nodes: tuple[Node, ...]
    judgement: Judgement
    steer_match: bool  # carries the streaming label key=value
    profile: int  # index of its (taints, unschedulable) in PlacementIndex._profiles

    @property
    def labels(self) -> Mapping[str, str]:
        return self.nodes[0].labels


def _identity_keys(node: Node) -> frozenset[str]:
    return frozenset(k for k, v in node.labels.items() if v == node.name)


def _signature(node: Node, pool: str, identity: frozenset[str]) -> tuple[object, ...]:
    labels = frozenset((k, v) for k, v in node.labels.items() if k not in identity)
    return (
        pool,
        labels,
        node.taints,
        node.unschedulable,
        node.kubelet_version,
        node.architecture,
        node.operating_system,
    )


_MAX_MEMO = 16384
# Scheduling fields longer than this (as JSON) are judged without memoising: 16,384 memo
# entries of at most 1 KiB keep the memos within ~16 MiB whatever pods a tenant sends.
_MAX_KEY_BYTES = 1024


class PlacementIndex:
    """Placement over one inventory snapshot under one rules configuration. Thread-safe: it
    is immutable but for its memos."""

    def __init__(self, inventory: Inventory, rules: PoolRulesConfig | None = None) -> None:
        self._inventory = inventory
        self._rules = rules or PoolRulesConfig()
        label = self._rules.streaming_label
        streaming_seen = label.key in inventory.label_keys
        self._can_steer = label.enabled and streaming_seen
        self.streaming_enabled = streaming_seen or not label.enabled

        members: dict[tuple[object, ...], list[Node]] = {}
        identity: set[str] = set()
        for node in inventory.nodes:
            own = _identity_keys(node)
            identity |= own
            members.setdefault(_signature(node, inventory.pool_name(node), own), []).append(node)
        profiles: dict[tuple[tuple[Taint, ...], bool], int] = {}
        groups = []
        for index, (signature, nodes) in enumerate(members.items()):
            first = nodes[0]
            profile = profiles.setdefault((first.taints, first.unschedulable), len(profiles))
            judgement = judge_node(first, self._rules, streaming_label_seen=streaming_seen)
            steer_match = first.labels.get(label.key) == label.value
            groups.append(
                _Group(index, str(signature[0]), tuple(nodes), judgement, steer_match, profile)
            )
        self._groups = tuple(groups)
        self._profiles = tuple(profiles)
        self._identity_keys = frozenset(identity)
        self._by_name = {n.name: (g, n) for g in self._groups for n in g.nodes}
        # (identity key, value) -> every node with that label value, for narrowing
        self._by_identity: dict[tuple[str, str], list[str]] = {}
        for node in inventory.nodes:
            for key in self._identity_keys.intersection(node.labels):
                self._by_identity.setdefault((key, node.labels[key]), []).append(node.name)
        self._pool_order = {p.name: i for i, p in enumerate(inventory.pools)}
        # Memos keyed by group indices: distinct constraints often select the same groups.
        self._fit_memo: dict[tuple[str, tuple[int, ...], str | None], PoolFit] = {}
        self._result_memo: dict[tuple[tuple[int, ...], str | None], Placement] = {}
        self._memo = functools.lru_cache(maxsize=self._rules.placement_cache_size)(self._place)
        # The pod spec's scheduling fields as JSON -> placement: most admissions repeat a few
        # pod templates, and this skips normalising them into Constraints (~8 µs) each time.
        self._spec_memo: dict[bytes, Placement] = {}

    @property
    def inventory(self) -> Inventory:
        return self._inventory

    @property
    def rules(self) -> PoolRulesConfig:
        return self._rules

    @property
    def group_count(self) -> int:
        return len(self._groups)

    def place(self, pod_spec: Mapping[str, Any]) -> Placement:
        """The pools `pod_spec` can be scheduled on (see module doc). Never raises."""
        try:
            key = _scheduling_key(pod_spec)
            if key is not None and len(key) > _MAX_KEY_BYTES:
                # A tenant's huge nodeSelector or affinity: judged, never memoised.
                return self._place(constraints_from_pod_spec(pod_spec))
            placement = self._spec_memo.get(key) if key is not None else None
            if placement is None:
                placement = self._memo(constraints_from_pod_spec(pod_spec))
                if key is not None:
                    if len(self._spec_memo) >= _MAX_MEMO:
                        self._spec_memo.clear()
                    self._spec_memo[key] = placement
            return placement
        except Exception:  # a bug here must not fail an admission
            logger.exception("placement failed; reporting pools as unknown")
            return Placement(known=False)

    def pool_status(self) -> tuple[PoolFit, ...]:
        """Every pool with its streaming judgement over all its nodes (for reports, `scan`)."""
        return self._fits(self._groups, extra=None)

    # ---- internals --------------------------------------------------------------------------

    def _place(self, constraints: Constraints) -> Placement:
        sandbox_reason: str | None = None
        if constraints.runtime_class is not None:
            runtime_class = self._inventory.runtime_classes.get(constraints.runtime_class)
            if runtime_class is None:  # the RuntimeClass admission plugin rejects such pods
                return Placement(known=True)
            constraints = with_runtime_class(constraints, runtime_class)
            if sandbox_runtime_class(self._rules, runtime_class.name, runtime_class.handler):
                sandbox_reason = self._rules.sandboxing.runtime_class_reason
        if constraints.impossible:
            return Placement(known=True)
        fitting = self._fitting_groups(constraints)
        key = (tuple([g.index for g in fitting]), sandbox_reason)
        placement = self._result_memo.get(key)
        if placement is None:
            pools = self._fits(fitting, extra=sandbox_reason)
            labelled = {g.pool for g in fitting if g.steer_match}
            placement = Placement(
                known=True,
                pools=pools,
                steer_label=self._steer(pools, labelled),
                streaming_enabled=self.streaming_enabled or not pools,
            )
            if len(self._result_memo) >= _MAX_MEMO:
                self._result_memo.clear()
            self._result_memo[key] = placement
        return placement

    def _fits(self, groups: Iterable[_Group], *, extra: str | None) -> tuple[PoolFit, ...]:
        """One PoolFit per pool of `groups`, judged over those groups (memoised)."""
        by_pool: dict[str, list[_Group]] = {}
        for group in groups:
            by_pool.setdefault(group.pool, []).append(group)
        fits = []
        for name in sorted(by_pool, key=lambda p: (self._pool_order.get(p, 0), p)):
            key = (name, tuple(g.index for g in by_pool[name]), extra)
            fit = self._fit_memo.get(key)
            if fit is None:
                judgement = combine(g.judgement for g in by_pool[name])
                if extra is not None:
                    judgement = combine([judgement, Judgement(Streaming.NO, (extra,))])
                fit = PoolFit(name=name, streaming=judgement.streaming, reasons=judgement.reasons)
                if len(self._fit_memo) >= _MAX_MEMO:
                    self._fit_memo.clear()
                self._fit_memo[key] = fit
            fits.append(fit)
        return tuple(fits)

    def _steer(self, pools: tuple[PoolFit, ...], labelled: set[str]) -> tuple[str, str] | None:
        """The streaming label, when requiring it is worth it: some fit pools can't stream
        (or may not), requiring the label drops at least one of them, and keeps every fit pool
        that streams (and at least one)."""
        if not self._can_steer:
            return None
        streaming = {p.name for p in pools if p.streaming is Streaming.YES}
        dropped = {p.name for p in pools} - labelled
        if not streaming or not dropped or streaming & dropped:
            return None
        label = self._rules.streaming_label
        return (label.key, label.value)

    def _fitting_groups(self, constraints: Constraints) -> list[_Group]:
        admitted = [
            node_admits(constraints, taints, unschedulable=unschedulable)
            for taints, unschedulable in self._profiles
        ]
        keys = label_keys(constraints)
        if not reads_names(constraints) and not keys & self._identity_keys:
            if not constraints.node_selector and constraints.terms is None:
                return [g for g in self._groups if admitted[g.profile]]
            # Judge each distinct combination of the values of the keys read only once.
            ordered = sorted(keys)
            verdicts: dict[tuple[str | None, ...], bool] = {}
            fitting = []
            for group in self._groups:
                if not admitted[group.profile]:
                    continue
                labels = group.labels
                values = tuple([labels.get(k) for k in ordered])
                fits = verdicts.get(values)
                if fits is None:
                    fits = verdicts[values] = labels_match(constraints, labels, "")
                if fits:
                    fitting.append(group)
            return fitting
        # The constraints read node names or per-node labels: judge nodes one by one.
        candidates = self._candidates(constraints)
        by_group: dict[int, tuple[_Group, list[Node]]] = {}
        if candidates is None:
            by_group = {g.index: (g, list(g.nodes)) for g in self._groups}
        else:
            for name in candidates:
                group, node = self._by_name[name]
                by_group.setdefault(group.index, (group, []))[1].append(node)
        return [
            group
            for group, nodes in by_group.values()
            if admitted[group.profile]
            and any(labels_match(constraints, n.labels, n.name) for n in nodes)
        ]

    def _candidates(self, constraints: Constraints) -> list[str] | None:
        """The only node names that can match, when the constraints name them; else None."""
        names: set[str] | None = None
        if constraints.node_name is not None:
            names = {constraints.node_name}
        for key, value in constraints.node_selector:
            if key in self._identity_keys:
                named = set(self._by_identity.get((key, value), ()))
                names = named if names is None else names & named
        if constraints.terms is not None:
            per_term = [self._term_candidates(term) for term in constraints.terms]
            if all(t is not None for t in per_term):  # else a term can match unnamed nodes
                union = {n for t in per_term for n in t or ()}
                names = union if names is None else names & union
        if names is None:
            return None
        return sorted(n for n in names if n in self._by_name)

    def _term_candidates(self, term: Term) -> set[str] | None:
        names: set[str] | None = None
        for key, operator, values in term.fields:
            if key == NAME_FIELD and operator == IN:
                names = {values[0]} if names is None else names & {values[0]}
        for key, operator, values in term.expressions:
            if key in self._identity_keys and operator == IN:
                named = {n for v in values for n in self._by_identity.get((key, v), ())}
                names = named if names is None else names & named
        return names


def place(
    pod_spec: Mapping[str, Any], inventory: Inventory, rules: PoolRulesConfig | None = None
) -> Placement:
    """One-off placement (builds an index; keep a `PlacementIndex` to place many pods)."""
    return PlacementIndex(inventory, rules).place(pod_spec)
