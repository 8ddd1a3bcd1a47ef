"""The remediator's request path: booking, deduplication, limits and refusals, without the
worker (which only runs against a registry: tests/integration/test_remediator.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from app.core.images import parse_image
from app.core.policy import Policy, parse_policy
from app.core.remediation import STARTED
from app.telemetry.events import ObjectRef
from app.webhook.remediator import MAX_WORKLOADS, Remediator

ACR = "myacr.azurecr.io"
DIGEST = "sha256:" + "b" * 64


class NoRegistry:
    """Booking never touches the registry: any call here fails the test."""

    def transport(self, registry: str) -> Any:
        raise AssertionError("the request path made a registry call")

    def learn_conversion(self, *args: Any) -> None:
        raise AssertionError("the request path wrote a cache")

    def forget_missing(self, *args: Any) -> None:
        raise AssertionError("the request path wrote a cache")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def on_conversion(self, result: str, reason: str = "") -> None:
        self.calls.append((result, reason))


def make(**remediation: Any) -> tuple[Remediator, list[Policy], Counts, Clock]:
    holder = [parse_policy({"remediation": {"action": "convert", **remediation}})]
    counts, clock = Counts(), Clock()
    rem = Remediator(NoRegistry(), lambda: holder[0], observer=counts, clock=clock)
    return rem, holder, counts, clock


def workload(name: str, uid: str = "u") -> ObjectRef:
    return ObjectRef("apps/v1", "Deployment", "team-a", name, uid)


async def test_one_digest_is_booked_once_and_every_asker_hears_it_started() -> None:
    rem, _, counts, _ = make()
    answers = [
        rem.request(parse_image(f"{ACR}/app:v{i % 2}"), DIGEST, workload(f"w{i}", f"u{i}"))
        for i in range(30)
    ]
    assert answers == [STARTED] * 30
    assert len(rem.tracked) == 1 and counts.calls == []
    [booked] = rem.tracked.values()
    assert booked.ref.raw == f"{ACR}/app:v0"  # the first sighting, as written
    assert len(booked.workloads) == MAX_WORKLOADS
    rem.request(parse_image(f"{ACR}/app:v1"), DIGEST, workload("w0", "u0"))
    assert len(booked.workloads) == MAX_WORKLOADS  # no duplicates, no growth


async def test_only_workloads_stored_with_a_uid_are_told() -> None:
    rem, _, _, _ = make()
    rem.request(parse_image(f"{ACR}/app:v1"), DIGEST, workload("mutating", uid=""))
    rem.request(parse_image(f"{ACR}/app:v1"), DIGEST, None)
    assert next(iter(rem.tracked.values())).workloads == []


@pytest.mark.parametrize(
    ("image", "remediation", "reason"),
    [
        ("docker.io/library/nginx:1", {}, "registry-not-allowed"),
        (f"{ACR}/app:v1", {"registries": ["other.azurecr.io"]}, "registry-not-allowed"),
        ("evil.corp.example/app:v1", {}, "registry-not-allowed"),  # ACR by pattern only
    ],
)
async def test_registries_outside_its_reach_are_not_booked(
    image: str, remediation: dict[str, Any], reason: str
) -> None:
    holder = [
        parse_policy(
            {
                "acrRegistries": ["*.corp.example"],
                "remediation": {"action": "convert", **remediation},
            }
        )
    ]
    counts = Counts()
    rem = Remediator(NoRegistry(), lambda: holder[0], observer=counts)
    assert rem.request(parse_image(image), DIGEST) is None
    assert counts.calls == [("skipped", reason)] and rem.tracked == {}


async def test_the_rate_the_budget_and_the_queue_hold(caplog: pytest.LogCaptureFixture) -> None:
    rem, _, counts, clock = make(perRegistryPerMinute=2, perHour=3, queueSize=10)
    digests = [f"sha256:{i:064x}" for i in range(6)]
    got = [rem.request(parse_image(f"{ACR}/a{i}:v1"), d) for i, d in enumerate(digests[:3])]
    assert got == [STARTED, STARTED, None]
    assert counts.calls == [("skipped", "rate-limited")]
    clock.now += 61
    other = parse_image("other.azurecr.io/x:v1")
    with caplog.at_level(logging.WARNING, logger="app.webhook.remediator"):
        assert rem.request(other, digests[3]) == STARTED
        assert rem.request(other, digests[4]) is None
        assert rem.request(other, digests[5]) is None
    assert counts.calls[-2:] == [("skipped", "budget")] * 2
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "remediation: conversions not started: the hourly budget is spent (remediation.perHour: 3)"
    ]

    small, _, small_counts, _ = make(queueSize=1)
    assert small.request(parse_image(f"{ACR}/a:v1"), digests[0]) == STARTED
    assert small.request(parse_image(f"{ACR}/b:v1"), digests[1]) is None
    assert small_counts.calls == [("skipped", "queue-full")]


async def test_a_finished_digest_is_not_asked_for_again_within_retry_seconds() -> None:
    rem, _, _, clock = make(retrySeconds=600)
    ref = parse_image(f"{ACR}/app:v1")
    assert rem.request(ref, DIGEST) == STARTED
    booked = rem.tracked[(ACR, "app", DIGEST)]
    booked.state, booked.finished_at = "done", clock.now
    clock.now += 599
    assert rem.request(ref, DIGEST) is None
    clock.now += 2
    assert rem.request(ref, DIGEST) == STARTED
    assert rem.tracked[(ACR, "app", DIGEST)] is not booked


# ---- the admission and the remediator: which decisions the memo may answer -----------------

from app.core.messages import NO_ARTIFACT  # noqa: E402
from app.core.pools import NoInventory  # noqa: E402
from app.core.verdicts import ImageVerdict, Verdict  # noqa: E402
from app.webhook.admission import Admission  # noqa: E402
from app.webhook.review import AdmissionRequest  # noqa: E402
from tests.memory import MemoryVerdicts  # noqa: E402

PLAIN = f"{ACR}/plain:v1"


def review(ns: str = "team-a", *, dry_run: bool = False, name: str = "web") -> AdmissionRequest:
    return AdmissionRequest(
        api_version="admission.k8s.io/v1",
        uid="r-" + name,
        group="",
        kind="Pod",
        sub_resource="",
        operation="CREATE",
        namespace=ns,
        name=name,
        obj={
            "metadata": {"name": name, "namespace": ns, "uid": "u-" + name},
            "spec": {"containers": [{"name": "app", "image": PLAIN}]},
        },
        old_obj=None,
        dry_run=dry_run,
        user="alice",
    )


def admitting(**remediation: Any) -> tuple[Admission, Remediator, Clock]:
    policy = parse_policy({"remediation": {"namespaces": {"team-a": "convert"}, **remediation}})
    verdicts = MemoryVerdicts(
        {PLAIN: ImageVerdict(Verdict.NOT_STREAMABLE, NO_ARTIFACT, digest=DIGEST)}, instant=True
    )
    admission = Admission(policy=lambda: policy, verdicts=verdicts, placement=NoInventory())
    clock = Clock()
    remediator = Remediator(NoRegistry(), admission.policy, clock=clock)
    admission.remediator = remediator
    return admission, remediator, clock


def plain_warning(answer: Any) -> str:
    [text] = [w for w in answer.warnings if PLAIN in w]
    return str(text)


async def test_a_dry_runs_memoised_answer_does_not_stand_in_for_the_real_request() -> None:
    admission, remediator, _ = admitting()
    dry = await admission.answer(review(dry_run=True), "validate")
    assert "fix: az acr artifact-streaming create" in plain_warning(dry)
    assert remediator.tracked == {}
    real = await admission.answer(review(), "validate")
    assert plain_warning(real) == f"app: {PLAIN}: {STARTED}"
    assert len(remediator.tracked) == 1


async def test_other_namespaces_keep_the_memo_and_book_nothing() -> None:
    admission, remediator, _ = admitting()
    for i in range(3):
        await admission.answer(review("team-b", name=f"p{i}"), "validate")
    assert remediator.tracked == {} and admission.memo.hits == 2


async def test_once_a_conversion_ended_the_memo_answers_until_its_retry_is_due() -> None:
    admission, remediator, clock = admitting(retrySeconds=600)
    await admission.answer(review(name="a"), "validate")
    [booked] = remediator.tracked.values()
    # under way: judged anew each time, and each says so
    again = await admission.answer(review(name="b"), "validate")
    assert STARTED in plain_warning(again) and admission.memo.hits == 0
    booked.state, booked.finished_at = "done", clock.now  # e.g. ACR refused to start it
    for name in ("c", "d", "e"):
        answer = await admission.answer(review(name=name), "validate")
        assert "fix: az acr artifact-streaming create" in plain_warning(answer)
    assert admission.memo.hits == 2  # c judged (and memoised), d and e from the memo
    clock.now += 600
    due = await admission.answer(review(name="f"), "validate")
    assert STARTED in plain_warning(due) and admission.memo.hits == 2
