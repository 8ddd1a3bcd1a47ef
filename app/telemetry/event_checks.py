"""What keeps a forged AdmissionReview from planting Kubernetes Events (docs/security.md,
"Kubernetes Events"): the object an Event names must exist in the apiserver with the uid the
review gave, and each namespace gets only so many Events.

Anyone who reaches the webhook's port can post a review naming any namespace, object and
text. The apiserver's own reviews name objects that exist (UPDATEs, a denied Pod's
controller) or that will exist in a moment (an allowed CREATE: the uid is set before
validating admission, the object is stored after it). A forger in another namespace doesn't
know the victim object's uid, so "exists with this uid" tells the two apart.

- `KubeObjects.uid_of`: a metadata-only GET (PartialObjectMetadata) of one object of a kind
  streamgate judges or a controller of one; the uid, `None` when there is no such object,
  `UNSUPPORTED` for other kinds (no Event: it can't be confirmed).
- `Confirmations`: a short-lived cache of confirmed (namespace, kind, name, uid), so a busy
  workload costs one GET per `ttl`, not one per Event.
- `NamespaceBuckets`: a token bucket per namespace (`burst` Events, refilled at `rate` per
  second), spent only by confirmed Events, so a forger can't use up another namespace's
  budget and one noisy namespace can't flood the apiserver.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Protocol

UNSUPPORTED: Final = "\x00unsupported"
_HTTP_OK = 200
_HTTP_REDIRECT = 300
_HTTP_NOT_FOUND = 404
_NAME_MAX = 253
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

# (group, kind) -> resource: what the webhook judges (chart/templates/webhooks.yaml) and the
# controllers that own them. Other kinds (custom controllers) are never confirmed.
RESOURCES: Final[dict[tuple[str, str], str]] = {
    ("", "Pod"): "pods",
    ("", "ReplicationController"): "replicationcontrollers",
    ("apps", "Deployment"): "deployments",
    ("apps", "StatefulSet"): "statefulsets",
    ("apps", "DaemonSet"): "daemonsets",
    ("apps", "ReplicaSet"): "replicasets",
    ("batch", "Job"): "jobs",
    ("batch", "CronJob"): "cronjobs",
}


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str | None:
    """The REST path of one namespaced object of a known kind; None for other kinds, or
    for names that could not be an object's (an Event names what the review said)."""
    group, version = _group_version(api_version)
    resource = RESOURCES.get((group, kind))
    if resource is None or not _segment(version) or not _segment(namespace) or not _segment(name):
        return None
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{prefix}/namespaces/{namespace}/{resource}/{name}"


def _segment(value: str) -> bool:
    return 0 < len(value) <= _NAME_MAX and all(c in _NAME_CHARS for c in value)


class ObjectsApi(Protocol):
    """Reads an object's uid; `KubeObjects` in production, a fake in unit tests. Raises on
    failure (the Event is then not sent)."""

    def uid_of(self, api_version: str, kind: str, namespace: str, name: str) -> str | None: ...


class KubeObjects:
    """Metadata-only GETs through the official client's ApiClient, with timeouts."""

    def __init__(self, api_client: Any, *, timeout: tuple[float, float] = (5.0, 10.0)) -> None:
        self._api = api_client
        self._timeout = timeout

    def uid_of(self, api_version: str, kind: str, namespace: str, name: str) -> str | None:
        from kubernetes.client.exceptions import ApiException

        path = object_path(api_version, kind, namespace, name)
        if path is None:
            return UNSUPPORTED
        method, url, headers, _, _ = self._api.param_serialize(
            "GET", path, header_params={"Accept": _METADATA_ONLY}, auth_settings=["BearerToken"]
        )
        response = self._api.call_api(
            method, url, header_params=headers, _request_timeout=self._timeout
        )
        response.read()
        if response.status == _HTTP_NOT_FOUND:
            return None
        if not _HTTP_OK <= response.status < _HTTP_REDIRECT:
            raise ApiException(http_resp=response)
        doc = json.loads(response.data)
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        uid = meta.get("uid") if isinstance(meta, dict) else None
        return uid if isinstance(uid, str) else None


class Confirmations:
    """Confirmed objects, remembered `ttl` seconds; at most `max_keys` (oldest go first)."""

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[tuple[str, ...], float] = OrderedDict()

    def known(self, key: tuple[str, ...]) -> bool:
        at = self._seen.get(key)
        if at is None:
            return False
        if self._clock() - at >= self.ttl:
            del self._seen[key]
            return False
        return True

    def add(self, key: tuple[str, ...]) -> None:
        self._seen[key] = self._clock()
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)


class NamespaceBuckets:
    """A token bucket per namespace: `take` is True when an Event may go out now."""

    def __init__(
        self,
        *,
        rate: float = 0.2,
        burst: float = 30.0,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, namespace: str) -> bool:
        now = self._clock()
        tokens, at = self._buckets.get(namespace, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[namespace] = (tokens - 1.0 if allowed else tokens, now)
        self._buckets.move_to_end(namespace)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed
