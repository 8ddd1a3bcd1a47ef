"""The report writer against an in-memory custom-objects API that keeps resourceVersions as
the apiserver does: unchanged content is not written, a conflict is re-read once, pacing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from app.cluster.policyreports import SELECTOR, ReportWriter, content_key
from app.core.reports import WGPOLICY


class Objects:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.calls: list[str] = []

    def _store(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        item = copy.deepcopy(body)
        item["metadata"]["resourceVersion"] = str(self.version)
        self.items[(ns, item["metadata"]["name"])] = item
        return copy.deepcopy(item)

    def list_cluster_custom_object(self, group, version, plural, label_selector, **_):
        self.calls.append(f"list {label_selector}")
        return {"items": [copy.deepcopy(i) for i in self.items.values()]}

    def create_namespaced_custom_object(self, group, version, ns, plural, body, **_):
        self.calls.append("create")
        if (ns, body["metadata"]["name"]) in self.items:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(ns, body)

    def replace_namespaced_custom_object(
        self, *args, **_
    ):  # group, version, ns, plural, name, body
        _, _, ns, _, name, body = args
        self.calls.append("replace")
        current = self.items.get((ns, name))
        if current is None:
            raise ApiException(status=404, reason="Not Found")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._store(ns, body)

    def get_namespaced_custom_object(self, group, version, ns, plural, name, **_):
        self.calls.append("get")
        if (ns, name) not in self.items:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.items[(ns, name)])

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, **_):
        self.calls.append("delete")
        if self.items.pop((ns, name), None) is None:
            raise ApiException(status=404, reason="Not Found")


def doc(ns: str = "shop", result: str = "pass") -> dict[str, Any]:
    return {
        "apiVersion": WGPOLICY,
        "kind": "PolicyReport",
        "metadata": {
            "name": f"streamgate-{ns}",
            "namespace": ns,
            "labels": {"app.kubernetes.io/managed-by": "streamgate"},
        },
        "summary": {"pass": 1},
        "results": [{"policy": "artifact-streaming", "result": result}],
    }


def writer(api: Objects, **kw: Any) -> ReportWriter:
    w = ReportWriter(None, api=WGPOLICY, **kw)
    w._api = api
    return w


def test_writes_only_what_changed_and_resumes_from_the_api():
    api = Objects()
    w = writer(api, writes_per_second=0)
    assert w.apply(doc()) is True and api.calls == ["create"]
    assert w.apply(doc()) is False and api.calls == ["create"]  # the same: no request
    assert w.apply(doc(result="fail")) is True and api.calls[-1] == "replace"
    successor = writer(api, writes_per_second=0)
    successor.resume()
    assert api.calls[-1] == f"list {SELECTOR}"
    assert successor.names("shop") == {"streamgate-shop"}
    assert successor.apply(doc(result="fail")) is False  # already there: nothing written
    successor.delete("shop", "streamgate-shop")
    assert api.items == {} and successor.deletes == 1
    successor.delete("shop", "streamgate-shop")  # already gone: fine


def test_a_conflict_is_read_again_once():
    api = Objects()
    w = writer(api, writes_per_second=0)
    w.apply(doc())
    other = writer(api, writes_per_second=0)  # another writer changed it meanwhile
    other.resume()
    other.apply(doc(result="warn"))
    assert w.apply(doc(result="fail")) is True
    assert api.calls[-3:] == ["replace", "get", "replace"] and w.conflicts == 1
    assert api.items[("shop", "streamgate-shop")]["results"][0]["result"] == "fail"
    api.items.clear()  # deleted by someone: created again
    assert w.apply(doc(result="pass")) is True and api.calls[-1] == "create"


def test_writes_are_paced():
    api = Objects()
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    w = writer(api, writes_per_second=4, clock=lambda: now[0], sleep=sleep)
    for ns in ("a", "b", "c"):
        w.apply(doc(ns))
    assert slept == [pytest.approx(0.25), pytest.approx(0.25)]


def test_the_content_key_ignores_what_the_server_sets():
    stored = doc()
    stored["metadata"].update(resourceVersion="9", uid="u", creationTimestamp="t", generation=3)
    assert content_key(stored) == content_key(doc())
    assert content_key(doc(result="fail")) != content_key(doc())
