"""The AdmissionReview envelope: parsed and checked at the boundary, answered in kind.

Exceptions: `ReviewError` (the review itself is malformed: the server answers HTTP 400 with
its message). The object inside the review stays a plain mapping; only the envelope is typed.

The envelope is checked by hand, field by field, in the order the fields are read: every
admission passes through here, and a validation library walking the whole request (and
copying `object`) cost more than the rest of the parsing (docs/benchmarks.md). The messages
name the field the way the apiserver spells it: `request.uid: Field required`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.workloads import GROUPS
from app.webhook import reviewfields

SUPPORTED_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class ReviewError(ValueError):
    """The request is not a usable AdmissionReview; `str()` is the reason for the 400."""


# AdmissionRequest, AdmissionAnswer (and app.core.workloads.Workload) are made on every admission:
# not frozen, because a frozen dataclass's __init__ sets each field through object.__setattr__
# (three times the cost). Nothing assigns to them after they are built.
@dataclass(slots=True)
class AdmissionRequest:
    api_version: str
    uid: str
    group: str
    kind: str
    sub_resource: str
    operation: str
    namespace: str
    name: str
    obj: Mapping[str, Any] | None
    old_obj: Mapping[str, Any] | None
    dry_run: bool
    user: str


def judging_request(
    kind: str, namespace: str, name: str, obj: Mapping[str, Any], *, source: str, user: str
) -> AdmissionRequest:
    """The dry-run CREATE that judges a stored object as if it were applied now (`scan`, the
    reporter): uid `<source>/<namespace>/<kind>/<name>`."""
    return AdmissionRequest(
        api_version="admission.k8s.io/v1",
        uid=f"{source}/{namespace}/{kind}/{name}",
        group=GROUPS[kind],
        kind=kind,
        sub_resource="",
        operation="CREATE",
        namespace=namespace,
        name=name,
        obj=obj,
        old_obj=None,
        dry_run=True,
        user=user,
    )


_MISSING: Any = object()
# JSON strings a lenient reader takes for booleans (the apiserver always sends true/false).
_TRUE = frozenset(("true", "1", "yes", "on", "t", "y"))
_FALSE = frozenset(("false", "0", "no", "off", "f", "n"))


def _malformed(where: str, why: str) -> ReviewError:
    return ReviewError(f"malformed AdmissionReview: {where}: {why}")


def _string(data: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, _MISSING)
    if type(value) is str:
        return value
    if value is _MISSING:
        if default is not None:
            return default
        raise _malformed(f"{where}.{key}", "Field required")
    raise _malformed(f"{where}.{key}", "Input should be a valid string")


def _mapping(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
    """The JSON object under `key`; None when absent or null."""
    value = data.get(key)
    if value is None or type(value) is dict:
        return value
    raise _malformed(f"{where}.{key}", "Input should be a valid dictionary")


def _boolean(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data.get(key, False)
    if value is True or value is False:
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise _malformed(f"{where}.{key}", "Input should be a valid boolean")


def parse_review(body: bytes) -> AdmissionRequest:
    """Decode and check an AdmissionReview request body."""
    if not body:
        raise ReviewError("empty body: expected an AdmissionReview")
    data = reviewfields.decode(body)  # the fast way: only the fields streamgate reads
    if data is None:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ReviewError(f"body is not valid UTF-8 JSON: {err}") from err
    if type(data) is not dict:
        raise ReviewError("body is not a JSON object: expected an AdmissionReview")
    if data.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind is {data.get('kind')!r}, expected 'AdmissionReview'")
    api_version = data.get("apiVersion")
    if api_version not in SUPPORTED_VERSIONS:
        raise ReviewError(f"apiVersion {api_version!r} is not supported; use admission.k8s.io/v1")
    req = data.get("request")
    if type(req) is not dict:
        raise ReviewError("request is missing: expected an AdmissionReview request")
    uid = _string(req, "uid", "request")
    if not uid:
        raise _malformed("request.uid", "String should have at least 1 character")
    gvk = req.get("kind", _MISSING)
    if gvk is _MISSING:
        raise _malformed("request.kind", "Field required")
    if type(gvk) is not dict:
        raise _malformed("request.kind", "Input should be a valid dictionary")
    group = _string(gvk, "group", "request.kind", "")
    _string(gvk, "version", "request.kind", "")
    kind = _string(gvk, "kind", "request.kind")
    sub_resource = _string(req, "subResource", "request", "")
    operation = _string(req, "operation", "request")
    namespace = _string(req, "namespace", "request", "")
    name = _string(req, "name", "request", "")
    obj = _mapping(req, "object", "request")
    old_obj = _mapping(req, "oldObject", "request")
    dry_run = _boolean(req, "dryRun", "request")
    user_info = req.get("userInfo", _MISSING)
    if user_info is _MISSING:
        user = ""
    elif type(user_info) is dict:
        user = _string(user_info, "username", "request.userInfo", "")
    else:
        raise _malformed("request.userInfo", "Input should be a valid dictionary")
    if obj is None and operation in ("CREATE", "UPDATE"):
        raise ReviewError(f"request.object is missing for {operation}")
    return AdmissionRequest(
        api_version=api_version,
        uid=uid,
        group=group,
        kind=kind,
        sub_resource=sub_resource,
        operation=operation,
        namespace=namespace,
        name=name,
        obj=obj,
        old_obj=old_obj,
        dry_run=dry_run,
        user=user,
    )


@dataclass(slots=True)
class AdmissionAnswer:
    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()
    patch: tuple[Mapping[str, Any], ...] = ()


def render(request: AdmissionRequest, answer: AdmissionAnswer) -> bytes:
    """The AdmissionReview response body, echoing the request's apiVersion and uid."""
    response: dict[str, Any] = {"uid": request.uid, "allowed": answer.allowed}
    if not answer.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": answer.message}
    elif answer.message:
        response["status"] = {"code": 200, "message": answer.message}
    if answer.warnings:
        response["warnings"] = answer.warnings
    if answer.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(answer.patch)).decode()
    return orjson.dumps(
        {"apiVersion": request.api_version, "kind": "AdmissionReview", "response": response}
    )
