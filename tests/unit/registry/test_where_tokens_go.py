"""Issue 18, findings 3, 5 (the `host:443` trick) and 7: where the cluster's credentials and
requests may go, end to end through `RegistryVerdictSource` with the policy's hooks, as the
server wires them (app/webhook/serve.py). Each test fails on the code before the fix."""

from __future__ import annotations

import httpx
import pytest

from app.core.images import parse_image
from app.core.policy import parse_policy
from app.core.verdicts import Verdict
from app.registry import RegistryVerdictSource
from app.registry.auth import Authenticator
from app.registry.credentials import AcrAad, Anonymous, BasicAuth, Credentials
from app.registry.errors import RegistryAuthError
from tests.unit.registry.test_fakes import FakeRegistry, FixedAad

SCOPE = "repository:demo/app:pull"


def served(policy: dict[str, object], reg: FakeRegistry, aad: FixedAad) -> RegistryVerdictSource:
    p = parse_policy(policy)
    return RegistryVerdictSource(
        p.registry,
        aad=aad,
        env={},
        transport=reg.transport(),
        acr_hosts=p.is_acr,
        aad_hosts=p.may_get_aad,
    )


async def test_a_host_under_an_acr_registries_pattern_never_gets_the_aad_token() -> None:
    # A tenant who can get a DNS name and a certificate under the pattern runs this registry.
    reg = FakeRegistry("evil.registry.contoso.com", auth="acr")
    reg.image("shop/web")
    aad = FixedAad()
    source = served({"acrRegistries": ["*.registry.contoso.com"]}, reg, aad)
    verdict = await source.verdict(parse_image("evil.registry.contoso.com/shop/web:v1"))
    await source.aclose()
    assert aad.calls == 0
    assert reg.count("oauth2/exchange") == 0
    assert verdict.verdict is Verdict.UNKNOWN  # asked anonymously: its token service refuses


async def test_a_host_listed_by_its_exact_name_gets_the_aad_token() -> None:
    reg = FakeRegistry("registry.contoso.com", auth="acr")
    reg.image("shop/web")
    aad = FixedAad()
    source = served({"acrRegistries": ["registry.contoso.com"]}, reg, aad)
    verdict = await source.verdict(parse_image("registry.contoso.com/shop/web:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert aad.calls == 1 and reg.count("oauth2/exchange") == 1


async def test_an_exact_registry_key_gets_the_aad_token_even_when_a_pattern_made_it_acr() -> None:
    reg = FakeRegistry("registry.contoso.com", auth="acr")
    reg.image("shop/web")
    aad = FixedAad()
    policy = {
        "acrRegistries": ["*.contoso.com"],
        "registry": {"registries": {"registry.contoso.com": {"tenantId": "t1"}}},
    }
    source = served(policy, reg, aad)
    verdict = await source.verdict(parse_image("registry.contoso.com/shop/web:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert reg.count("oauth2/exchange") == 1


@pytest.mark.parametrize(
    "image", ["myacr.azurecr.io:443/demo/app:v1", "MyAcr.azurecr.io:443/demo/app:v1"]
)
async def test_the_default_port_does_not_make_the_realm_check_fail(image: str) -> None:
    """Issue 18 finding 5: httpx drops :443 from the URL it sends and from the realm, the old
    comparison kept it in the registry's name: the look-up failed -> unknown -> allowed."""
    reg = FakeRegistry("myacr.azurecr.io", auth="acr")
    reg.image("demo/app")
    aad = FixedAad()
    source = served({}, reg, aad)
    verdict = await source.verdict(parse_image(image.lower()))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE, verdict
    assert reg.count("oauth2/exchange") == 1


async def test_the_default_port_finds_the_registry_settings_and_patterns() -> None:
    reg = FakeRegistry("registry.contoso.com", auth="acr")
    reg.image("shop/web")
    aad = FixedAad()
    source = served({"acrRegistries": ["registry.contoso.com"]}, reg, aad)
    verdict = await source.verdict(parse_image("registry.contoso.com:443/shop/web:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert parse_policy({"acrRegistries": ["registry.contoso.com"]}).is_acr(
        "registry.contoso.com:443"
    )


def realm(host: str) -> str:
    return f'Bearer realm="https://{host}/token",service="reg.test"'


@pytest.mark.parametrize(
    ("registry", "challenge", "allowed"),
    [
        ("reg.test:443", realm("reg.test"), True),
        ("reg.test", realm("reg.test:443"), True),
        ("reg.test:8443", realm("reg.test"), False),
        ("reg.test", realm("reg.test:8443"), False),
    ],
    ids=["registry-443", "realm-443", "registry-other-port", "realm-other-port"],
)
@pytest.mark.parametrize(
    "credentials",
    [Anonymous(), BasicAuth("u", "p"), AcrAad(provider=FixedAad())],
    ids=["anonymous", "basic", "aad"],
)
async def test_realm_hosts_compare_without_the_default_port(
    registry: str, challenge: str, allowed: bool, credentials: Credentials
) -> None:
    reg = FakeRegistry()
    asked: list[str] = []

    async def token(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json={"token": "t", "refresh_token": "r", "access_token": "t"})

    reg.hook = token
    auth = Authenticator(
        registry=registry,
        credentials=credentials,
        http=httpx.AsyncClient(transport=reg.transport()),
    )
    if allowed:
        assert await auth.answer(challenge, SCOPE) == "Bearer t"
    else:
        with pytest.raises(RegistryAuthError, match="another host"):
            await auth.answer(challenge, SCOPE)
        assert asked == []


async def test_an_anonymous_registry_cannot_send_streamgate_to_another_host() -> None:
    """Issue 18 finding 7: the realm of an anonymous registry was fetched wherever it
    pointed (blind SSRF from inside the cluster)."""
    reg = FakeRegistry()
    asked: list[str] = []

    async def anything(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, json={"token": "t"})

    reg.hook = anything
    auth = Authenticator(
        registry="reg.test",
        credentials=Anonymous(),
        http=httpx.AsyncClient(transport=reg.transport()),
    )
    with pytest.raises(RegistryAuthError) as err:
        await auth.answer('Bearer realm="https://10.0.0.1/internal",service="x"', SCOPE)
    assert asked == []
    assert err.value.reason == (
        "registry token service is on another host (10.0.0.1); "
        "list it in the registry's realmHosts if it is trusted"
    )
    listed = Authenticator(
        registry="reg.test",
        credentials=Anonymous(),
        http=httpx.AsyncClient(transport=reg.transport()),
        realm_hosts=("auth.reg.test",),
    )
    assert await listed.answer(realm("auth.reg.test"), SCOPE) == "Bearer t"
