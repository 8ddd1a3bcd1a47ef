"""The pure core: a workload, its images' verdicts, its node pools and a policy -> a decision.

No network, no environment, no framework: the webhook, `streamgate check` and `scan` all call
`plan` (app.core.plan: which images need a registry verdict), look those up, and hand the same
plan to `evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from app.core import messages
from app.core.images import ImageRef
from app.core.plan import Plan, PlannedImage
from app.core.policy import EXEMPT_ANNOTATION, Action, Mode, OnError, Policy, exempt_value
from app.core.pools import Placement, Streaming
from app.core.verdicts import NOT_ACR, ImageVerdict, Verdict
from app.core.workloads import JUDGED_OWNERS, Container, Workload

ANNOTATION_STREAMING = "streamgate.io/streaming"
ANNOTATION_REPORT = "streamgate.io/report"
ANNOTATION_DIGEST_PINNED = "streamgate.io/digest-pinned"
ANNOTATION_POOLS = "streamgate.io/pools"


class Severity(StrEnum):
    DENY = "deny"
    WARN = "warn"
    RECORD = "record"  # audit mode: annotations and logs only


@dataclass(frozen=True, slots=True)
class Problem:
    rule: str
    severity: Severity
    message: str
    container: str | None = None


@dataclass(frozen=True, slots=True)
class ContainerReport:
    container: Container
    ref: ImageRef | None
    verdict: ImageVerdict
    exempt: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    mode: Mode
    problems: tuple[Problem, ...] = ()
    reports: tuple[ContainerReport, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    steer: tuple[str, str] | None = None
    skipped: str | None = None  # why nothing was judged (exempt, mode off, ...)

    @property
    def warnings(self) -> list[str]:
        """What `kubectl apply` shows: within the apiserver's limits, most important first."""
        return messages.fit_warnings(
            [p.message for p in self.problems if p.severity is Severity.WARN]
        )

    @property
    def warns(self) -> bool:
        """Whether there is any warning (without fitting them: `warnings` does that)."""
        return any(p.severity is Severity.WARN for p in self.problems)

    @property
    def denials(self) -> list[str]:
        return [p.message for p in self.problems if p.severity is Severity.DENY]


def skip(mode: Mode, reason: str) -> Decision:
    return Decision(allowed=True, mode=mode, skipped=reason)


def _exempt_annotation(workload: Workload) -> str | None:
    """The exemption the object or its pod template asks for (see `exempt_value`), or None."""
    for found in (workload.annotations, workload.template_annotations()):
        value = exempt_value(found.get(EXEMPT_ANNOTATION))
        if value is not None:
            return value
    return None


def exemption(workload: Workload, namespace: str, policy: Policy, mode: Mode) -> str | None:
    """Why the whole workload is exempt, or None. The annotation counts only where the policy
    honours it (`exemptions.annotation`) under the namespace's effective `mode`."""
    if namespace in policy.exemptions.namespaces:
        return f"namespace {namespace} is exempt"
    value = _exempt_annotation(workload)
    if value is None or not policy.exemptions.annotation.honoured(namespace, mode):
        return None
    return (
        f"exempt by annotation: {' '.join(value.split())[:100]}"
        if value
        else "exempt by annotation"
    )


def ignored_exemption(workload: Workload, namespace: str, policy: Policy, mode: Mode) -> str | None:
    """The warning for an exempt annotation the policy does not honour here, or None."""
    setting = policy.exemptions.annotation
    if _exempt_annotation(workload) is None or setting.honoured(namespace, mode):
        return None
    return messages.exemption_ignored(allowed=setting.allowed)


class _Judge:
    """Collects problems under the effective mode: enforce keeps deny, warn and controlled
    pods turn deny into warn, audit records everything."""

    def __init__(self, mode: Mode, *, soften: bool) -> None:
        self.mode = mode
        self.soften = soften
        self.problems: list[Problem] = []

    def add(self, rule: str, action: Action, message: str, container: str | None = None) -> None:
        if action is Action.IGNORE:
            return
        severity = Severity.DENY if action is Action.DENY else Severity.WARN
        if severity is Severity.DENY and (self.mode is Mode.WARN or self.soften):
            severity = Severity.WARN
        if self.mode is Mode.AUDIT:
            severity = Severity.RECORD
        self.problems.append(Problem(rule, severity, message, container))


