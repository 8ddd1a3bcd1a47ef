"""Evaluate once per pod template: decisions kept beside the inputs they came from.

Most admissions repeat a few pod templates (every replica of a Deployment, every run of a
Job). `evaluate` is pure, so its decision for a workload depends only on what `signature`
captures (kind, owning controller, containers and their images, pull secrets), the mode, the
policy, the images' verdicts and the placement. An entry keeps the verdicts and placement it
was judged with; `DecisionMemo.get` hands the decision back only when the verdicts the caller
has now and the placement are the same ones, so a verdict that expires or changes, a node pool
that changes, or a policy reload all lead to a new evaluation. Nothing here is a guess.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from app.core.evaluate import Decision
from app.core.images import ImageRef
from app.core.policy import Mode, Policy
from app.core.pools import Placement
from app.core.verdicts import ImageVerdict
from app.core.workloads import Container, Workload

DEFAULT_SIZE = 2048
# What a tenant can make the memo hold is bounded in bytes too: a key whose images add up to
# more than MAX_KEY_CHARS is not memoised, and entries go oldest first past MAX_TOTAL_CHARS.
MAX_KEY_CHARS = 16 * 1024
MAX_TOTAL_CHARS = 8 * 1024 * 1024

Key = tuple[Hashable, ...]


@dataclass(frozen=True, slots=True)
class Judged:
    """One evaluation and its inputs: the images asked about, in order, with the verdicts
    they had, and the placement."""

    refs: tuple[ImageRef, ...]
    verdicts: tuple[ImageVerdict, ...]
    placement: Placement
    decision: Decision


def signature(workload: Workload, mode: Mode, context: Hashable = None) -> Key | None:
    """What `evaluate` reads from the workload (besides placement), as a hashable key; None
    when an image is neither a string nor missing (judged afresh every time). `context`: what
    else of the request it reads (whether a controller sent it, the policy notes)."""
    for c in workload.containers:
        if c.image is not None and type(c.image) is not str:
            return None
    controller = workload.controller_kind if workload.kind == "Pod" else None
    secrets = bool(workload.pod_spec.get("imagePullSecrets"))
    return (workload.kind, controller, mode, secrets, workload.containers, context)


class DecisionMemo:
    """A bounded map from `signature` to `Judged`, emptied when the policy object changes
    (a reload makes a new one). `size` 0 keeps nothing."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._entries: dict[Key, Judged] = {}
        self._weights: dict[Key, int] = {}
        self._total = 0
        self._policy: Policy | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self,
        key: Key,
        policy: Policy,
        verdicts: tuple[ImageVerdict | None, ...],
        placement: Placement,
    ) -> Decision | None:
        """The decision judged with exactly these verdicts (for `refs_for(key)`) and this
        placement under this policy, or None."""
        judged = self._entries.get(key) if policy is self._policy else None
        if judged is None or judged.verdicts != verdicts or judged.placement != placement:
            self.misses += 1
            return None
        self.hits += 1
        return judged.decision

    def refuse(self) -> None:
        """The caller judged anew after all (a hit it could not use): count it as a miss."""
        self.hits -= 1
        self.misses += 1

    def refs_for(self, key: Key, policy: Policy) -> tuple[ImageRef, ...] | None:
        """The images an earlier evaluation of `key` asked about, or None when unknown (a miss;
        `get` counts the rest)."""
        judged = self._entries.get(key) if policy is self._policy else None
        if judged is None:
            self.misses += 1
            return None
        return judged.refs

    def put(self, key: Key, policy: Policy, judged: Judged) -> None:
        if self._size <= 0:
            return
        weight = _weight(key, judged)
        if weight > MAX_KEY_CHARS:
            return
        if policy is not self._policy:
            self._entries.clear()
            self._weights.clear()
            self._total = 0
            self._policy = policy
        self._total -= self._weights.pop(key, 0)
        self._entries.pop(key, None)
        while self._entries and (
            len(self._entries) >= self._size or self._total + weight > MAX_TOTAL_CHARS
        ):
            # Oldest first: dicts keep insertion order; a template still in use comes back.
            oldest = next(iter(self._entries))
            del self._entries[oldest]
            self._total -= self._weights.pop(oldest)
        self._entries[key] = judged
        self._weights[key] = weight
        self._total += weight


def _weight(key: Key, judged: Judged) -> int:
    """Characters an entry holds that a tenant chose: its containers' names and images, the
    request context, and the decision's messages (which quote them)."""
    chars = 0
    for part in key:
        if isinstance(part, tuple):
            for item in part:
                if isinstance(item, Container):
                    chars += len(item.name) + (len(item.image) if type(item.image) is str else 0)
                else:
                    chars += len(str(item))
    chars += sum(len(p.message) for p in judged.decision.problems)
    return chars
