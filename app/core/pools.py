"""Where a pod may land, as the evaluation core sees it.

The node-pool inventory (`app.core.nodes`) answers, for one pod spec, which node pools the pod can
be scheduled on and whether each can stream. This module holds only the shapes of that answer
and the interface, so the pure evaluation core does not depend on how nodes are watched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class Streaming(StrEnum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PoolFit:
    """One node pool the pod can land on. `reasons` say why it can't (or may not) stream,
    short enough for a warning: "arm64", "Confidential VM", "no streaming label"."""

    name: str
    streaming: Streaming
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Placement:
    """The pools a pod can land on. `known` is False when there is no node inventory (offline
    check without nodes, or the inventory has not synced): then nothing is said about pools."""

    known: bool
    pools: tuple[PoolFit, ...] = ()
    # The label selector that, added as a required node-affinity term, keeps the pod on pools
    # that stream (the steering option); None when steering is impossible or pointless.
    steer_label: tuple[str, str] | None = None
    # False when no node of the cluster carries the streaming label: streaming was never
    # enabled on any pool, so the pools' "unknown" is really "off everywhere".
    streaming_enabled: bool = True

    @property
    def non_streaming(self) -> tuple[PoolFit, ...]:
        return tuple(p for p in self.pools if p.streaming is Streaming.NO)

    @property
    def streaming_pools(self) -> tuple[PoolFit, ...]:
        return tuple(p for p in self.pools if p.streaming is Streaming.YES)


UNKNOWN_PLACEMENT = Placement(known=False)


class PlacementSource(Protocol):
    """Judges a pod spec against the current node pools. Pure and in-memory: no I/O per call."""

    def place(self, pod_spec: Mapping[str, Any]) -> Placement: ...


class NoInventory:
    """The placement source when no node inventory is available: pools are unknown."""

    def place(self, pod_spec: Mapping[str, Any]) -> Placement:
        return UNKNOWN_PLACEMENT
