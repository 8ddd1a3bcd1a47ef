"""Remediation from admissions (app/webhook/remediator.py) against a real registry (olareg, with
the referrers API) behind the ACR front, whose /acr/v1 endpoints start, report and finish
conversions by pushing a real streaming referrer (tests/support/acr_front.py). The webhook's own
`Admission` judges: the first admission's warning says the conversion started, later ones
read its progress from the caches, and once it has succeeded the image is streamable. The
front counts the conversions really started."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.core.images import parse_image
from app.core.messages import NO_ARTIFACT
from app.core.policy import Policy, parse_policy
from app.core.pools import NoInventory
from app.core.remediation import STARTED
from app.core.verdicts import Verdict
from app.registry.source import RegistryVerdictSource
from app.telemetry.events import ObjectRef
from app.webhook.admission import Admission
from app.webhook.remediator import REASON_FAILED, REASON_REFUSED, REASON_SUCCEEDED, Remediator
from app.webhook.review import AdmissionAnswer, AdmissionRequest
from tests.integration.test_convert import seed, source_for
from tests.support.registries import AcrFront

pytestmark = pytest.mark.registry

NS = "team-a"


def policy_for(front: AcrFront, **remediation: Any) -> Policy:
    settings = {"acr": True, "auth": "acr-aad", "ca_file": front.ca_cert}
    return parse_policy(
        {
            "acrRegistries": [front.host],
            "registry": {"registries": {front.host: settings}},
            "remediation": {"namespaces": {NS: "convert"}, "pollSeconds": 0.05, **remediation},
        }
    )


class Steps:
    """The remediator's sleep between two reads of an operation, released by the test: the
    test sees each state the remediator learned before the next read."""

    def __init__(self) -> None:
        self.waiting = asyncio.Queue[asyncio.Future[None]]()

    async def sleep(self, _seconds: float) -> None:
        step = asyncio.get_running_loop().create_future()
        await self.waiting.put(step)
        await step

    async def release(self) -> None:
        step = await asyncio.wait_for(self.waiting.get(), 10)
        step.set_result(None)


@dataclass
class Counts:
    calls: list[tuple[str, str]] = field(default_factory=list)

    def on_conversion(self, result: str, reason: str = "") -> None:
        self.calls.append((result, reason))


@dataclass
class Harness:
    front: AcrFront
    admission: Admission
    remediator: Remediator
    holder: list[Policy]
    counts: Counts
    events: list[tuple[ObjectRef, str, str, bool]]

    async def apply(
        self, image: str, *, ns: str = NS, name: str = "app", dry_run: bool = False
    ) -> AdmissionAnswer:
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "app", "image": image}]},
        }
        req = AdmissionRequest(
            api_version="admission.k8s.io/v1",
            uid=secrets.token_hex(8),
            group="",
            kind="Pod",
            sub_resource="",
            operation="CREATE",
            namespace=ns,
            name=name,
            obj=obj,
            old_obj=None,
            dry_run=dry_run,
            user="alice",
        )
        return await self.admission.answer(req, "validate")

    def started(self) -> int:
        return int(self.front.stats()["events"].get("conversion_started", 0))


async def _harness(front: AcrFront, *, sleep: Any, **remediation: Any) -> Harness:
    holder = [policy_for(front, **remediation)]
    source = source_for(front, holder[0])
    admission = Admission(policy=lambda: holder[0], verdicts=source, placement=NoInventory())
    counts = Counts()
    events: list[tuple[ObjectRef, str, str, bool]] = []
    kw = {"sleep": sleep} if sleep is not None else {}
    remediator = Remediator(
        source,
        admission.policy,
        observer=counts,
        notify=lambda o, reason, text, normal: events.append((o, reason, text, normal)),
        **kw,
    )
    admission.remediator = remediator
    front.reset_stats()
    return Harness(front, admission, remediator, holder, counts, events)


async def _not_streamable(front: AcrFront, prefix: str) -> str:
    return (await _missing_artifact(front, prefix))[0]


async def _missing_artifact(front: AcrFront, prefix: str) -> list[str]:
    """A fresh seed's images pulled by tag with no streaming artifact and nothing else wrong
    (a conversion would make them stream)."""
    images = seed(front, f"{prefix}-{secrets.token_hex(4)}")
    source = source_for(front, policy_for(front))
    found = []
    try:
        for image in images:
            verdict = await source.verdict(parse_image(image))
            if verdict.reason == NO_ARTIFACT and "@" not in image:
                found.append(image)
    finally:
        await source.aclose()
    assert found, f"the seed has no image without a streaming artifact: {images}"
    return found


def _image_warning(answer: AdmissionAnswer, image: str) -> str:
    mine = [w for w in answer.warnings if image in w]
    assert len(mine) == 1, answer.warnings
    return mine[0]


@contextlib.asynccontextmanager
async def running(h: Harness, *, close: bool = True) -> AsyncIterator[None]:
    """The remediator's worker for the block; then the registry client closed (`close`)."""
    worker = asyncio.create_task(h.remediator.run())
    try:
        yield
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        if close:
            await h.admission.verdicts.aclose()  # type: ignore[attr-defined]