def _image_problems(
    judge: _Judge, planned: PlannedImage, verdict: ImageVerdict, policy: Policy
) -> None:
    rules, label, ref = policy.rules, planned.container.label, planned.ref
    if ref is None:
        reason = planned.error or "invalid"
        judge.add(
            "invalidImage",
            rules.invalid_image,
            messages.invalid_image(label, planned.container.image, reason),
            label,
        )
        return
    if not planned.acr:
        judge.add("notAcr", rules.not_acr, messages.not_acr(label, ref), label)
        return
    if verdict.verdict is Verdict.NOT_STREAMABLE:
        judge.add(
            "notStreamable",
            rules.not_streamable,
            messages.not_streamable(label, ref, verdict.reason, policy.acr_registry_names),
            label,
        )
    elif verdict.verdict is Verdict.UNKNOWN:
        deny = policy.on_error is OnError.DENY
        action = Action.DENY if deny else Action.WARN
        judge.add(
            "onError",
            action,
            messages.unknown(
                label, ref, verdict.reason, denied=deny and judge.mode is Mode.ENFORCE
            ),
            label,
        )
    if ref.digest_pinned:
        judge.add("digestPinned", rules.digest_pinned, messages.digest_pinned(label, ref), label)


def _pool_problems(judge: _Judge, placement: Placement, policy: Policy) -> None:
    if not placement.known:
        return
    if not placement.pools:
        judge.add("noPool", Action.WARN, messages.no_pool())
        return
    if not placement.streaming_enabled:
        # No pool of the cluster has streaming on: the one fix that matters; the pools'
        # other reasons would only hide it.
        judge.add(
            "noStreamingPools",
            policy.rules.no_streaming_pools,
            messages.no_streaming_pools(placement.pools),
        )
        return
    blocked = placement.non_streaming
    if not blocked:
        return
    if len(blocked) == len(placement.pools):
        judge.add(
            "poolsCannotStream",
            policy.rules.pools_cannot_stream,
            messages.pools_cannot_stream(blocked),
        )
    else:
        judge.add(
            "poolsMayNotStream",
            policy.rules.pools_may_not_stream,
            messages.pools_may_not_stream(
                blocked, placement.steer_label, placement.streaming_pools
            ),
        )


# Most important first: the apiserver drops warnings past 4 KiB (app/core/messages.py).
_RANK = {
    "noStreamingPools": 0,
    "poolsCannotStream": 0,
    "poolsMayNotStream": 0,
    "noPool": 0,
    "notStreamable": 1,
    "onError": 1,
    "digestPinned": 2,
    "imagePullSecrets": 3,
    "invalidImage": 4,
    "notAcr": 5,
}
_SEVERITY_ORDER = {Severity.DENY: 0, Severity.WARN: 1, Severity.RECORD: 2}


def _ordered(problems: list[Problem]) -> tuple[Problem, ...]:
    """Problems several containers share as one ("3 containers (a, b, c): …"), most
    important first: denials, then pools, then images."""
    groups: dict[tuple[str, Severity, str], list[Problem]] = {}
    for problem in problems:
        rest = problem.message
        prefix = f"{problem.container}: "
        if problem.container is not None and rest.startswith(prefix):
            rest = rest[len(prefix) - 2 :]  # keep the ": "
        else:
            rest = "\0" + rest  # not per container: never grouped with another
        groups.setdefault((problem.rule, problem.severity, rest), []).append(problem)
    merged = []
    for (rule, severity, rest), members in groups.items():
        if len(members) == 1:
            merged.append(members[0])
            continue
        labels = [m.container or "" for m in members]
        line = messages.grouped(labels, rest)
        if line is None:
            merged.extend(members)
        else:
            merged.append(Problem(rule, severity, line, members[0].container))
    merged.sort(key=lambda p: (_SEVERITY_ORDER[p.severity], _RANK.get(p.rule, 9)))
    return tuple(merged)


