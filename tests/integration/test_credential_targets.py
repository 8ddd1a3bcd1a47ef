"""Where streamgate's credentials and requests may go, against real registries (issue 18,
findings 3 and 7): the ACR front (the only stand-in: ACR's /oauth2 endpoints) before a real
token-auth docker-registry, and that docker-registry reached directly, whose token service is
on another host:port.

Run: flock /tmp/streamgate-e2e.lock .venv/bin/pytest tests/integration/test_credential_targets.py
"""

from __future__ import annotations

import time

import pytest

from app.core.images import parse_image
from app.core.policy import parse_policy
from app.core.verdicts import Verdict
from app.registry import RegistryVerdictSource
from tests.support.registries import AcrFront, RegistryEnv, Seeded

pytestmark = pytest.mark.registry


class CountingAad:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    async def get_token(self, scope: str) -> tuple[str, float]:
        self.calls += 1
        return self.token, time.time() + 3600


def source_for(policy: dict[str, object], aad: CountingAad) -> RegistryVerdictSource:
    p = parse_policy(policy)
    return RegistryVerdictSource(
        p.registry, aad=aad, env={}, acr_hosts=p.is_acr, aad_hosts=p.may_get_aad
    )


async def test_a_pattern_in_acr_registries_never_earns_the_aad_token(
    acr_front: AcrFront, seeded: Seeded
) -> None:
    """`acrRegistries: ["127.0.0.*:*"]` stands for `*.registry.contoso.com`: any host a tenant
    can name under the pattern. Before the fix, the front received the exchange."""
    seeded["acr_front"]
    aad = CountingAad(acr_front.mint_aad_token())
    # The CA is given by a pattern key (no credentials there): "*.0.0.1" matches 127.0.0.1.
    ca = {"*.0.0.1": {"caFile": acr_front.ca_cert}}
    pattern = {"acrRegistries": ["127.0.0.*:*"], "registry": {"registries": ca}}
    ref = parse_image(f"{acr_front.host}/demo/streamable:v1")
    acr_front.reset_stats()
    source = source_for(pattern, aad)
    try:
        verdict = await source.verdict(ref)
    finally:
        await source.aclose()
    assert aad.calls == 0
    assert acr_front.count("POST", "/oauth2/exchange") == 0
    assert verdict.verdict is Verdict.UNKNOWN  # asked anonymously; the front refuses
    # The same registry listed by its exact name: the exchange, and the real verdict.
    exact = {"acrRegistries": [acr_front.host], "registry": {"registries": ca}}
    source = source_for(exact, aad)
    try:
        verdict = await source.verdict(ref)
    finally:
        await source.aclose()
    assert verdict.verdict is Verdict.STREAMABLE, verdict
    assert aad.calls == 1 and acr_front.count("POST", "/oauth2/exchange") == 1


async def test_an_anonymous_registry_cannot_point_streamgate_at_another_host(
    registry_env: RegistryEnv, acr_front: AcrFront, seeded: Seeded
) -> None:
    """The token-auth docker-registry names a realm on another host:port (hack/registries.sh).
    Reached anonymously, streamgate used to fetch whatever realm a registry named."""
    seeded["acr_front"]
    registry = registry_env.token_registry
    settings = {"insecure": True, "acr": True}
    aad = CountingAad("unused")
    ref = parse_image(f"{registry.host}/demo/streamable:v1")
    since = registry.offset()
    source = source_for(
        {"registry": {"registries": {registry.host: {**settings, "auth": "anonymous"}}}}, aad
    )
    try:
        verdict = await source.verdict(ref)
    finally:
        await source.aclose()
    assert verdict.verdict is Verdict.UNKNOWN
    assert verdict.reason.startswith("registry token service is on another host (127.0.0.1:")
    assert "realmHosts" in verdict.reason
    assert registry.count(since, None, "^/v2/") >= 1  # it was asked, and answered 401
