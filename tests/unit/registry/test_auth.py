"""Authentication: challenges, basic, Docker tokens, the ACR AAD exchange, token caching,
expiry, 401 retry, where credentials may go, and that tokens never reach logs or errors."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from app.core.images import parse_image
from app.core.verdicts import Verdict
from app.registry.auth import Authenticator
from app.registry.circuit import CircuitBreaker
from app.registry.credentials import AcrAad, Anonymous, BasicAuth, Credentials
from app.registry.errors import RegistryAuthError
from app.registry.metrics import RegistryObserver
from app.registry.transport import RegistryTransport
from tests.unit.registry.test_fakes import FakeClock, FakeRegistry, FixedAad, make_source

SCOPE = "repository:demo/app:pull"


class Tokens(RegistryObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_token(self, *, registry: str, kind: str, outcome: str) -> None:
        self.seen.append((kind, outcome))


def transport_for(
    reg: FakeRegistry,
    credentials: Credentials,
    *,
    clock: FakeClock | None = None,
    observer: RegistryObserver | None = None,
    realm_hosts: tuple[str, ...] = (),
) -> RegistryTransport:
    clock = clock or FakeClock()
    http = httpx.AsyncClient(transport=reg.transport())
    auth = Authenticator(
        registry=reg.host,
        credentials=credentials,
        http=http,
        insecure=reg.scheme == "http",
        realm_hosts=realm_hosts,
        clock=clock,
        observer=observer or RegistryObserver(),
    )
    return RegistryTransport(
        registry=reg.host,
        base_url=f"{reg.scheme}://{reg.host}",
        http=http,
        auth=auth,
        circuit=CircuitBreaker(reg.host, clock=clock),
        max_body=1 << 20,
    )


async def get_manifest(transport: RegistryTransport, repo: str = "demo/app") -> int:
    response = await transport.request(
        "GET", f"/v2/{repo}/manifests/v1", scope=f"repository:{repo}:pull", endpoint="manifest"
    )
    return response.status


async def test_anonymous_bearer_token_then_up_front() -> None:
    reg = FakeRegistry(auth="bearer")
    reg.image("demo/app")
    reg.image("demo/other")
    transport = transport_for(reg, Anonymous())
    assert await get_manifest(transport) == 200
    assert reg.count("manifests") == 2 and reg.count("token") == 1  # 401, token, retry
    assert await get_manifest(transport) == 200
    assert reg.count("manifests") == 3 and reg.count("token") == 1  # cached token, no 401
    assert await get_manifest(transport, "demo/other") == 200
    assert reg.count("manifests") == 4 and reg.count("token") == 2  # new scope: token up front
    await transport.aclose()


async def test_basic_challenge_sends_basic_from_then_on() -> None:
    reg = FakeRegistry(auth="basic")
    reg.image("demo/app")
    transport = transport_for(reg, BasicAuth("u", "p"))
    assert await get_manifest(transport) == 200
    assert await get_manifest(transport) == 200
    assert reg.count("manifests") == 3  # one 401 only
    await transport.aclose()


async def test_basic_challenge_without_credentials_is_an_auth_error() -> None:
    reg = FakeRegistry(auth="basic")
    transport = transport_for(reg, Anonymous())
    with pytest.raises(RegistryAuthError) as err:
        await get_manifest(transport)
    assert err.value.reason == "registry needs a user name and password"
    await transport.aclose()


async def test_wrong_password_is_refused() -> None:
    reg = FakeRegistry(auth="basic")
    transport = transport_for(reg, BasicAuth("u", "wrong"))
    with pytest.raises(RegistryAuthError) as err:
        await get_manifest(transport)
    assert err.value.reason == "registry refused the credentials"
    await transport.aclose()


async def test_basic_credentials_go_to_the_token_service() -> None:
    reg = FakeRegistry(auth="bearer")
    reg.image("demo/app")
    seen: list[str] = []

    async def spy(request: httpx.Request) -> None:
        if request.url.path == "/token":
            seen.append(request.headers.get("authorization", ""))

    reg.hook = spy
    transport = transport_for(reg, BasicAuth("u", "p"))
    assert await get_manifest(transport) == 200
    assert seen == ["Basic dTpw"]
    await transport.aclose()


async def test_acr_exchange_once_then_one_access_token_per_repository() -> None:
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    reg.image("demo/other")
    aad = FixedAad()
    tokens = Tokens()
    transport = transport_for(reg, AcrAad(provider=aad, tenant="t1"), observer=tokens)
    assert await get_manifest(transport) == 200
    assert await get_manifest(transport, "demo/other") == 200
    assert await get_manifest(transport) == 200
    assert reg.count("oauth2/exchange") == 1
    assert reg.count("oauth2/token") == 2
    assert aad.calls == 1
    assert tokens.seen == [("aad", "ok"), ("exchange", "ok"), ("access", "ok"), ("access", "ok")]
    await transport.aclose()


async def test_acr_exchange_form_is_as_documented() -> None:
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    forms: dict[str, str] = {}

    async def spy(request: httpx.Request) -> None:
        if request.url.path.startswith("/oauth2/"):
            forms[request.url.path] = request.content.decode()

    reg.hook = spy
    transport = transport_for(reg, AcrAad(provider=FixedAad(), tenant="t1"))
    await get_manifest(transport)
    assert forms["/oauth2/exchange"] == (
        "grant_type=access_token&service=myacr.azurecr.io&access_token=aad-ok&tenant=t1"
    )
    assert forms["/oauth2/token"].startswith(
        "grant_type=refresh_token&service=myacr.azurecr.io&scope=repository%3Ademo%2Fapp%3Apull"
    )
    await transport.aclose()


async def test_access_token_expiry_from_jwt_triggers_a_new_one() -> None:
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    clock = FakeClock()
    transport = transport_for(reg, AcrAad(provider=FixedAad()), clock=clock)
    reg.jwt_exp = time.time() + 600  # a 10-minute access token
    await get_manifest(transport)
    clock.advance(500)
    await get_manifest(transport)
    assert reg.count("oauth2/token") == 1
    clock.advance(60)  # within a minute of exp (10% of 10 minutes early)
    await get_manifest(transport)
    assert reg.count("oauth2/token") == 2
    assert reg.count("oauth2/exchange") == 1  # the refresh token lives on (3 h default)
    await transport.aclose()


async def test_expires_in_is_honoured_for_refresh_tokens_default() -> None:
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    reg.token_lifetime = 120
    clock = FakeClock()
    transport = transport_for(reg, AcrAad(provider=FixedAad()), clock=clock)
    await get_manifest(transport)
    clock.advance(115)
    await get_manifest(transport)
    assert reg.count("oauth2/token") == 2  # access token from expires_in: 120 s
    clock.advance(3 * 3600)
    await get_manifest(transport)
    assert reg.count("oauth2/exchange") == 2  # refresh token past its ~3 h default
    await transport.aclose()


async def test_401_with_a_cached_token_drops_it_and_retries_once() -> None:
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    transport = transport_for(reg, AcrAad(provider=FixedAad()))
    await get_manifest(transport)
    reg.revoke_all()  # the registry forgets every token (rotation, revocation)
    assert await get_manifest(transport) == 200
    assert reg.count("oauth2/exchange") == 2
    await transport.aclose()


async def test_revoked_refresh_token_is_exchanged_again() -> None:
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    reg.image("demo/other")
    transport = transport_for(reg, AcrAad(provider=FixedAad()))
    await get_manifest(transport)
    reg.refresh_tokens.clear()
    assert await get_manifest(transport, "demo/other") == 200  # token POST 401 -> exchange
    assert reg.count("oauth2/exchange") == 2
    await transport.aclose()


async def test_refused_aad_token_is_an_auth_error() -> None:
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    transport = transport_for(reg, AcrAad(provider=FixedAad("not-accepted")))
    with pytest.raises(RegistryAuthError) as err:
        await get_manifest(transport)
    assert err.value.reason == "registry refused the credentials"
    await transport.aclose()


async def test_aad_provider_failure_is_unknown_with_a_reason() -> None:
    class Broken:
        async def get_token(self, scope: str) -> tuple[str, float]:
            raise RuntimeError("no identity here: secret-ish detail")

    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    source = make_source(reg, aad=Broken())  # type: ignore[arg-type]
    verdict = await source.verdict(parse_image("myacr.azurecr.io/demo/app:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.UNKNOWN
    assert verdict.reason == "could not get an Azure AD token"


async def test_concurrent_first_requests_share_one_exchange() -> None:
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    repos = [f"demo/app{n}" for n in range(10)]
    for repo in repos:
        reg.image(repo)
    transport = transport_for(reg, AcrAad(provider=FixedAad()))
    await get_manifest(transport)  # learn the challenge
    await asyncio.gather(*(get_manifest(transport, r) for r in repos))
    assert reg.count("oauth2/exchange") == 1
    await transport.aclose()


def realm_on(host: str, scheme: str = "https") -> str:
    return f'Bearer realm="{scheme}://{host}/token",service="reg.test"'


@pytest.mark.parametrize(
    ("credentials", "challenge", "allowed"),
    [
        (Anonymous(), realm_on("auth.other.test"), False),
        (BasicAuth("u", "p"), realm_on("auth.other.test"), False),
        (BasicAuth("u", "p"), realm_on("reg.test"), True),
        (AcrAad(provider=FixedAad()), realm_on("auth.other.test"), False),
        (Anonymous(), realm_on("reg.test", "http"), False),
        (Anonymous(), 'Bearer realm="ftp://reg.test/x"', False),
        (Anonymous(), "Bearer service=x", False),
    ],
    ids=["anon-other", "basic-other", "basic-same", "aad-other", "http", "ftp", "no-realm"],
)
async def test_where_credentials_may_go(
    credentials: Credentials, challenge: str, allowed: bool
) -> None:
    reg = FakeRegistry()
    auth = Authenticator(
        registry="reg.test",
        credentials=credentials,
        http=httpx.AsyncClient(transport=reg.transport()),
    )

    async def token_anyway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"token": "t"})

    reg.hook = token_anyway
    if allowed:
        assert await auth.answer(challenge, SCOPE) == "Bearer t"
    else:
        with pytest.raises(RegistryAuthError):
            await auth.answer(challenge, SCOPE)


async def test_listed_realm_host_may_get_basic_credentials() -> None:
    reg = FakeRegistry()

    async def token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "t2"})

    reg.hook = token
    auth = Authenticator(
        registry="reg.test",
        credentials=BasicAuth("u", "p"),
        http=httpx.AsyncClient(transport=reg.transport()),
        realm_hosts=("auth.other.test",),
    )
    assert await auth.answer(realm_on("auth.other.test"), SCOPE) == "Bearer t2"


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"token": ""}', b'{"token": "a b"}', b"nope", b'{"token": 5}'],
    ids=["empty", "blank", "space", "not-json", "number"],
)
async def test_unusable_token_answers_are_bad_responses(body: bytes) -> None:
    reg = FakeRegistry()

    async def token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    reg.hook = token
    auth = Authenticator(
        registry="reg.test",
        credentials=Anonymous(),
        http=httpx.AsyncClient(transport=reg.transport()),
    )
    with pytest.raises(Exception) as err:
        await auth.answer(realm_on("reg.test"), SCOPE)
    assert "bad answer" in str(err.value)


async def test_tokens_never_reach_logs_or_reasons(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    source = make_source(reg, aad=FixedAad("aad-ok"))
    verdict = await source.verdict(parse_image("myacr.azurecr.io/demo/app:v1"))
    reg.revoke_all()
    reg.aad_token = "something-else"  # now the exchange fails too
    source2 = make_source(reg, aad=FixedAad("aad-ok"))
    failed = await source2.verdict(parse_image("myacr.azurecr.io/demo/app:v1"))
    await source.aclose()
    await source2.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert failed.verdict is Verdict.UNKNOWN
    secrets = {"aad-ok", *(t for t in reg.access_tokens | reg.refresh_tokens)}
    secrets |= {f"access-{n}" for n in range(1, 10)} | {f"refresh-{n}" for n in range(1, 10)}
    assert "myacr.azurecr.io" in caplog.text  # the logs did say something
    text = caplog.text + verdict.reason + failed.reason
    assert not [s for s in secrets if s in text]


async def test_concurrent_first_contact_shares_one_exchange() -> None:
    """Many requests meet the first 401 together: none of them had a token, so none of the
    answers throws away the refresh token another one just fetched."""
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    repos = [f"demo/app{n}" for n in range(10)]
    for repo in repos:
        reg.image(repo)

    async def staggered(request: httpx.Request) -> None:
        # the first 401s come back at once, later ones after the exchange is done
        if request.url.path.startswith("/v2/") and "authorization" not in request.headers:
            await asyncio.sleep(0.005 * int(request.url.path.split("/")[3].removeprefix("app")))

    reg.hook = staggered
    transport = transport_for(reg, AcrAad(provider=FixedAad()))
    assert await asyncio.gather(*(get_manifest(transport, r) for r in repos)) == [200] * 10
    assert reg.count("oauth2/exchange") == 1
    await transport.aclose()
