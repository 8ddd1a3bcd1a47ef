"""The parts of an AdmissionReview streamgate reads, as a typed decoder that skips the rest.

A Pod or Deployment review is 4-15 KiB, most of it fields no decision reads (env, probes,
resources, volumes, managedFields, the last-applied annotation). `decode` builds plain dicts
holding only the envelope, the object's `apiVersion`, its metadata (names, uid, annotations,
owner references), and each pod spec's containers (name, image) and scheduling fields, so
`app.webhook.review`, `app.core.workloads`, `app.webhook.patches` and `app.telemetry.events`
read them as before. Whatever sits under a field typed `Any` is kept whole.

Anything the typed decoder does not take (a field of another type than a valid review has,
invalid JSON) returns None, and the caller parses the whole body the general way, which gives
the same answers and error messages for odd input as before.
"""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec


class _Container(TypedDict, total=False):
    name: Any
    image: Any


class _Metadata(TypedDict, total=False):
    name: Any
    generateName: Any
    namespace: Any
    uid: Any
    annotations: Any
    ownerReferences: Any


class _PodSpec(TypedDict, total=False):
    # A pod spec, or a workload's spec holding a pod template: one shape covers both, since
    # their field names differ (`containers` vs `template`/`jobTemplate`).
    containers: list[_Container] | None
    initContainers: list[_Container] | None
    ephemeralContainers: list[_Container] | None
    nodeName: Any
    nodeSelector: Any
    affinity: Any
    tolerations: Any
    runtimeClassName: Any
    imagePullSecrets: Any
    template: _Template | None
    jobTemplate: _JobTemplate | None


class _Template(TypedDict, total=False):
    metadata: _Metadata | None
    spec: _PodSpec | None


class _JobTemplate(TypedDict, total=False):
    metadata: _Metadata | None
    spec: _PodSpec | None


class _Object(TypedDict, total=False):
    apiVersion: Any
    kind: Any
    metadata: _Metadata | None
    spec: _PodSpec | None


class _Request(TypedDict, total=False):
    uid: Any
    kind: Any
    subResource: Any
    operation: Any
    namespace: Any
    name: Any
    dryRun: Any
    userInfo: Any
    object: _Object | None
    oldObject: _Object | None


class _Review(TypedDict, total=False):
    apiVersion: Any
    kind: Any
    request: _Request | None


_DECODER: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(_Review)


def decode(body: bytes) -> dict[str, Any] | None:
    """The review's needed fields as plain dicts, or None (see the module docstring)."""
    if not body.isascii():
        try:  # the typed decoder does not check the UTF-8 of the strings it skips
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return _DECODER.decode(body)
    except (msgspec.MsgspecError, RecursionError):  # nesting past msgspec's depth limit
        return None