async def test_an_admission_starts_the_conversion_and_the_next_one_streams(
    acr_front_referrers: AcrFront,
) -> None:
    image = await _not_streamable(acr_front_referrers, "remedy")
    steps = Steps()
    h = await _harness(acr_front_referrers, sleep=steps.sleep)
    async with running(h):
        first = await h.apply(image)
        assert first.allowed
        assert _image_warning(first, image) == f"app: {image}: {STARTED}"
        await steps.release()  # started; first read of the operation: Running, 50 %
        await steps.release()  # the remediator has learned it; the second read: Succeeded
        # (the front moves an operation one state per read)
        await asyncio.wait_for(h.remediator.wait_idle(), 20)
        assert h.started() == 1
        again = await h.apply(image, name="app2")
        assert not [w for w in again.warnings if image in w], again.warnings
        assert h.counts.calls == [("started", ""), ("succeeded", "")]
        assert [(e[0].name, e[1], e[3]) for e in h.events] == [("app", REASON_SUCCEEDED, True)]
        assert h.events[0][2] == (
            f"streaming conversion of {image} finished; the next rollout streams"
        )


async def test_a_later_admission_reads_the_progress_of_the_running_conversion(
    acr_front_referrers: AcrFront,
) -> None:
    image = await _not_streamable(acr_front_referrers, "progress")
    steps = Steps()
    h = await _harness(acr_front_referrers, sleep=steps.sleep)
    async with running(h):
        await h.apply(image)
        await steps.release()  # first read: Running (50 %)
        step = await asyncio.wait_for(steps.waiting.get(), 10)  # learned, waiting to read again
        during = await h.apply(image, name="app2")
        assert _image_warning(during, image) == (
            f"app: {image}: no streaming artifact yet; conversion running (50%)"
        )
        step.set_result(None)
        await asyncio.wait_for(h.remediator.wait_idle(), 20)
        after = await h.apply(image, name="app3")
        assert not [w for w in after.warnings if image in w]
        assert h.started() == 1


async def test_fifty_concurrent_admissions_of_one_new_image_start_one_conversion(
    acr_front_referrers: AcrFront,
) -> None:
    image = await _not_streamable(acr_front_referrers, "fifty")
    h = await _harness(acr_front_referrers, sleep=None)
    async with running(h):
        answers = await asyncio.gather(*(h.apply(image, name=f"p{i}") for i in range(50)))
        texts = {_image_warning(a, image) for a in answers}
        assert texts == {f"app: {image}: {STARTED}"}
        await asyncio.wait_for(h.remediator.wait_idle(), 30)
        assert h.started() == 1
        assert [c for c in h.counts.calls if c[0] == "started"] == [("started", "")]
        # Every workload that asked is told, up to MAX_WORKLOADS.
        assert len(h.events) == 10


async def test_a_conversion_under_way_is_followed_not_started_again(
    acr_front_referrers: AcrFront,
) -> None:
    """Another replica (or `streamgate convert`, or a person) started it between this
    replica's look-up and its turn: the remediator reads ACR's record first and adopts it."""
    from app.registry.convert import start_conversion

    image = await _not_streamable(acr_front_referrers, "adopt")
    h = await _harness(acr_front_referrers, sleep=None)
    ref = parse_image(image)
    first = await h.apply(image)  # looked up and booked; the worker is not running yet
    assert STARTED in _image_warning(first, image)
    source = h.admission.verdicts
    assert isinstance(source, RegistryVerdictSource)
    digest = h.remediator.tracked[next(iter(h.remediator.tracked))].digest
    await start_conversion(source.transport(ref.registry), ref.repository, digest)
    assert h.started() == 1
    async with running(h):
        await asyncio.wait_for(h.remediator.wait_idle(), 30)
        assert h.started() == 1  # the front counts new operations only
        assert ("adopted", "") in h.counts.calls and ("started", "") not in h.counts.calls
        assert ("succeeded", "") in h.counts.calls


