"""Kubernetes Events about decisions (app/telemetry/events.py), with an in-memory events API: which
decisions make one, on which object, rate limits and series, the bounded queue, failures,
and the admission hook. Against the real apiserver: tests/e2e/test_events_e2e.py."""

from __future__ import annotations

import dataclasses
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


async def test_denied_create_without_controller_makes_no_event() -> None:
    # never stored, no controller: nothing an Event could be confirmed by (a forger could
    # name any object); the denial itself went to whoever created it
    req = request(pod(PLAIN))
    assert event_for(req, await decided(req, mode="enforce")) is None


async def test_denied_update_keeps_the_uid_of_the_stored_object() -> None:
    old = pod(GOOD)
    new = pod(PLAIN, uid="")
    req = request(new, op="UPDATE", old=old)
    event = event_for(req, await decided(req, mode="enforce"))
    assert event is not None and event.involved.uid == "uid-1"


async def test_denials_come_first_and_the_message_is_bounded() -> None:
    images = [f"{ACR}/plain{i}:v1" for i in range(20)]
    obj = pod(images[0], owner=True)  # denied: the Event goes on the controller
    obj["spec"]["containers"] = [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]
    obj["spec"]["imagePullSecrets"] = [{"name": "s"}]
    answers = {im: ImageVerdict(Verdict.NOT_STREAMABLE) for im in images}
    pol = parse_policy({"mode": "enforce", "denyControlledPods": True})
    adm = Admission(policy=lambda: pol, verdicts=MemoryVerdicts(answers), placement=NoInventory())
    req = request(obj)
    decision, _ = await adm.decide(req)
    event = event_for(req, decision)
    assert event is not None
    assert len(event.message) <= 1024 and event.message.endswith("…")
    assert event.message.startswith("Pod web: c0: ")  # a denial, before the pull-secrets warning


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


class FakeObjects:
    """The apiserver's objects: (kind, namespace, name) -> uid; by default the ones the
    tests here name, with the uids they give."""

    def __init__(self, objects: dict[tuple[str, str, str], str] | None = None) -> None:
        if objects is None:
            objects = {("Pod", "shop", "web"): "uid-1", ("Pod", "shop", "api"): "uid-2"}
            objects.update({("Pod", "shop", f"p{i}"): f"u{i}" for i in range(10)})
            objects[("ReplicaSet", "shop", "web-5d4")] = "rs-uid"
        self.objects = objects
        self.asked: list[tuple[str, str, str]] = []
        self.after_first_ask: dict[tuple[str, str, str], str] = {}

    def uid_of(self, api_version: str, kind: str, namespace: str, name: str) -> str | None:
        self.asked.append((kind, namespace, name))
        found = self.objects.get((kind, namespace, name))
        self.objects.update(self.after_first_ask)
        return found


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
    kw.setdefault("objects", FakeObjects())
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
        denied_req = request(pod(PLAIN), op="UPDATE", old=pod(GOOD))
        rec.record(denied_req, await decided(denied_req, mode="enforce"))  # other reason
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
    rec = recorder(api, Clock(), results, objects=FakeObjects({("Pod", "shop", "x" * 253): "u"}))
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


# ---- forged reviews: only objects that exist with that uid ----------------------------------


async def test_no_event_on_an_object_that_does_not_exist_with_that_uid() -> None:
    api, results = FakeApi(), []
    objects = FakeObjects({("Pod", "other", "victim"): "real-uid"})
    rec = recorder(api, Clock(), results, objects=objects, confirm_delays=(0.01, 0.01))
    forged = [
        request(pod(PLAIN, name="victim", uid="guessed"), op="UPDATE"),  # wrong uid
        request(pod(PLAIN, name="ghost", uid="g"), op="UPDATE"),  # no such object
        request(pod(PLAIN, name="ghost", uid="g2")),  # a CREATE that never gets stored
    ]
    rec.start()
    try:
        for written in forged:
            req = dataclasses.replace(written, namespace="other")
            rec.record(req, await decided(req))
        assert rec.flush()
    finally:
        rec.stop()
    assert api.created == [] and api.patched == []
    assert results == ["unconfirmed"] * 3
    assert objects.asked.count(("Pod", "other", "ghost")) == 1 + 3  # the CREATE waited


