"""Policy reports: what the webhook decided about each workload, as the objects Policy Reporter,
Kyverno's tools and `kubectl get policyreports` read.

    results = workload_results(subject, decision, policy, timestamp=now)   # 4 per workload
    docs = namespace_reports("shop", results)                              # PolicyReport dicts
    docs = namespace_reports("shop", results, api=OPENREPORTS)             # openreports Report

Pure: no clock (the caller passes `timestamp`), no Kubernetes client. `streamgate scan -o
policyreport` prints these objects; the schemas are those of the CRDs in Kyverno's module
(`wgpolicyk8s.io/v1alpha2` PolicyReport) and the openreports.io module (`v1alpha1` Report), which
tests/e2e/test_policyreports_e2e.py installs into a real apiserver and applies them against.

One result per workload and rule, the workload in the result's `resources`:

- `image-streamable` (notStreamable, onError, invalidImage, notAcr): pass when every ACR
  image has a streaming artifact;
- `pools-can-stream` (noStreamingPools, poolsCannotStream, poolsMayNotStream, noPool): pass
  when every node pool it fits can stream; skip when the pools are unknown;
- `digest-pin` (digestPinned): pass when its ACR images are pulled by tag;
- `pull-secrets` (imagePullSecrets): pass without imagePullSecrets;

and each is skip for a workload with no image from ACR.

A problem is `fail` when the policy's action for it is `deny` (whatever the namespace's mode:
the report says what the policy wants, the mode only what admission does about it), `warn`
when it is `warn`, `error` when the registry could not be asked (onError). Several problems
under one rule: the worst (fail > warn > error) with every message. A rule the policy switches
off (`ignore`) is `skip`, as is every rule of a workload streamgate does not judge (exempt,
mode off); a workload that can't be read is `error` for each rule.

One report per namespace, named `streamgate-<namespace>`; a namespace whose results would
pass `MAX_REPORT_BYTES` (etcd refuses objects past 1.5 MiB) is split into
`streamgate-<namespace>`, `-2`, `-3`, ..., each workload in the one its kind and name hash to
(`_shards`), in a fixed order within it (kind, name, rule): the same state always gives the
same objects, byte for byte, and one workload's change rewrites one of them.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.core import messages
from app.core.evaluate import ANNOTATION_POOLS, Decision
from app.core.policy import Action, Policy
from app.core.verdicts import Verdict
from app.core.workloads import KIND_ORDER

WGPOLICY = "wgpolicyk8s.io/v1alpha2"
OPENREPORTS = "openreports.io/v1alpha1"
KINDS = {WGPOLICY: "PolicyReport", OPENREPORTS: "Report"}

SOURCE = "streamgate"
POLICY = "artifact-streaming"
CATEGORY = "Artifact Streaming"
MANAGED_BY = {"app.kubernetes.io/managed-by": "streamgate"}
NAME_PREFIX = "streamgate-"
MAX_REPORT_BYTES = 1_000_000  # JSON bytes of one report: well under etcd's 1.5 MiB request
_ENVELOPE = 2048  # room kept for metadata and summary within max_bytes
SHARD_FILL = 0.6  # a split namespace's reports are about this full, so a few more fit

IMAGE_STREAMABLE = "image-streamable"
POOLS_CAN_STREAM = "pools-can-stream"
DIGEST_PIN = "digest-pin"
PULL_SECRETS = "pull-secrets"
RULES = (IMAGE_STREAMABLE, POOLS_CAN_STREAM, DIGEST_PIN, PULL_SECRETS)

# evaluate's problem rules -> the report's rules ("policyNote", about the policy itself, is in none)
_GROUP = {
    "notStreamable": IMAGE_STREAMABLE,
    "onError": IMAGE_STREAMABLE,
    "invalidImage": IMAGE_STREAMABLE,
    "notAcr": IMAGE_STREAMABLE,
    "noStreamingPools": POOLS_CAN_STREAM,
    "poolsCannotStream": POOLS_CAN_STREAM,
    "poolsMayNotStream": POOLS_CAN_STREAM,
    "noPool": POOLS_CAN_STREAM,
    "digestPinned": DIGEST_PIN,
    "imagePullSecrets": PULL_SECRETS,
}

API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "CronJob": "batch/v1",
    "Job": "batch/v1",
    "ReplicationController": "v1",
    "Pod": "v1",
}


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    ERROR = "error"
    SKIP = "skip"


_WORST = {Outcome.FAIL: 0, Outcome.WARN: 1, Outcome.ERROR: 2, Outcome.PASS: 3, Outcome.SKIP: 4}


@dataclass(frozen=True, slots=True)
class Subject:
    """The workload a result is about: its object reference."""

    kind: str
    namespace: str
    name: str
    uid: str = ""

    @property
    def api_version(self) -> str:
        return API_VERSIONS.get(self.kind, "v1")

    def ref(self) -> dict[str, str]:
        out = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
        }
        if self.uid:
            out["uid"] = self.uid
        return out

    @property
    def order(self) -> tuple[int, str, str]:
        return (_KIND_RANK.get(self.kind, len(KIND_ORDER)), self.kind, self.name)


_KIND_RANK = {kind: i for i, kind in enumerate(KIND_ORDER)}


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's result for one workload."""

    subject: Subject
    rule: str
    outcome: Outcome
    message: str
    timestamp: int = 0  # seconds since the epoch
    properties: Mapping[str, str] = field(default_factory=dict)

    def same(self, other: RuleResult) -> bool:
        """Equal but for the timestamp (a result that did not change keeps its first one)."""
        return (
            self.subject == other.subject
            and self.rule == other.rule
            and self.outcome is other.outcome
            and self.message == other.message
            and dict(self.properties) == dict(other.properties)
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "category": CATEGORY,
            "message": self.message,
            "policy": POLICY,
            "resources": [self.subject.ref()],
            "result": self.outcome.value,
            "rule": self.rule,
            "scored": True,
            "source": SOURCE,
            "timestamp": {"nanos": 0, "seconds": self.timestamp},
        }
        if self.properties:
            out["properties"] = dict(sorted(self.properties.items()))
        return out


