"""The AdmissionReview envelope: parsed and checked at the boundary, answered in kind.

Exceptions: `ReviewError` (the review itself is malformed: the server answers HTTP 400 with
its message). The object inside the review stays a plain mapping; only the envelope is typed.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SUPPORTED_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class ReviewError(ValueError):
    """The request is not a usable AdmissionReview; `str()` is the reason for the 400."""


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _GroupVersionKind(_Loose):
    group: str = ""
    version: str = ""
    kind: str


class _UserInfo(_Loose):
    username: str = ""


class _Request(_Loose):
    uid: str = Field(min_length=1)
    kind: _GroupVersionKind
    sub_resource: str = Field("", alias="subResource")
    operation: str
    namespace: str = ""
    name: str = ""
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = Field(None, alias="oldObject")
    dry_run: bool = Field(False, alias="dryRun")
    user_info: _UserInfo = Field(default_factory=_UserInfo, alias="userInfo")


class _Review(_Loose):
    api_version: str = Field(alias="apiVersion")
    kind: str
    request: _Request


@dataclass(frozen=True, slots=True)
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


def _where(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{loc}: {first['msg']}"


def parse_review(body: bytes) -> AdmissionRequest:
    """Decode and check an AdmissionReview request body."""
    if not body:
        raise ReviewError("empty body: expected an AdmissionReview")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ReviewError(f"body is not valid UTF-8 JSON: {err}") from err
    if not isinstance(data, dict):
        raise ReviewError("body is not a JSON object: expected an AdmissionReview")
    if data.get("kind") != "AdmissionReview":
        raise ReviewError(f"kind is {data.get('kind')!r}, expected 'AdmissionReview'")
    if data.get("apiVersion") not in SUPPORTED_VERSIONS:
        raise ReviewError(
            f"apiVersion {data.get('apiVersion')!r} is not supported; use admission.k8s.io/v1"
        )
    if not isinstance(data.get("request"), dict):
        raise ReviewError("request is missing: expected an AdmissionReview request")
    try:
        review = _Review.model_validate(data)
    except ValidationError as err:
        raise ReviewError(f"malformed AdmissionReview: {_where(err)}") from err
    req = review.request
    if req.operation in ("CREATE", "UPDATE") and req.object is None:
        raise ReviewError(f"request.object is missing for {req.operation}")
    return AdmissionRequest(
        api_version=review.api_version,
        uid=req.uid,
        group=req.kind.group,
        kind=req.kind.kind,
        sub_resource=req.sub_resource,
        operation=req.operation,
        namespace=req.namespace,
        name=req.name,
        obj=req.object,
        old_obj=req.old_object,
        dry_run=req.dry_run,
        user=req.user_info.username,
    )


@dataclass(frozen=True, slots=True)
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
        response["warnings"] = list(answer.warnings)
    if answer.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(answer.patch))).decode()
    return orjson.dumps(
        {"apiVersion": request.api_version, "kind": "AdmissionReview", "response": response}
    )