async def test_an_allowed_create_waits_for_its_object() -> None:
    api, results = FakeApi(), []
    objects = FakeObjects({})
    # stored after admission: the first look finds nothing, the next one finds it
    objects.after_first_ask = {("Pod", "shop", "web"): "uid-1"}
    rec = recorder(api, Clock(), results, objects=objects, confirm_delays=(0.05, 0.05, 0.05))
    req = request(pod(PLAIN))
    rec.start()
    try:
        rec.record(req, await decided(req))
        assert rec.flush()
    finally:
        rec.stop()
    assert results == ["sent"] and len(api.created) == 1
    assert len(objects.asked) == 2


async def test_confirmations_are_cached_and_unknown_kinds_never_confirmed() -> None:
    api, clock, results = FakeApi(), Clock(), []
    objects = FakeObjects()
    rec = recorder(api, clock, results, objects=objects, confirm_ttl=30)
    from app.telemetry.events import ObjectRef

    web = ObjectRef("v1", "Pod", "shop", "web", "uid-1")
    for _ in range(3):
        clock.now += 301  # past the per-object limit each time
        rec.send(PendingEvent(web, REASON_WARNING, "m", 1))
    assert objects.asked == [("Pod", "shop", "web")] * 3  # 301s apart: past the cache ttl
    objects.asked.clear()
    for _ in range(3):
        rec.send(PendingEvent(web, REASON_WARNING, "m", 1))
    assert objects.asked == []  # within the ttl: no GET
    from app.telemetry.event_checks import UNSUPPORTED, KubeObjects, object_path

    assert object_path("example.com/v1", "Rollout", "shop", "r") is None
    assert object_path("v1", "Pod", "shop", "../../secrets") is None
    assert object_path("apps/v1", "ReplicaSet", "shop", "web-5d4") == (
        "/apis/apps/v1/namespaces/shop/replicasets/web-5d4"
    )
    assert KubeObjects(None).uid_of("example.com/v1", "Rollout", "shop", "r") == UNSUPPORTED


def test_each_namespace_has_a_token_bucket_spent_only_by_confirmed_events() -> None:
    api, clock, results = FakeApi(), Clock(), []
    objects = FakeObjects({("Pod", ns, f"p{i}"): f"u{i}" for ns in ("a", "b") for i in range(6)})
    rec = recorder(api, clock, results, objects=objects, namespace_burst=3, namespace_rate=0.1)
    from app.telemetry.events import ObjectRef

    def send(ns: str, i: int, uid: str | None = None) -> None:
        ref = ObjectRef("v1", "Pod", ns, f"p{i}", uid or f"u{i}")
        rec.send(PendingEvent(ref, REASON_WARNING, "m", 1))

    for i in range(10):
        send("a", i % 6, uid="forged")  # unconfirmed: costs "a" nothing
    for i in range(5):
        send("a", i)
    send("b", 0)  # another namespace has its own bucket
    assert results[10:] == ["sent"] * 3 + ["namespace-limited"] * 2 + ["sent"]
    clock.now += 10  # one token back
    send("a", 5)
    assert results[-1] == "sent"


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


def test_notify_sends_a_normal_event_on_a_confirmed_object_once_per_interval() -> None:
    from app.telemetry.events import ObjectRef

    api, clock, results = FakeApi(), Clock(), []
    rec = recorder(api, clock, results)
    web = ObjectRef("v1", "Pod", "shop", "web", "uid-1")
    ghost = ObjectRef("v1", "Pod", "shop", "ghost", "uid-x")
    rec.start()
    try:
        rec.notify(web, "StreamingConversionSucceeded", "done " + "x" * 2000, normal=True)
        rec.notify(web, "StreamingConversionSucceeded", "again", normal=True)  # within 300 s
        rec.notify(ghost, "StreamingConversionFailed", "failed", normal=False)
        assert rec.flush()
    finally:
        rec.stop()
    assert results == ["rate-limited", "sent", "unconfirmed"]
    [(ns, body)] = api.created
    assert (ns, body["type"], body["reason"]) == ("shop", "Normal", "StreamingConversionSucceeded")
    assert body["involvedObject"]["uid"] == "uid-1" and len(body["message"]) == 1024