def _action(rule: str, policy: Policy) -> Action:
    rules = policy.rules
    return {
        "notStreamable": rules.not_streamable,
        "invalidImage": rules.invalid_image,
        "notAcr": rules.not_acr,
        "noStreamingPools": rules.no_streaming_pools,
        "poolsCannotStream": rules.pools_cannot_stream,
        "poolsMayNotStream": rules.pools_may_not_stream,
        "digestPinned": rules.digest_pinned,
        "imagePullSecrets": rules.image_pull_secrets,
    }.get(rule, Action.WARN)  # noPool always warns; onError is an error whatever its action


def _outcome(rule: str, policy: Policy) -> Outcome:
    if rule == "onError":
        return Outcome.ERROR
    return Outcome.FAIL if _action(rule, policy) is Action.DENY else Outcome.WARN


def _switched_off(rule: str, policy: Policy) -> bool:
    """Whether the policy ignores every problem this report rule stands for."""
    r = policy.rules
    actions = {
        IMAGE_STREAMABLE: (r.not_streamable,),
        POOLS_CAN_STREAM: (r.no_streaming_pools, r.pools_cannot_stream, r.pools_may_not_stream),
        DIGEST_PIN: (r.digest_pinned,),
        PULL_SECRETS: (r.image_pull_secrets,),
    }[rule]
    return all(a is Action.IGNORE for a in actions)


def _no_problem(rule: str, decision: Decision, acr: int) -> tuple[Outcome, str]:
    """A rule with no problem: pass, or skip when there was nothing to judge."""
    if acr == 0:
        return Outcome.SKIP, "no image from ACR: nothing to stream"
    if rule == IMAGE_STREAMABLE:
        return Outcome.PASS, (
            f"all {acr} ACR images have a streaming artifact"
            if acr > 1
            else "the ACR image has a streaming artifact"
        )
    if rule == POOLS_CAN_STREAM:
        pools = decision.annotations.get(ANNOTATION_POOLS)
        if pools is None:
            return Outcome.SKIP, "node pools unknown (the nodes are not readable)"
        return Outcome.PASS, f"every node pool it fits can stream ({pools.split(';')[0]})"
    if rule == DIGEST_PIN:
        return Outcome.PASS, "ACR images are pulled by tag"
    return Outcome.PASS, "no imagePullSecrets: ACR pulls use the kubelet identity"


def workload_results(
    subject: Subject,
    decision: Decision | None,
    policy: Policy,
    *,
    timestamp: int = 0,
    error: str | None = None,
) -> tuple[RuleResult, ...]:
    """The four results for one workload: `decision` as `evaluate` (through Admission.decide)
    made it, or `error` (why the workload could not be judged) when there is none."""

    def result(rule: str, outcome: Outcome, message: str, **props: str) -> RuleResult:
        return RuleResult(subject, rule, outcome, message, timestamp, props)

    if decision is None:
        why = messages.fit(f"not judged: {error or 'unknown error'}", 1024)
        return tuple(result(rule, Outcome.ERROR, why) for rule in RULES)
    mode = decision.mode.value
    if decision.skipped:
        return tuple(
            result(rule, Outcome.SKIP, f"not judged: {decision.skipped}", mode=mode)
            for rule in RULES
        )
    acr = sum(
        1
        for r in decision.reports
        if not r.exempt and r.ref is not None and r.verdict.verdict is not Verdict.NOT_ACR
    )
    problems: dict[str, list[tuple[Outcome, str]]] = {}
    for problem in decision.problems:
        group = _GROUP.get(problem.rule)
        if group is not None:
            problems.setdefault(group, []).append(
                (_outcome(problem.rule, policy), messages.printable(problem.message))
            )
    out: list[RuleResult] = []
    for rule in RULES:
        found = problems.get(rule)
        if found:
            outcome = min((o for o, _ in found), key=_WORST.__getitem__)
            texts = list(dict.fromkeys(t for _, t in found))
            fixes = list(dict.fromkeys(f for f in map(messages.fix_of, texts) if f))
            props = {"mode": mode}
            if fixes:
                props["fix"] = "\n".join(fixes)
            out.append(result(rule, outcome, "\n".join(texts), **props))
            continue
        if _switched_off(rule, policy):
            out.append(result(rule, Outcome.SKIP, "switched off by the policy (ignore)", mode=mode))
            continue
        outcome, text = _no_problem(rule, decision, acr)
        out.append(result(rule, outcome, text, mode=mode))
    return tuple(out)


