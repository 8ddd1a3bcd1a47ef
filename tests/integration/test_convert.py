"""`streamgate convert` against a real registry (olareg, with the referrers API) behind the ACR
front, whose /acr/v1 conversion endpoints push a real streaming referrer when a conversion
succeeds (tests/support/acr_front.py). The ordinary look-up is the judge: what it calls
not-streamable is exactly what `--dry-run` lists; after `convert` it calls them streamable;
a second run starts nothing; a repository the front can't convert fails with its code."""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.cli.convert import Summary, convert
from app.core.images import parse_image
from app.core.policy import Policy, parse_policy
from app.core.verdicts import Verdict
from app.registry.source import RegistryVerdictSource
from tests.support.registries import AcrFront, SeedResult, run_seeder

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parents[2]


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


def cli(front: AcrFront, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m app <args>` with a policy that reaches the front as `docker login` would:
    the null user and an ACR refresh token from the front's /oauth2/exchange."""
    with httpx.Client(verify=ssl.create_default_context(cafile=front.ca_cert)) as http:
        answer = http.post(
            f"{front.url}/oauth2/exchange",
            data={
                "grant_type": "access_token",
                "service": front.host,
                "access_token": front.aad_token,
            },
        )
    answer.raise_for_status()
    settings = {
        "acr": True,
        "auth": "basic",
        "username_env": "SG_TEST_USER",
        "password_env": "SG_TEST_PASSWORD",
        "ca_file": front.ca_cert,
    }
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {"acrRegistries": [front.host], "registry": {"registries": {front.host: settings}}}
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SG_TEST_USER": "00000000-0000-0000-0000-000000000000",
        "SG_TEST_PASSWORD": answer.json()["refresh_token"],
    }
    return subprocess.run(
        [sys.executable, "-m", "app", args[0], "--policy", str(policy), *args[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_the_command_exit_codes_and_a_following_explain(
    acr_front_referrers: AcrFront, tmp_path: Path
) -> None:
    front = acr_front_referrers
    ns = f"convert-{secrets.token_hex(4)}"
    bad_ns = f"convert-unsupported-{secrets.token_hex(4)}"
    seed(front, ns)
    seed(front, bad_ns)
    plain, streamable = f"{front.host}/{ns}/plain:v1", f"{front.host}/{ns}/streamable:v1"
    unsupported = f"{front.host}/{bad_ns}/plain:v1"

    dry = cli(front, tmp_path, "convert", "--dry-run", plain, streamable)
    assert (dry.returncode, dry.stderr) == (0, "")
    assert dry.stdout.splitlines() == [
        f"would start: {plain}",
        f"{streamable}: streamable already; left alone",
        "2 images: 1 to start, 1 already streamable",
    ]

    done = cli(front, tmp_path, "convert", plain, streamable)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert done.stdout.splitlines()[-1] == (
        "2 images: 1 started, 1 succeeded, 1 already streamable"
    )
    explained = cli(front, tmp_path, "explain", plain, "-o", "json")
    assert explained.returncode == 0, explained.stderr
    assert json.loads(explained.stdout)["verdict"] == "streamable"

    again = cli(front, tmp_path, "convert", plain)
    assert again.returncode == 0
    assert again.stdout.splitlines() == [
        f"{plain}: streamable already; left alone",
        "1 image: 1 already streamable",
    ]

    failed = cli(front, tmp_path, "convert", unsupported)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stdout.splitlines()[-2:] == [
        f"{unsupported}: failed (UNSUPPORTED_PLATFORM): only linux/amd64 images convert",
        "1 image: 1 started, 1 failed",
    ]