async def test_dry_runs_and_other_namespaces_start_nothing(
    acr_front_referrers: AcrFront,
) -> None:
    image = await _not_streamable(acr_front_referrers, "dryrun")
    h = await _harness(acr_front_referrers, sleep=None)
    async with running(h):
        dry = await h.apply(image, dry_run=True)
        other = await h.apply(image, ns="team-b")
        for answer in (dry, other):
            assert _image_warning(answer, image).endswith(
                f"has no streaming artifact; fix: az acr artifact-streaming create -n "
                f"<registry name of {acr_front_referrers.host}> --image "
                f"{image.split('/', 1)[1]}"
            )
        await asyncio.sleep(0.3)
        assert h.started() == 0 and h.remediator.tracked == {}


async def test_a_refused_write_turns_remediation_off_for_that_registry_until_the_policy_changes(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    first_image, second_image = (await _missing_artifact(front, "refused"))[:2]
    with front.configured(grant_actions=["pull"]):
        h = await _harness(front, sleep=None)
        async with running(h, close=False):
            answer = await h.apply(first_image)
            assert STARTED in _image_warning(answer, first_image)
            await asyncio.wait_for(h.remediator.wait_idle(), 20)
            assert h.counts.calls == [("failed", "forbidden")]
            assert [(e[1], e[3]) for e in h.events] == [(REASON_REFUSED, False)]
            assert "push rights (grant AcrPush" in h.events[0][2]
            # Off for that registry: the warning keeps the az command, nothing is queued.
            later = await h.apply(second_image, name="b")
            assert "fix: az acr artifact-streaming create" in _image_warning(later, second_image)
            assert h.counts.calls[-1] == ("skipped", "forbidden")
            assert h.started() == 0
    # A changed policy (here: the budget) lifts it; the registry grants push again.
    h.holder[0] = policy_for(front, perHour=59)
    async with running(h):
        answer = await h.apply(second_image, name="c")
        assert STARTED in _image_warning(answer, second_image)
        await asyncio.wait_for(h.remediator.wait_idle(), 20)
        assert h.started() == 1


async def test_a_failed_conversion_is_reported_with_its_code_and_not_retried_at_once(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    images = seed(front, f"unsupported-{secrets.token_hex(4)}")  # the front fails these
    h = await _harness(front, sleep=None)
    source = h.admission.verdicts
    image = ""
    for candidate in images:
        verdict = await source.verdict(parse_image(candidate))
        if verdict.verdict is Verdict.NOT_STREAMABLE and "@" not in candidate:
            image = candidate
            break
    assert image
    async with running(h):
        await h.apply(image)
        await asyncio.wait_for(h.remediator.wait_idle(), 20)
        assert h.counts.calls == [("started", ""), ("failed", "UNSUPPORTED_PLATFORM")]
        assert h.events[0][1:] == (
            REASON_FAILED,
            f"streaming conversion of {image} failed (UNSUPPORTED_PLATFORM): "
            "only linux/amd64 images convert",
            False,
        )
        later = await h.apply(image, name="again")
        assert "streaming conversion failed (UNSUPPORTED_PLATFORM)" in _image_warning(later, image)
        assert h.started() == 1


async def test_the_hourly_budget_and_the_per_registry_rate_hold(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    images = (await _missing_artifact(front, "budget"))[:3]
    assert len(images) == 3
    h = await _harness(front, sleep=None, perHour=2)
    started = time.monotonic()
    answers = [await h.apply(image, name=f"w{i}") for i, image in enumerate(images)]
    assert [STARTED in _image_warning(a, i) for a, i in zip(answers, images, strict=True)] == [
        True,
        True,
        False,
    ]
    assert h.counts.calls == [("skipped", "budget")]
    assert time.monotonic() - started < 10
    await h.admission.verdicts.aclose()  # type: ignore[attr-defined]