def summary(results: Iterable[RuleResult]) -> dict[str, int]:
    counts = dict.fromkeys((o.value for o in Outcome), 0)
    for r in results:
        counts[r.outcome.value] += 1
    return {k: counts[k] for k in ("pass", "fail", "warn", "error", "skip")}


def report_name(namespace: str, shard: int = 0) -> str:
    """`streamgate-<namespace>`, then `-2`, `-3`, ... for a namespace too big for one object."""
    return f"{NAME_PREFIX}{namespace}" + (f"-{shard + 1}" if shard else "")


def _sorted(results: Iterable[RuleResult]) -> list[list[RuleResult]]:
    """Results grouped by workload, workloads in report order, rules in `RULES` order."""
    by_subject: dict[Subject, list[RuleResult]] = {}
    for r in results:
        by_subject.setdefault(r.subject, []).append(r)
    rank = {rule: i for i, rule in enumerate(RULES)}
    return [
        sorted(by_subject[s], key=lambda r: (rank.get(r.rule, len(RULES)), r.rule))
        for s in sorted(by_subject, key=lambda s: s.order)
    ]


def _size(doc: Any) -> int:
    return len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())


def _shards(
    sized: list[tuple[list[dict[str, Any]], Subject, int]], max_bytes: int
) -> list[list[dict[str, Any]]]:
    """Workloads into reports: one while they fit; else each workload in the report its name
    hashes to, among as many as keep them at about `SHARD_FILL` of `max_bytes` (one more until
    none overflows). A change to one workload then rewrites one report, not every report
    after it; only a change of the count moves workloads."""
    budget = max_bytes - _ENVELOPE
    total = sum(size for _, _, size in sized)
    if total <= budget:
        return [[d for docs, _, _ in sized for d in docs]]
    count = max(2, math.ceil(total / (budget * SHARD_FILL)))
    while True:
        shards: list[list[dict[str, Any]]] = [[] for _ in range(count)]
        used = [0] * count
        for docs, subject, size in sized:
            index = zlib.crc32(f"{subject.kind}/{subject.name}".encode()) % count
            shards[index].extend(docs)
            used[index] += size
        if max(used) <= budget or count >= len(sized):
            return [s for s in shards if s] or [[]]
        count += 1


def namespace_reports(
    namespace: str,
    results: Iterable[RuleResult],
    *,
    api: str = WGPOLICY,
    max_bytes: int = MAX_REPORT_BYTES,
    labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The report objects for one namespace (none when it has no results): `api` is WGPOLICY
    or OPENREPORTS. Deterministic: the same results give the same objects."""
    if api not in KINDS:
        raise ValueError(f"unknown report API {api!r}: {', '.join(KINDS)}")
    groups = [([r.to_dict() for r in group], group[0].subject) for group in _sorted(results)]
    if not groups:
        return []
    sized = [(docs, subject, sum(_size(d) + 1 for d in docs)) for docs, subject in groups]
    shards = _shards(sized, max_bytes)
    out = []
    for index, docs in enumerate(shards):
        counts = dict.fromkeys(("pass", "fail", "warn", "error", "skip"), 0)
        for d in docs:
            counts[d["result"]] += 1
        doc: dict[str, Any] = {
            "apiVersion": api,
            "kind": KINDS[api],
            "metadata": {
                "name": report_name(namespace, index),
                "namespace": namespace,
                "labels": {**MANAGED_BY, **(labels or {})},
            },
        }
        if api == OPENREPORTS:
            doc["source"] = SOURCE
        doc["summary"] = counts
        doc["results"] = docs
        out.append(doc)
    return out


def reports(
    results: Iterable[RuleResult], *, api: str = WGPOLICY, max_bytes: int = MAX_REPORT_BYTES
) -> list[dict[str, Any]]:
    """Every namespace's reports, namespaces in name order."""
    by_ns: dict[str, list[RuleResult]] = {}
    for r in results:
        by_ns.setdefault(r.subject.namespace, []).append(r)
    out: list[dict[str, Any]] = []
    for ns in sorted(by_ns):
        out.extend(namespace_reports(ns, by_ns[ns], api=api, max_bytes=max_bytes))
    return out
