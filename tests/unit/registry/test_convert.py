"""Starting and following ACR conversions over the wire (app/registry/convert.py), against the
in-memory registry: the request ACR gets, the scope asked for, and answers that don't fit."""

from __future__ import annotations

import json

import httpx
import pytest

from app.registry.conversion import ConversionState
from app.registry.convert import (
    last_operation,
    operation_status,
    push_scope,
    start_conversion,
)
from app.registry.errors import BadResponse, RegistryAuthError
from tests.unit.registry.test_fakes import FakeRegistry, transport_to

DIGEST = "sha256:" + "a" * 64


def test_push_scope_is_what_azure_cli_asks_for() -> None:
    assert push_scope("team/web") == "repository:team/web:pull,push"


async def test_start_posts_the_conversion_format_and_reads_the_operation() -> None:
    reg = FakeRegistry()
    seen: list[httpx.Request] = []

    async def acr(request: httpx.Request) -> httpx.Response | None:
        seen.append(request)
        return httpx.Response(202, json={"id": "op-1", "status": "NotStarted"})

    reg.hook = acr
    transport = transport_to(reg)
    try:
        op = await start_conversion(transport, "team/web", DIGEST)
    finally:
        await transport.aclose()
    assert op.id == "op-1" and op.status.state is ConversionState.NOT_STARTED
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == f"/acr/v1/team/web/_streaming/{DIGEST}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "conversionFormat": "overlaybd",
        "conversionVersion": "v1",
    }


async def test_a_hostile_operation_id_is_not_used() -> None:
    reg = FakeRegistry()

    async def acr(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(202, json={"id": "../../v2/x\n", "status": "Running"})

    reg.hook = acr
    transport = transport_to(reg)
    try:
        op = await start_conversion(transport, "team/web", DIGEST)
    finally:
        await transport.aclose()
    assert op.id is None and op.status.state is ConversionState.RUNNING


@pytest.mark.parametrize(
    ("status", "error"), [(200, None), (400, BadResponse), (403, RegistryAuthError)]
)
async def test_answers_other_than_accepted(status: int, error: type[Exception] | None) -> None:
    reg = FakeRegistry()

    async def acr(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(status, json={"id": "op-2", "status": "Running"})

    reg.hook = acr
    transport = transport_to(reg)
    try:
        if error is None:
            assert (await start_conversion(transport, "r", DIGEST)).id == "op-2"
        else:
            with pytest.raises(error):
                await start_conversion(transport, "r", DIGEST)
    finally:
        await transport.aclose()


async def test_last_operation_and_operation_status() -> None:
    reg = FakeRegistry()
    transport = transport_to(reg)
    try:
        never = await last_operation(transport, "team/web", DIGEST)
        assert never.id is None and never.status.state is ConversionState.NEVER_REQUESTED
        reg.conversions[("team/web", DIGEST)] = {"id": "op-3", "status": "Running"}
        assert (await last_operation(transport, "team/web", DIGEST)).id == "op-3"

        async def ops(request: httpx.Request) -> httpx.Response | None:
            if request.url.path == "/acr/v1/team/web/_operations/op-3":
                return httpx.Response(
                    200, json={"id": "op-3", "status": "Failed", "errorCode": "IMAGE_NOT_RUNNABLE"}
                )
            return None

        reg.hook = ops
        status = await operation_status(transport, "team/web", "op-3")
        assert status.state is ConversionState.FAILED
        assert status.failure_code == "IMAGE_NOT_RUNNABLE"
        with pytest.raises(BadResponse):
            await operation_status(transport, "team/web", "op-unknown")  # 404 from the fake
    finally:
        await transport.aclose()
