"""Start and follow ACR streaming conversions (docs/aks-facts.md §5; ACR registries only).

`POST /acr/v1/<repo>/_streaming/<digest>` with the conversion format starts one and answers
202 with an operation (its `id`); `GET /acr/v1/<repo>/_operations/<id>` reports it. Starting
needs a token with `pull,push` on the repository (what azure-cli asks for); reading needs
`pull`. Nothing here deletes or tags anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from app.registry.conversion import NEVER_REQUESTED, ConversionStatus, parse_conversion
from app.registry.errors import BadResponse
from app.registry.manifests import pull_scope
from app.registry.transport import RegistryTransport
from app.registry.wire import WireResponse

CONVERSION_REQUEST = json.dumps(
    {"conversionFormat": "overlaybd", "conversionVersion": "v1"}, separators=(",", ":")
).encode()
_OPERATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def push_scope(repository: str) -> str:
    """The scope azure-cli requests to start a conversion (RepoAccessTokenPermission.PULL_PUSH)."""
    return f"repository:{repository}:pull,push"


@dataclass(frozen=True, slots=True)
class Operation:
    id: str | None  # None when ACR's answer carried no usable id
    status: ConversionStatus


def _operation(doc: dict[str, object]) -> Operation:
    raw = doc.get("id")
    op_id = raw if isinstance(raw, str) and _OPERATION_ID.match(raw) else None
    return Operation(op_id, parse_conversion(doc))


async def _acr(
    transport: RegistryTransport,
    method: str,
    path: str,
    *,
    scope: str,
    endpoint: str,
    failed: str,
    ok: tuple[int, ...] = (200,),
    body: bytes | None = None,
) -> WireResponse:
    """One `/acr/v1` call; any status outside `ok` is BadResponse("<failed> answered HTTP N")."""
    response = await transport.request(method, path, scope=scope, endpoint=endpoint, json_body=body)
    if response.status not in ok:
        raise BadResponse(transport.registry, f"{failed} answered HTTP {response.status}")
    return response


async def start_conversion(transport: RegistryTransport, repository: str, digest: str) -> Operation:
    response = await _acr(
        transport,
        "POST",
        f"/acr/v1/{repository}/_streaming/{digest}",
        scope=push_scope(repository),
        endpoint="conversion-start",
        failed="starting a conversion",
        ok=(200, 201, 202),
        body=CONVERSION_REQUEST,
    )
    return _operation(response.json_object(registry=transport.registry, what="conversion"))


async def last_operation(transport: RegistryTransport, repository: str, digest: str) -> Operation:
    """The last conversion of a digest, with its operation id (status NEVER_REQUESTED: none)."""
    response = await _acr(
        transport,
        "GET",
        f"/acr/v1/{repository}/_streaming/{digest}",
        scope=pull_scope(repository),
        endpoint="conversion",
        failed="conversion status",
        ok=(200, 404),
    )
    if response.status == 404:
        return Operation(None, NEVER_REQUESTED)
    return _operation(response.json_object(registry=transport.registry, what="conversion status"))


async def operation_status(
    transport: RegistryTransport, repository: str, operation_id: str
) -> ConversionStatus:
    response = await _acr(
        transport,
        "GET",
        f"/acr/v1/{repository}/_operations/{operation_id}",
        scope=pull_scope(repository),
        endpoint="conversion-operation",
        failed="conversion operation",
    )
    return parse_conversion(
        response.json_object(registry=transport.registry, what="conversion operation")
    )


# A repository's auto-conversion of pushed images (docs/aks-facts.md §5): azure-cli's
# `artifact-streaming show` reads `GET /acr/v1/<repo>/_streaming` with a pull token, and
# `artifact-streaming update` posts the body below with a pull,push token.
AUTO_CONVERSION_ON = json.dumps(
    {"convertPushedImages": True, "conversionFormat": "overlaybd", "conversionVersion": "v1"},
    separators=(",", ":"),
).encode()


def _convert_pushed(doc: dict[str, object], registry: str) -> bool:
    value = doc.get("convertPushedImages")
    if not isinstance(value, bool):
        raise BadResponse(
            registry, "the repository's streaming settings carry no convertPushedImages"
        )
    return value


async def auto_conversion(transport: RegistryTransport, repository: str) -> bool:
    """Whether ACR converts the images pushed to this repository."""
    response = await _acr(
        transport,
        "GET",
        f"/acr/v1/{repository}/_streaming",
        scope=pull_scope(repository),
        endpoint="auto-conversion",
        failed="the repository's streaming settings",
    )
    doc = response.json_object(registry=transport.registry, what="streaming settings")
    return _convert_pushed(doc, transport.registry)


async def enable_auto_conversion(transport: RegistryTransport, repository: str) -> bool:
    """Turn on the conversion of pushed images; the setting ACR answers (True when on)."""
    response = await _acr(
        transport,
        "POST",
        f"/acr/v1/{repository}/_streaming",
        scope=push_scope(repository),
        endpoint="auto-conversion-set",
        failed="setting the repository's auto-conversion",
        ok=(200, 201, 202),
        body=AUTO_CONVERSION_ON,
    )
    doc = response.json_object(registry=transport.registry, what="streaming settings")
    return _convert_pushed(doc, transport.registry)
