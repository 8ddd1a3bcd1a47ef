"""One admission request, start to finish: skip what needs no work, look up the images'
verdicts within a deadline, place the pod on node pools, evaluate, and answer.

The registry and the node inventory stay behind their interfaces (`VerdictSource`,
`PlacementSource`); this module holds the async glue and the error policy: an unexpected
failure while evaluating never becomes a 500, it becomes the policy's `onError` answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from app.core import messages
from app.core.evaluate import Decision, evaluate, exemption, ignored_exemption, skip
from app.core.images import ImageRef
from app.core.plan import plan
from app.core.policy import Mode, OnError, Policy
from app.core.pools import Placement, PlacementSource
from app.core.remediation import wants_conversion
from app.core.verdicts import ImageVerdict, Verdict, VerdictSource
from app.core.workloads import Workload, WorkloadError, judged_signature, workload
from app.telemetry.events import involved_object
from app.webhook.decisionlog import DecisionLog
from app.webhook.memo import DecisionMemo, Judged, Key, signature
from app.webhook.patches import annotation_ops, steer_ops
from app.webhook.remediator import Remediator
from app.webhook.review import AdmissionAnswer, AdmissionRequest, ReviewError

logger = logging.getLogger(__name__)

# The whole registry budget for one admission. Kept well under the webhook's default
# timeoutSeconds (5 s in the chart) so the answer, even "unknown", reaches the apiserver
# before it gives up and applies failurePolicy.
DEFAULT_LOOKUP_DEADLINE = 2.0

# validate: warnings and denials; mutate: the annotations and the steering patch only; admit:
# both in one call, for a mutating webhook that judges too (one-call mode, docs/install.md).
Endpoint = Literal["validate", "mutate", "admit"]
_JUDGED_SUBRESOURCES = ("", "ephemeralcontainers")


class AdmissionObserver(Protocol):
    """Counts admissions (app/telemetry/metrics.py implements it)."""

    def on_admission(
        self, *, endpoint: str, kind: str, operation: str, decision: str, seconds: float
    ) -> None: ...

    def on_verdict(self, verdict: str) -> None: ...


class NoObserver:
    def on_admission(
        self, *, endpoint: str, kind: str, operation: str, decision: str, seconds: float
    ) -> None:
        return None

    def on_verdict(self, verdict: str) -> None:
        return None


class NamespaceModes(Protocol):
    """The mode a namespace asks for with its `streamgate.io/mode` label, or None."""

    def mode(self, namespace: str) -> Mode | None: ...


class NoNamespaceLabels:
    def mode(self, namespace: str) -> Mode | None:
        return None


@dataclass
class Admission:
    """Everything a request needs, built once at start-up and shared by all requests."""

    policy: Callable[[], Policy]
    verdicts: VerdictSource
    placement: PlacementSource
    namespaces: NamespaceModes = field(default_factory=NoNamespaceLabels)
    lookup_deadline: float = DEFAULT_LOOKUP_DEADLINE
    observer: AdmissionObserver = field(default_factory=NoObserver)
    # Called after each /validate decision, on the event loop (Kubernetes Events use it): it
    # must only hand the decision on (enqueue) and return at once; it never changes the answer.
    on_decision: Callable[[AdmissionRequest, Decision], None] | None = None
    memo: DecisionMemo = field(default_factory=DecisionMemo)
    decision_log: DecisionLog = field(default_factory=DecisionLog)
    # Starts the conversions `remediation: convert` asks for (None: never, as in the CLI).
    remediator: Remediator | None = None
    _background: set[asyncio.Task[ImageVerdict]] = field(default_factory=set, repr=False)

    def mode_for(self, namespace: str, policy: Policy) -> Mode:
        """The admin's mode for `namespace` (`namespaceModes`, else `mode`), replaced by the
        namespace's `streamgate.io/mode` label when that is stricter, or when the policy lets
        the label relax it too (`namespaceLabel.allowRelax`)."""
        admin = policy.admin_mode(namespace)
        label = self.namespaces.mode(namespace)
        return label if label is not None and policy.label_applies(label, admin) else admin

    def _notes(
        self, req: AdmissionRequest, wl: Workload, policy: Policy, mode: Mode
    ) -> tuple[str, ...]:
        notes = []
        label = self.namespaces.mode(req.namespace)
        admin = policy.admin_mode(req.namespace)
        if label is not None and not policy.label_applies(label, admin):
            notes.append(messages.mode_label_ignored(label.value, admin.value))
        ignored = ignored_exemption(wl, req.namespace, policy, mode)
        if ignored is not None:
            notes.append(ignored)
        return tuple(notes)

    async def lookup(
        self, refs: Iterable[ImageRef], known: Mapping[ImageRef, ImageVerdict] | None = None
    ) -> dict[ImageRef, ImageVerdict]:
        """Verdicts for `refs`, within the deadline. Look-ups still running at the deadline go
        on in the background (they warm the cache) and count as unknown now. `known`: cached
        verdicts the caller already asked for (not asked again)."""
        out: dict[ImageRef, ImageVerdict] = {}
        missing = []
        for ref in refs:
            verdict = known.get(ref) if known else None
            if verdict is None:
                verdict = self.verdicts.cached(ref)
            if verdict is None:
                missing.append(ref)
            else:
                out[ref] = verdict
        if not missing:  # the warm path: no task, no timer
            return out
        missing = self._capped(missing, out)
        tasks = {ref: asyncio.ensure_future(self.verdicts.verdict(ref)) for ref in missing}
        _, pending = await asyncio.wait(tasks.values(), timeout=self.lookup_deadline)
        for ref, task in tasks.items():
            if task in pending:
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                out[ref] = ImageVerdict(Verdict.UNKNOWN, "registry timed out")
            elif task.exception() is not None:
                logger.error("verdict source raised for %s", ref.raw, exc_info=task.exception())
                out[ref] = ImageVerdict(Verdict.UNKNOWN, "registry look-up failed")
            else:
                out[ref] = task.result()
        return out

    def _capped(self, missing: list[ImageRef], out: dict[ImageRef, ImageVerdict]) -> list[ImageRef]:
        """The look-ups one object may cause: images beyond `maxImagesPerReview`, or on
        registries beyond `maxRegistriesPerReview`, are unknown at once, with no network."""
        config = self.policy().registry
        kept: list[ImageRef] = []
        registries: set[str] = set()
        for ref in missing:
            new_registry = ref.registry not in registries
            if len(kept) >= config.max_images_per_review:
                why = f"more than {config.max_images_per_review} images in one object"
                out[ref] = ImageVerdict(
                    Verdict.UNKNOWN, f"not looked up: {why} (registry.maxImagesPerReview)"
                )
            elif new_registry and len(registries) >= config.max_registries_per_review:
                why = f"more than {config.max_registries_per_review} registries in one object"
                out[ref] = ImageVerdict(
                    Verdict.UNKNOWN, f"not looked up: {why} (registry.maxRegistriesPerReview)"
                )
            else:
                registries.add(ref.registry)
                kept.append(ref)
        return kept

    async def decide(self, req: AdmissionRequest) -> tuple[Decision, Workload | None]:
        policy = self.policy()
        mode = self.mode_for(req.namespace, policy)
        if req.operation not in ("CREATE", "UPDATE"):
            return skip(mode, f"operation {req.operation}"), None
        if req.sub_resource not in _JUDGED_SUBRESOURCES:
            return skip(mode, f"subresource {req.sub_resource}"), None
        if mode is Mode.OFF:
            return skip(mode, "mode off"), None
        assert req.obj is not None  # parse_review guarantees it for CREATE and UPDATE
        wl = workload(req.group, req.kind, req.obj)
        if wl is None:
            return skip(mode, f"kind {req.kind} is not judged"), None
        reason = exemption(wl, req.namespace, policy, mode)
        if reason:
            return skip(mode, reason), wl
        if req.operation == "UPDATE" and req.old_obj is not None and _unchanged(req, wl):
            return skip(mode, "images and scheduling unchanged"), wl
        by_controller = req.user in policy.controller_users
        notes = self._notes(req, wl, policy, mode)
        # Where remediation is on (and the request is not a dry run) a memoised decision that
        # still calls for a conversion is judged anew, so the conversion is booked (a dry run's
        # answer, which books nothing, must not stand in for the real request's); a decision
        # that booked one is not memoised (it reads "conversion started" only until the
        # remediator learns more).
        books = (
            self.remediator is not None
            and not req.dry_run
            and policy.remediation.applies(req.namespace)
        )
        key = signature(wl, mode, (by_controller, notes))
        placement = self.placement.place(wl.pod_spec)
        memoised, known = self._from_memo(key, policy, placement)
        if memoised is not None:
            if not (books and self._books_now(memoised, policy)):
                return memoised, wl
            self.memo.refuse()
        planned = plan(wl, policy)
        refs = planned.to_check
        verdicts = await self.lookup(refs, known)
        booked = books and self._remediate(req, verdicts)
        decision = evaluate(
            planned,
            mode=mode,
            policy=policy,
            verdicts=verdicts,
            placement=placement,
            by_controller=by_controller,
            notes=notes,
        )
        if key is not None and not booked:
            judged = Judged(refs, tuple([verdicts[r] for r in refs]), placement, decision)
            self.memo.put(key, policy, judged)
        return decision, wl

    def _books_now(self, decision: Decision, policy: Policy) -> bool:
        """Whether a memoised decision calls for a conversion the remediator would book (or has
        under way) now: then the admission is judged anew instead."""
        assert self.remediator is not None
        for r in decision.reports:
            ref, verdict = r.ref, r.verdict
            if ref is None or verdict.digest is None or not wants_conversion(verdict):
                continue
            if self.remediator.wants_judging(ref, verdict.digest, policy):
                return True
        return False

    def _remediate(self, req: AdmissionRequest, verdicts: dict[ImageRef, ImageVerdict]) -> bool:
        """Book the conversions these verdicts call for (no I/O: the remediator queues them);
        a booked image's verdict then says so. True when any was booked."""
        assert self.remediator is not None
        involved = None
        booked = False
        for ref, verdict in verdicts.items():
            if verdict.digest is None or not wants_conversion(verdict):
                continue
            if involved is None:
                involved = involved_object(req, denied=False)
            reason = self.remediator.request(ref, verdict.digest, involved)
            if reason is not None:
                verdicts[ref] = replace(verdict, reason=reason)
                booked = True
        return booked

    def _from_memo(
        self, key: Key | None, policy: Policy, placement: Placement
    ) -> tuple[Decision | None, dict[ImageRef, ImageVerdict]]:
        """The memoised decision for this template when its verdicts (fresh from the cache)
        and placement are unchanged; else None, with the cached verdicts it did find."""
        refs = self.memo.refs_for(key, policy) if key is not None else None
        if key is None or refs is None:
            return None, {}
        current = tuple([self.verdicts.cached(ref) for ref in refs])
        memoised = self.memo.get(key, policy, current, placement)
        if memoised is not None:
            return memoised, {}
        return None, {ref: v for ref, v in zip(refs, current, strict=True) if v is not None}

    async def answer(self, req: AdmissionRequest, endpoint: Endpoint) -> AdmissionAnswer:
        started = time.perf_counter()
        try:
            decision, wl = await self.decide(req)
        except WorkloadError as err:
            # A judged kind without a pod spec is a malformed review, not a policy matter.
            raise ReviewError(str(err)) from err
        except Exception:
            logger.exception("uid=%s evaluation failed; answering onError", req.uid)
            answer = self._on_error(req)
            self._observe(req, endpoint, "error", started)
            return answer
        outcome = _outcome(decision)
        took = self._observe(req, endpoint, outcome, started)
        if endpoint != "mutate":
            for report in decision.reports:
                self.observer.on_verdict(report.verdict.verdict.value)
            if self.on_decision is not None:
                try:
                    self.on_decision(req, decision)
                except Exception:
                    logger.exception("uid=%s decision hook failed; answer unchanged", req.uid)
        self.decision_log.write(req, endpoint, decision, outcome, took)
        if endpoint == "mutate":
            return AdmissionAnswer(allowed=True, patch=tuple(_patch(req, decision, wl)))
        if decision.allowed:
            patch = tuple(_patch(req, decision, wl)) if endpoint == "admit" else ()
            return AdmissionAnswer(allowed=True, warnings=tuple(decision.warnings), patch=patch)
        return AdmissionAnswer(
            allowed=False,
            message=messages.denial(
                req.kind, req.name or (wl.name if wl else ""), decision.denials
            ),
            warnings=tuple(decision.warnings),
        )

    def _observe(self, req: AdmissionRequest, endpoint: str, outcome: str, started: float) -> float:
        took = time.perf_counter() - started
        self.observer.on_admission(
            endpoint=endpoint,
            kind=req.kind,
            operation=req.operation,
            decision=outcome,
            seconds=took,
        )
        return took

    def _on_error(self, req: AdmissionRequest) -> AdmissionAnswer:
        policy = self.policy()
        denied = (
            policy.on_error is OnError.DENY and self.mode_for(req.namespace, policy) is Mode.ENFORCE
        )
        text = "streamgate could not evaluate this object (internal error)"
        if denied:
            return AdmissionAnswer(allowed=False, message=f"{text}; denied (onError: deny)")
        return AdmissionAnswer(allowed=True, warnings=(messages.fit(f"{text}; allowed"),))


def _patch(
    req: AdmissionRequest, decision: Decision, wl: Workload | None
) -> list[Mapping[str, object]]:
    if wl is None or decision.skipped or req.sub_resource:
        return []
    ops: list[Mapping[str, object]] = list(annotation_ops(wl, decision.annotations))
    if decision.steer and decision.mode in (Mode.WARN, Mode.ENFORCE):
        ops += steer_ops(wl, decision.steer)
    return ops


def _unchanged(req: AdmissionRequest, wl: Workload) -> bool:
    """True when an UPDATE left images and scheduling alone. An old object without a usable
    pod spec counts as changed: the new object is judged rather than the review refused."""
    assert req.old_obj is not None
    try:
        old = workload(req.group, req.kind, req.old_obj)
    except WorkloadError:
        return False
    return old is not None and judged_signature(old) == judged_signature(wl)


def _outcome(decision: Decision) -> str:
    if decision.skipped:
        return "skip"
    if not decision.allowed:
        return "deny"
    return "warn" if decision.warns else "allow"
