"""Leader election against an in-memory Lease API that refuses stale resourceVersions as the
apiserver does (the real apiserver: tests/e2e/test_reporter_e2e.py)."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from app.cluster.lease import LeaderElector


class Lease:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        spec = self.body["spec"]
        acquire = spec.get("acquireTime")
        return {
            "metadata": {"resource_version": self.body["metadata"]["resourceVersion"]},
            "spec": {
                "holder_identity": spec.get("holderIdentity"),
                "lease_duration_seconds": spec.get("leaseDurationSeconds"),
                "renew_time": spec.get("renewTime"),
                "acquire_time": datetime.fromisoformat(acquire) if acquire else None,
                "lease_transitions": spec.get("leaseTransitions"),
            },
        }


class LeaseApi:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("apiserver unreachable")

    def read_namespaced_lease(self, name: str, ns: str, **_: Any) -> Lease:
        self._check()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return Lease(copy.deepcopy(self.lease))

    def create_namespaced_lease(self, ns: str, body: dict[str, Any], **_: Any) -> None:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self._store(body)

    def replace_namespaced_lease(self, name: str, ns: str, body: dict[str, Any], **_: Any) -> None:
        self._check()
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self._store(body)

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)


def candidate(api: LeaseApi, identity: str, now: list[float]) -> LeaderElector:
    elector = LeaderElector(
        None,
        namespace="ns",
        name="reporter",
        identity=identity,
        lease_seconds=15,
        renew_deadline_seconds=10,
        clock=lambda: now[0],
        wall=lambda: 1_800_000_000 + now[0],
    )
    elector._api = api
    return elector


def test_the_first_candidate_creates_the_lease_and_renews_it_the_other_waits():
    api, now = LeaseApi(), [0.0]
    a, b = candidate(api, "a", now), candidate(api, "b", now)
    assert a.step() is True and api.lease["spec"]["holderIdentity"] == "a"
    assert b.step() is False and b.holder == "a"
    for _ in range(20):  # a renews every 2 s: b never sees the lease run out
        now[0] += 2
        assert a.step() is True
        assert b.step() is False
    assert api.lease["spec"]["leaseTransitions"] == 0
    assert api.lease["spec"]["renewTime"].endswith("Z")


def test_a_lease_not_renewed_for_its_duration_is_taken_over_once():
    api, now = LeaseApi(), [0.0]
    a, b, c = (candidate(api, x, now) for x in "abc")
    a.step()
    b.step(), c.step()  # both observe a's record
    now[0] += 14
    assert b.step() is False  # not yet: 14 s < 15 s since b saw it change
    now[0] += 2
    # b and c both see it expired; c read it before b wrote: c's replace is refused (409)
    stale = c._api.read_namespaced_lease("reporter", "ns")
    assert b.step() is True
    api_read = c._api.read_namespaced_lease
    c._api.read_namespaced_lease = lambda *args, **kw: stale  # type: ignore[method-assign]
    assert c.step() is False
    c._api.read_namespaced_lease = api_read  # type: ignore[method-assign]
    assert api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1
    # the old leader notices at its next step and stops
    assert a.step() is False and not a.is_leader()


def test_a_leader_that_cannot_renew_stops_before_anyone_may_take_over():
    api, now = LeaseApi(), [0.0]
    a = candidate(api, "a", now)
    assert a.step()
    api.down = True
    now[0] += 9
    assert a.step() is True  # within the renew deadline
    now[0] += 2
    assert a.step() is False  # 11 s without renewal > 10 s deadline < 15 s lease


def test_release_lets_the_next_candidate_lead_at_once():
    api, now = LeaseApi(), [0.0]
    a, b = candidate(api, "a", now), candidate(api, "b", now)
    a.step()
    b.step()
    a.release()
    assert api.lease["spec"]["holderIdentity"] == ""
    assert not a.is_leader()
    assert b.step() is True


def test_the_renew_deadline_must_be_shorter_than_the_lease():
    with pytest.raises(ValueError, match="shorter than the lease"):
        LeaderElector(
            None, namespace="n", name="x", identity="a", lease_seconds=5, renew_deadline_seconds=5
        )