def _streaming_summary(reports: list[ContainerReport], placement: Placement) -> str:
    judged = [r for r in reports if not r.exempt]
    # A digest-pinned image with an artifact may or may not stream (ACR's docs say it may,
    # AKS's that digest pulls don't): it never makes the workload "all".
    verdicts = [
        Verdict.UNKNOWN
        if r.ref and r.ref.digest_pinned and r.verdict.verdict is Verdict.STREAMABLE
        else r.verdict.verdict
        for r in judged
    ]
    streamable = verdicts.count(Verdict.STREAMABLE)
    unknown = verdicts.count(Verdict.UNKNOWN)
    pools = placement.pools
    if placement.known and pools and all(p.streaming is Streaming.NO for p in pools):
        return "none"
    if streamable == 0:
        return "unknown" if unknown else "none"
    if streamable == len(verdicts) and not placement.non_streaming:
        return "all"
    return "partial"


def _annotations(reports: list[ContainerReport], placement: Placement) -> dict[str, str]:
    out = {
        ANNOTATION_STREAMING: _streaming_summary(reports, placement),
        ANNOTATION_REPORT: ",".join(
            f"{r.container.label}={'exempt' if r.exempt else r.verdict.verdict.value}"
            for r in reports
        ),
    }
    pinned = [r.container.label for r in reports if r.ref and r.ref.digest_pinned]
    if pinned:
        out[ANNOTATION_DIGEST_PINNED] = ",".join(pinned)
    if placement.known and placement.pools:
        cannot = [p.name for p in placement.non_streaming]
        summary = f"{len(placement.streaming_pools)}/{len(placement.pools)} can stream"
        out[ANNOTATION_POOLS] = summary + (f"; not: {','.join(cannot)}" if cannot else "")
    return out


def evaluate(
    plan: Plan,
    *,
    mode: Mode,
    policy: Policy,
    verdicts: Mapping[ImageRef, ImageVerdict],
    placement: Placement,
    by_controller: bool = False,
    notes: tuple[str, ...] = (),
) -> Decision:
    """Judge one planned workload. `verdicts` holds an answer for each of `plan.to_check`; a
    missing one counts as unknown. `by_controller`: the request comes from one of the
    policy's `controllerUsers` (only then does a Pod's controller ownerReference soften a
    denial: anyone can write one). `notes`: warnings about the policy itself (an exempt
    annotation or a mode label it did not honour), shown first."""
    if mode is Mode.OFF:
        return skip(mode, "mode off")
    workload = plan.workload
    controlled = workload.kind == "Pod" and workload.controller_kind in JUDGED_OWNERS
    judge = _Judge(mode, soften=controlled and by_controller and not policy.deny_controlled_pods)
    for note in notes:
        judge.add("policyNote", Action.WARN, note)
    reports: list[ContainerReport] = []
    uses_acr = False
    for planned in plan.images:
        if planned.ref is None:
            verdict = ImageVerdict(Verdict.UNKNOWN, planned.error or "invalid image")
        elif not planned.acr:
            verdict = NOT_ACR
        else:
            verdict = verdicts.get(planned.ref) or ImageVerdict(Verdict.UNKNOWN, "not looked up")
        reports.append(ContainerReport(planned.container, planned.ref, verdict, planned.exempt))
        if planned.exempt:
            continue
        uses_acr = uses_acr or planned.acr
        _image_problems(judge, planned, verdict, policy)
    if uses_acr:
        pod_spec = workload.pod_spec
        if pod_spec.get("imagePullSecrets"):
            judge.add("imagePullSecrets", policy.rules.image_pull_secrets, messages.pull_secrets())
        _pool_problems(judge, placement, policy)
    if reports and all(r.exempt for r in reports):
        return skip(mode, "every image is exempt")
    steer = None
    if policy.steering.enabled and uses_acr and placement.streaming_pools:
        steer = placement.steer_label if placement.non_streaming else None
    problems = _ordered(judge.problems)
    return Decision(
        allowed=not any(p.severity is Severity.DENY for p in problems),
        mode=mode,
        problems=problems,
        reports=tuple(reports),
        annotations=_annotations(reports, placement),
        steer=steer,
    )
