"""Kubernetes Events about decisions (app/telemetry/events.py), with an in-memory events API: which
decisions make one, on which object, rate limits and series, the bounded queue, failures,
and the admission hook. Against the real apiserver: tests/e2e/test_events_e2e.py."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest

from app.cli.main import EXIT_USAGE, main
from app.core.policy import parse_policy
from app.core.pools import NoInventory
from app.core.verdicts import ImageVerdict, Verdict
from app.telemetry.events import (
    REASON_DENIED,
    REASON_WARNING,
    EventGone,
    EventRecorder,
    PendingEvent,
    event_for,
)
from app.webhook.admission import Admission
from app.webhook.review import AdmissionRequest
from tests.memory import MemoryVerdicts

ACR = "myreg.azurecr.io"
PLAIN = f"{ACR}/plain:v1"
GOOD = f"{ACR}/good:v1"


def admission(**policy: Any) -> Admission:
    pol = parse_policy(policy)
    return Admission(
        policy=lambda: pol,
        verdicts=MemoryVerdicts({PLAIN: ImageVerdict(Verdict.NOT_STREAMABLE)}),
        placement=NoInventory(),
    )


def pod(image: str, *, name: str = "web", uid: str = "uid-1", owner: bool = False) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": "shop"}
    if uid:
        meta["uid"] = uid
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-5d4",
                "uid": "rs-uid",
                "controller": True,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def request(obj: dict, *, op: str = "CREATE", dry_run: bool = False, old=None) -> AdmissionRequest:
    return AdmissionRequest(
        api_version="admission.k8s.io/v1",
        uid="req-1",
        group="",
        kind="Pod",
        sub_resource="",
        operation=op,
        namespace="shop",
        name=obj["metadata"].get("name", ""),
        obj=obj,
        old_obj=old,
        dry_run=dry_run,
        user="me",
    )


async def decided(req: AdmissionRequest, **policy: Any):
    decision, _ = await admission(**policy).decide(req)
    return decision


# ---- which decisions, which object --------------------------------------------------------


async def test_warning_makes_a_warning_event_on_the_object_with_its_uid() -> None:
    req = request(pod(PLAIN))
    event = event_for(req, await decided(req))
    assert event is not None
    assert event.reason == REASON_WARNING
    assert event.message.startswith(
        "app: myreg.azurecr.io/plain:v1 has no streaming artifact; fix: az acr"
    )
    assert event.involved.as_dict() == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "shop",
        "name": "web",
        "uid": "uid-1",
    }


@pytest.mark.parametrize(
    ("req", "policy"),
    [
        (request(pod(PLAIN), dry_run=True), {}),  # dry run
        (request(pod(GOOD)), {}),  # nothing to say
        (request(pod(PLAIN)), {"mode": "audit"}),  # audit: annotations and logs only
        (request(pod(PLAIN)), {"mode": "off"}),
        (request(pod(PLAIN)), {"exemptions": {"namespaces": ["shop"]}}),
    ],
)
async def test_no_event(req: AdmissionRequest, policy: dict) -> None:
    assert event_for(req, await decided(req, **policy)) is None


async def test_denied_create_goes_on_the_controller() -> None:
    req = request(pod(PLAIN, name="web-5d4-x7k", owner=True))
    event = event_for(req, await decided(req, mode="enforce", denyControlledPods=True))
    assert event is not None and event.reason == REASON_DENIED
    assert event.involved.as_dict() == {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "namespace": "shop",
        "name": "web-5d4",
        "uid": "rs-uid",
    }
    assert event.message.startswith(
        "Pod web-5d4-x7k: app: myreg.azurecr.io/plain:v1 has no streaming artifact"
    )


async def test_denied_create_without_controller_names_the_object_without_uid() -> None:
    req = request(pod(PLAIN))
    event = event_for(req, await decided(req, mode="enforce"))
    assert event is not None and event.reason == REASON_DENIED
    assert event.involved.name == "web" and event.involved.uid == ""
    assert "uid" not in event.involved.as_dict()


async def test_denied_update_keeps_the_uid_of_the_stored_object() -> None:
    old = pod(GOOD)
    new = pod(PLAIN, uid="")
    req = request(new, op="UPDATE", old=old)
    event = event_for(req, await decided(req, mode="enforce"))
    assert event is not None and event.involved.uid == "uid-1"


async def test_denials_come_first_and_the_message_is_bounded() -> None:
    images = [f"{ACR}/plain{i}:v1" for i in range(20)]
    obj = pod(images[0])
    obj["spec"]["containers"] = [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]
    obj["spec"]["imagePullSecrets"] = [{"name": "s"}]
    answers = {im: ImageVerdict(Verdict.NOT_STREAMABLE) for im in images}
    pol = parse_policy({"mode": "enforce"})
    adm = Admission(policy=lambda: pol, verdicts=MemoryVerdicts(answers), placement=NoInventory())
    req = request(obj)
    decision, _ = await adm.decide(req)
    event = event_for(req, decision)
    assert event is not None
    assert len(event.message) <= 1024 and event.message.endswith("…")
    assert event.message.startswith("c0: ")  # a denial, before the pull-secrets warning


# ---- the recorder -------------------------------------------------------------------------


class FakeApi:
    def __init__(self) -> None:
        self.created: list[tuple[str, dict]] = []
        self.patched: list[tuple[str, str, dict]] = []
        self.gone: set[str] = set()
        self.fail = False
        self.block: threading.Event | None = None

    def create(self, namespace: str, body: Any) -> None:
        if self.block is not None:
            self.block.wait(5)
        if self.fail:
            raise _ApiError()
        self.created.append((namespace, dict(body)))

    def patch(self, namespace: str, name: str, body: Any) -> None:
        if self.fail:
            raise _ApiError()
        if name in self.gone:
            raise EventGone(name)
        self.patched.append((namespace, name, dict(body)))


class _ApiError(Exception):
    status = 500
    reason = "Internal Server Error"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


WALL = dt.datetime(2026, 11, 27, 19, 0, 0, tzinfo=dt.UTC)


def recorder(api: FakeApi, clock: Clock, results: list[str], **kw: Any) -> EventRecorder:
    return EventRecorder(
        api,
        interval=300,
        on_result=results.append,
        instance="streamgate-abc",
        clock=clock,
        wall=lambda: WALL,
        **kw,
    )


async def test_recorder_sends_rate_limits_and_patches_the_series() -> None:
    api, clock, results = FakeApi(), Clock(), []
    rec = recorder(api, clock, results)
    req = request(pod(PLAIN))
    decision = await decided(req)
    rec.start()
    try:
        rec.record(req, decision)
        assert rec.flush()
        ((namespace, body),) = api.created
        assert namespace == "shop"
        assert body["involvedObject"]["uid"] == "uid-1"
        assert body["reason"] == REASON_WARNING and body["type"] == "Warning"
        assert body["count"] == 1 and body["firstTimestamp"] == "2026-11-27T19:00:00Z"
        assert body["source"] == {"component": "streamgate"}
        assert body["reportingComponent"] == "streamgate"
        assert body["reportingInstance"] == "streamgate-abc"
        assert body["metadata"]["name"].startswith("web.")

        for _ in range(3):  # within the interval: counted, not sent
            rec.record(req, decision)
        assert rec.flush()
        assert len(api.created) == 1 and api.patched == []
        assert results == ["sent", "rate-limited", "rate-limited", "rate-limited"]

        clock.now += 301  # the next one is sent: it stands for itself and the 3 held back
        rec.record(req, decision)
        assert rec.flush()
        ((_, name, patch),) = api.patched
        assert name == body["metadata"]["name"]
        assert patch["count"] == 5 and "lastTimestamp" in patch and patch["message"]
        assert results[-1] == "sent"

        clock.now += 301
        api.gone.add(name)  # expired in the apiserver: a new Event
        rec.record(req, decision)
        assert rec.flush()
        assert len(api.created) == 2 and api.created[1][1]["count"] == 1

        clock.now += 3600  # past the series window: a new Event, not a patch
        rec.record(req, decision)
        assert rec.flush()
        assert len(api.created) == 3
    finally:
        rec.stop()


async def test_other_reason_or_object_is_not_rate_limited() -> None:
    api, clock, results = FakeApi(), Clock(), []
    rec = recorder(api, clock, results)
    warn_req = request(pod(PLAIN))
    other_req = request(pod(PLAIN, name="api", uid="uid-2"))
    rec.start()
    try:
        rec.record(warn_req, await decided(warn_req))
        rec.record(warn_req, await decided(warn_req, mode="enforce"))  # denied: other reason
        rec.record(other_req, await decided(other_req))
        assert rec.flush()
        reasons = sorted((b["involvedObject"]["name"], b["reason"]) for _, b in api.created)
        assert reasons == [("api", REASON_WARNING), ("web", REASON_DENIED), ("web", REASON_WARNING)]
    finally:
        rec.stop()


async def test_a_full_queue_drops_and_never_blocks() -> None:
    api, clock, results = FakeApi(), Clock(), []
    rec = recorder(api, clock, results, queue_size=2)  # not started: nothing drains
    decision = await decided(request(pod(PLAIN)))
    started = time.perf_counter()
    for i in range(5):
        req = request(pod(PLAIN, name=f"p{i}", uid=f"u{i}"))
        rec.record(req, decision)
    assert time.perf_counter() - started < 5.0  # a blocking put would wait for ever
    assert results == ["dropped", "dropped", "dropped"]


async def test_failures_are_counted_and_the_sender_goes_on() -> None:
    api, clock, results = FakeApi(), Clock(), []
    api.fail = True
    rec = recorder(api, clock, results)
    req = request(pod(PLAIN))
    rec.start()
    try:
        rec.record(req, await decided(req))
        assert rec.flush()
        assert results == ["failed"]
        api.fail = False
        other = request(pod(PLAIN, name="api", uid="uid-2"))
        rec.record(other, await decided(other))
        assert rec.flush()
        assert results == ["failed", "sent"]
    finally:
        rec.stop()


def test_long_names_stay_valid_event_names() -> None:
    api, results = FakeApi(), []
    rec = recorder(api, Clock(), results)
    event = PendingEvent(
        involved=event_for_ref("x" * 253),
        reason=REASON_WARNING,
        message="m",
        count=1,
    )
    rec.send(event)
    name = api.created[0][1]["metadata"]["name"]
    assert len(name) <= 253 and name.startswith("xxx")


def event_for_ref(name: str):
    from app.telemetry.events import ObjectRef

    return ObjectRef("v1", "Pod", "shop", name, "u")


# ---- the admission hook -------------------------------------------------------------------


async def test_admission_calls_the_hook_after_validate_only() -> None:
    adm = admission()
    seen: list[tuple[str, str]] = []
    adm.on_decision = lambda req, decision: seen.append((req.uid, decision.mode.value))
    req = request(pod(PLAIN))
    await adm.answer(req, "mutate")
    assert seen == []
    answer = await adm.answer(req, "validate")
    assert seen == [("req-1", "warn")] and answer.warnings


async def test_a_failing_hook_never_changes_the_answer() -> None:
    adm = admission(mode="enforce")

    def broken(req: AdmissionRequest, decision: Any) -> None:
        raise RuntimeError("boom")

    adm.on_decision = broken
    answer = await adm.answer(request(pod(PLAIN)), "validate")
    assert answer.allowed is False and "no streaming artifact" in answer.message


def test_serve_events_needs_a_kubeconfig(tmp_path, capsys) -> None:
    code = main(["serve", "--self-signed", str(tmp_path), "--events"])
    assert code == EXIT_USAGE
    assert "--events needs --kubeconfig" in capsys.readouterr().err
