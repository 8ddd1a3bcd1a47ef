"""The transport: bounded bodies, redirects, status mapping and the circuit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.registry.auth import Authenticator
from app.registry.circuit import CircuitBreaker, CircuitState
from app.registry.credentials import Anonymous, BasicAuth, Credentials
from app.registry.errors import (
    BadResponse,
    RegistryAuthError,
    RegistryError,
    RegistryTimeout,
    RegistryUnavailable,
)
from app.registry.transport import RegistryTransport
from app.registry.wire import WireResponse

Handler = httpx.MockTransport


def make(
    handler: object,
    *,
    credentials: Credentials | None = None,
    limit: int = 1024,
    base: str = "https://reg.test",
) -> RegistryTransport:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    auth = Authenticator(registry="reg.test", credentials=credentials or Anonymous(), http=http)
    return RegistryTransport(
        registry="reg.test",
        base_url=base,
        http=http,
        auth=auth,
        circuit=CircuitBreaker("reg.test", failure_threshold=2),
        max_body=limit,
    )


async def get(transport: RegistryTransport, target: str = "/v2/a/manifests/v1") -> WireResponse:
    return await transport.request("GET", target, scope="repository:a:pull", endpoint="manifest")


async def test_body_within_limit_is_read() -> None:
    transport = make(lambda r: httpx.Response(200, content=b"x" * 1024))
    assert (await get(transport)).body == b"x" * 1024


async def test_declared_oversize_body_is_refused_unread() -> None:
    transport = make(lambda r: httpx.Response(200, headers={"Content-Length": "1025"}))
    with pytest.raises(BadResponse, match="too large"):
        await get(transport)


async def test_streamed_oversize_body_stops_reading_past_the_limit() -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(10_000):
            produced += 100
            yield b"y" * 100

    transport = make(lambda r: httpx.Response(200, content=endless()))
    with pytest.raises(BadResponse) as err:
        await get(transport)
    assert err.value.reason == "registry sent a bad answer: manifest answer too large"
    assert produced <= 1200  # not read to the end


async def test_same_origin_redirect_is_followed_with_credentials() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization", "")))
        if request.url.path == "/v2/a/manifests/v1":
            return httpx.Response(307, headers={"Location": "/v2/a/manifests/moved"})
        if not request.headers.get("authorization"):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(200, content=b"ok")

    transport = make(handler, credentials=BasicAuth("u", "p"))
    assert (await get(transport)).body == b"ok"
    assert seen[-1][0] == "/v2/a/manifests/moved" and seen[-1][1].startswith("Basic ")


async def test_redirect_to_another_host_with_credentials_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "evil.test":
            return httpx.Response(200, content=b"stolen")
        if not request.headers.get("authorization"):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(302, headers={"Location": "https://evil.test/x"})

    transport = make(handler, credentials=BasicAuth("u", "p"))
    with pytest.raises(BadResponse, match="redirect to another host"):
        await get(transport)


async def test_anonymous_redirect_to_another_host_is_refused() -> None:
    """Issue 18 finding 7: a registry that needs no credentials could otherwise point
    streamgate at any host inside the cluster's network (blind SSRF)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "10.0.0.1":
            return httpx.Response(200, content=b"internal")
        return httpx.Response(302, headers={"Location": "https://10.0.0.1/admin"})

    with pytest.raises(BadResponse, match="redirect to another host") as err:
        await get(make(handler))
    assert seen == ["reg.test"]  # never asked
    assert "10.0.0.1" in str(err.value)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("http://reg.test/v2/x", "redirect to plain HTTP"),
        ("ftp://reg.test/x", "not HTTP"),
        ("/v2/a/manifests/v1", "too many redirects"),
    ],
    ids=["downgrade", "scheme", "loop"],
)
async def test_bad_redirects(location: str, message: str) -> None:
    transport = make(lambda r: httpx.Response(301, headers={"Location": location}))
    with pytest.raises(BadResponse, match=message):
        await get(transport)


async def test_link_to_another_host_is_refused() -> None:
    transport = make(lambda r: httpx.Response(200))
    with pytest.raises(BadResponse, match="link to another host"):
        await get(transport, "https://evil.test/v2/a/referrers/x")
    assert (await get(transport, "https://reg.test/v2/a/referrers/x?last=1")).status == 200


async def test_second_401_is_an_auth_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    with pytest.raises(RegistryAuthError, match="refused"):
        await get(make(handler, credentials=BasicAuth("u", "p")))


async def test_403_is_an_auth_error() -> None:
    with pytest.raises(RegistryAuthError, match="denied"):
        await get(make(lambda r: httpx.Response(403)))


async def test_5xx_and_transport_errors_open_the_circuit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    transport = make(handler)
    with pytest.raises(RegistryUnavailable):
        await get(transport)
    transport.http._transport = httpx.MockTransport(lambda r: httpx.Response(503))
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        await get(transport)
    assert transport.circuit.state is CircuitState.OPEN


async def test_timeouts_map_to_registry_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(RegistryTimeout):
        await get(make(handler))


async def test_bad_answers_do_not_count_as_registry_failures() -> None:
    transport = make(lambda r: httpx.Response(200, headers={"Content-Length": "99999"}))
    for _ in range(3):
        with pytest.raises(RegistryError):
            await get(transport)
    assert transport.circuit.state is CircuitState.CLOSED


async def test_plain_http_base_and_accept_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    transport = make(handler, base="http://127.0.0.1:5000")
    await transport.request(
        "HEAD", "/v2/a/manifests/v1", scope="s", endpoint="manifest", accept=("a/b", "c/d")
    )
    assert str(seen[0].url) == "http://127.0.0.1:5000/v2/a/manifests/v1"
    assert seen[0].headers["accept"] == "a/b, c/d"
