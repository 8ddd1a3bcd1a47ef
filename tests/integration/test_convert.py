"""`streamgate convert` against a real registry (olareg, with the referrers API) behind the ACR
front, whose /acr/v1 conversion endpoints push a real streaming referrer when a conversion
succeeds (tests/support/acr_front.py). The ordinary look-up is the judge: what it calls
not-streamable is exactly what `--dry-run` lists; after `convert` it calls them streamable;
a second run starts nothing; a repository the front can't convert fails with its code."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from app.cli.convert import Summary, convert
from app.core.images import parse_image
from app.core.policy import Policy, parse_policy
from app.core.verdicts import Verdict
from app.registry.source import RegistryVerdictSource
from tests.support.registries import AcrFront, SeedResult, run_seeder

pytestmark = pytest.mark.registry


class StaticAad:
    def __init__(self, token: str) -> None:
        self.token = token

    async def get_token(self, scope: str) -> tuple[str, float]:
        return self.token, time.time() + 3600


def policy_for(front: AcrFront) -> Policy:
    settings = {"acr": True, "auth": "acr-aad", "ca_file": front.ca_cert}
    return parse_policy(
        {"acrRegistries": [front.host], "registry": {"registries": {front.host: settings}}}
    )


def seed(front: AcrFront, namespace: str) -> list[str]:
    """A fresh namespace (conversions leave referrers behind): its images, as users write them."""
    result: SeedResult = run_seeder(front.seeder_args(), "seed", "--namespace", namespace)
    return sorted(f"{front.host}/{ref}" for ref in result.images)


async def verdicts(front: AcrFront, images: list[str]) -> dict[str, Verdict]:
    pol = policy_for(front)
    source = RegistryVerdictSource(
        pol.registry,
        aad=StaticAad(front.mint_aad_token()),
        acr_hosts=pol.is_acr,
        aad_hosts=pol.may_get_aad,
    )
    try:
        return {i: (await source.verdict(parse_image(i))).verdict for i in images}
    finally:
        await source.aclose()


async def run(front: AcrFront, images: list[str], **kw: Any) -> tuple[Summary, list[str]]:
    lines: list[str] = []
    kw.setdefault("interval", 0.05)
    summary = await convert(
        images, policy_for(front), out=lines.append, aad=StaticAad(front.mint_aad_token()), **kw
    )
    return summary, lines


async def test_convert_makes_the_not_streamable_images_stream_and_is_idempotent(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    images = seed(front, f"convert-{secrets.token_hex(4)}")
    before = await verdicts(front, images)
    missing = [i for i in images if before[i] is Verdict.NOT_STREAMABLE]
    assert missing and len(missing) < len(images)  # the seed has both kinds

    front.reset_stats()
    summary, lines = await run(front, images, dry_run=True)
    assert [ln for ln in lines if ln.startswith("would start: ")] == [
        f"would start: {i}" for i in missing
    ]
    assert summary.would_start == len(missing)
    assert front.stats()["events"].get("conversion_started", 0) == 0

    summary, lines = await run(front, images)
    assert summary.ok, lines
    assert (summary.started, summary.succeeded) == (len(missing), len(missing))
    for image in missing:
        mine = [ln for ln in lines if ln.startswith(f"{image}: ")]
        assert mine[0].startswith(f"{image}: conversion started (operation ")
        assert mine[-1] == f"{image}: succeeded: the streaming artifact is in place"
    assert front.stats()["events"]["conversion_started"] == len(missing)

    after = await verdicts(front, images)
    assert {i: after[i] for i in missing} == {i: Verdict.STREAMABLE for i in missing}

    front.reset_stats()
    summary, lines = await run(front, images)
    assert summary.started == 0 and summary.ok
    assert lines == [f"{i}: streamable already; left alone" for i in images]
    assert front.stats()["events"].get("conversion_started", 0) == 0


async def test_a_conversion_the_registry_refuses_fails_with_its_code(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    namespace = f"convert-unsupported-{secrets.token_hex(4)}"
    seed(front, namespace)
    image = f"{front.host}/{namespace}/plain:v1"
    summary, lines = await run(front, [image])
    assert not summary.ok and summary.failures == [image]
    assert lines[-1] == f"{image}: failed (UNSUPPORTED_PLATFORM): only linux/amd64 images convert"
    # the ordinary look-up now reads the failed conversion from ACR's record of it
    pol = policy_for(front)
    source = RegistryVerdictSource(
        pol.registry,
        aad=StaticAad(front.mint_aad_token()),
        acr_hosts=pol.is_acr,
        aad_hosts=pol.may_get_aad,
    )
    try:
        verdict = await source.verdict(parse_image(image))
    finally:
        await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert "UNSUPPORTED_PLATFORM" in verdict.reason


async def test_without_push_rights_nothing_starts_and_it_says_why(
    acr_front_referrers: AcrFront,
) -> None:
    front = acr_front_referrers
    namespace = f"convert-{secrets.token_hex(4)}"
    seed(front, namespace)
    image = f"{front.host}/{namespace}/plain:v1"
    with front.configured(grant_actions=["pull"]):
        summary, lines = await run(front, [image])
    assert lines == [
        f"{image}: failed: registry denied access: starting a conversion needs push rights "
        "on the repository (docs/remediation.md)"
    ]
    assert not summary.ok
