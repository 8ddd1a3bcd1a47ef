"""`streamgate explain` against the in-memory registry (tests/unit/registry/test_fakes.py):
every step, the trace of requests, auth without leaking tokens, failures, the webhook's
answer. The real registry: tests/e2e/test_scan_explain_e2e.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.cli.explain import ExplainError, Explanation, clean, explain, to_json, to_text
from app.cli.main import EXIT_OK, EXIT_USAGE, main
from app.core.policy import Mode, parse_policy
from app.core.pools import Placement, PoolFit, Streaming
from app.core.verdicts import Verdict
from app.registry.mediatypes import STREAMING
from tests.unit.registry.test_fakes import FakeRegistry, FixedAad

HOST = "reg.test"


def policy(**settings: Any):
    return parse_policy(
        {"acrRegistries": [HOST], "registry": {"registries": {HOST: settings}}},
    )


async def run(reg: FakeRegistry, image: str, pol=None, **kw: Any) -> Explanation:
    return await explain(
        image, pol or policy(), transport=reg.transport(), aad=FixedAad(), env={}, **kw
    )


def step(out: Explanation, name: str) -> str:
    found = out.step(name)
    assert found is not None, f"no {name} step in {[s.name for s in out.steps]}"
    return "\n".join([found.text, *found.details])


async def test_streamable_image_shows_its_referrer_and_annotations() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/streamable")
    artifact = reg.referrer("demo/streamable", digest)
    out = await run(reg, f"{HOST}/demo/streamable:v1")
    assert [s.name for s in out.steps] == [
        "reference",
        "registry",
        "auth",
        "digest",
        "platform",
        "referrers",
        "conversion",
        "verdict",
        "time",
        "webhook",
    ]
    assert step(out, "reference") == f"registry {HOST}, repository demo/streamable, tag v1"
    assert "ACR (listed in acrRegistries)" in step(out, "registry")
    assert step(out, "digest").startswith(f"tag v1 -> {digest}")
    assert "OCI image manifest" in step(out, "digest")
    referrers = step(out, "referrers")
    assert referrers.startswith("streaming artifact found")
    assert f"streaming artifact {artifact}" in referrers
    assert f"artifactType {STREAMING}" in referrers
    assert "streaming.format: overlaybd" in referrers
    assert "<- the streaming artifact" in referrers  # in the unfiltered listing
    assert step(out, "conversion") == "not asked: a streaming artifact was found"
    assert step(out, "verdict") == "streamable"
    assert out.verdict is not None and out.verdict.verdict is Verdict.STREAMABLE
    assert "within the 2 s admission deadline" in step(out, "time")
    assert "allowed without a warning (mode warn)" in step(out, "webhook")
    methods = [(r.method, r.status, r.phase) for r in out.requests]
    assert methods[0] == ("GET", "200", "look-up")
    assert ("GET", "200", "listing") in methods
    assert out.requests[0].url == f"https://{HOST}/v2/demo/streamable/manifests/v1"


async def test_multiarch_index_shows_the_platform_choice() -> None:
    reg = FakeRegistry()
    amd = reg.image("demo/multiarch", None)
    arm = reg.image("demo/multiarch", None, arch="arm64")
    index = reg.index("demo/multiarch", "v1", [(amd, "linux/amd64"), (arm, "linux/arm64")])
    reg.referrer("demo/multiarch", amd)
    out = await run(reg, f"{HOST}/demo/multiarch:v1")
    platform = step(out, "platform")
    assert platform.startswith(f"linux/amd64 -> {amd}")
    assert "index lists: linux/amd64, linux/arm64" in platform
    referrers = step(out, "referrers")
    assert f"of {index[:19]}… (index), via the referrers API: none" in referrers
    assert f"of {amd[:19]}… (platform entry), via the referrers API: streaming artifact" in (
        referrers
    )
    assert out.verdict and out.verdict.verdict is Verdict.STREAMABLE


async def test_index_without_our_platform() -> None:
    reg = FakeRegistry()
    arm = reg.image("demo/armonly", None, arch="arm64")
    reg.index("demo/armonly", "v1", [(arm, "linux/arm64")])
    out = await run(reg, f"{HOST}/demo/armonly:v1")
    assert step(out, "platform").startswith("index has no linux/amd64 entry")
    assert "no linux/amd64 image in the index" in step(out, "verdict")


async def test_plain_image_has_no_streaming_artifact_and_its_conversion_status() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/plain")
    reg.referrer("demo/plain", digest, artifact_type="application/spdx+json", annotations={})
    out = await run(reg, f"{HOST}/demo/plain:v1")
    referrers = step(out, "referrers")
    assert referrers.startswith("no streaming artifact")
    assert "application/spdx+json" in referrers  # listed, not counted
    assert step(out, "conversion").startswith("never requested")
    verdict = step(out, "verdict")
    assert verdict.startswith("not-streamable: no streaming artifact")
    assert (
        "az acr artifact-streaming create -n <registry name of reg.test> --image demo/plain:v1"
        in verdict
    )
    webhook = step(out, "webhook")
    assert "allowed with warnings (mode warn)" in webhook
    assert "app: reg.test/demo/plain:v1 has no streaming artifact" in webhook
    assert any("/acr/v1/demo/plain/_streaming/" in r.url for r in out.requests)


async def test_failed_conversion_and_enforce_mode() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/failed")
    reg.conversions[("demo/failed", digest)] = {
        "status": "Failed",
        "failureCode": "UNSUPPORTED_PLATFORM",
    }
    out = await run(reg, f"{HOST}/demo/failed:v1", mode=Mode.ENFORCE)
    conversion = step(out, "conversion")
    assert conversion.startswith("failed") and "failure code UNSUPPORTED_PLATFORM" in conversion
    assert "streaming conversion failed (UNSUPPORTED_PLATFORM)" in step(out, "verdict")
    assert "would be denied (mode enforce)" in step(out, "webhook")


async def test_fallback_tag_registry() -> None:
    reg = FakeRegistry(referrers_api=False)
    digest = reg.image("demo/old")
    reg.referrer("demo/old", digest)
    out = await run(reg, f"{HOST}/demo/old:v1")
    assert "via the fallback tag: streaming artifact" in step(out, "referrers")
    assert out.verdict and out.verdict.verdict is Verdict.STREAMABLE


async def test_acr_auth_is_described_and_no_token_is_shown() -> None:
    reg = FakeRegistry(auth="acr")
    reg.referrer("demo/app", reg.image("demo/app"))
    out = await run(reg, f"{HOST}/demo/app:v1")
    auth = step(out, "auth")
    assert auth.startswith("acr-aad: Azure AD token -> ACR refresh token")
    assert "(auth: auto -> acr-aad)" in auth
    assert "credentials obtained: aad ok, exchange ok, access ok" in auth
    assert f"token: POST https://{HOST}/oauth2/exchange -> 200" in auth
    text = to_text(out) + to_json(out)
    for secret in ("aad-ok", "refresh-", "access-", *reg.access_tokens, *reg.refresh_tokens):
        assert secret not in text


async def test_anonymous_registry_asked_for_nothing() -> None:
    reg = FakeRegistry()
    reg.image("demo/app")
    out = await run(reg, f"{HOST}/demo/app:v1")
    assert step(out, "auth").startswith("none used: the registry asked for no credentials")


async def test_digest_pinned_reference() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest)
    out = await run(reg, f"{HOST}/demo/app@{digest}")
    assert "pinned in the reference" in step(out, "digest")
    assert "AKS streams tag pulls only" in step(out, "digest")
    assert "is pinned by digest" in step(out, "webhook")


async def test_registry_failures_are_explained() -> None:
    reg = FakeRegistry()

    async def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    reg.hook = unavailable
    out = await run(reg, f"{HOST}/demo/app:v1")
    assert step(out, "verdict").startswith("unknown: registry unavailable (HTTP 503)")
    assert "the look-up failed" in step(out, "verdict")
    assert step(out, "digest") == "tag v1: not resolved"
    assert "not searched" in step(out, "referrers")
    assert any(r.status == "503" for r in out.requests)


async def test_missing_image() -> None:
    reg = FakeRegistry()
    out = await run(reg, f"{HOST}/demo/nothing:v1")
    assert step(out, "verdict").startswith("unknown: image not found in registry\n")
    assert "(manifest unknown)" in step(out, "verdict")


async def test_not_acr_needs_no_registry() -> None:
    reg = FakeRegistry()
    out = await run(reg, "registry.example.com/nginx:1.27")
    assert step(out, "registry").startswith("registry.example.com: not ACR per the policy")
    assert step(out, "verdict") == "not-acr (rule notAcr: ignore)"
    assert reg.calls == [] and out.requests == []


async def test_invalid_reference() -> None:
    with pytest.raises(ExplainError, match="repository name must be lower-case"):
        await run(FakeRegistry(), "Bad/Image:v1")


async def test_node_pools_when_a_placement_is_given() -> None:
    reg = FakeRegistry()
    reg.referrer("demo/app", reg.image("demo/app"))

    class Pools:
        def place(self, pod_spec: Any) -> Placement:
            return Placement(
                True,
                (
                    PoolFit("good", Streaming.YES),
                    PoolFit("arm", Streaming.NO, ("arm64",)),
                ),
            )

    out = await run(reg, f"{HOST}/demo/app:v1", placement=Pools())
    webhook = step(out, "webhook")
    assert "may land on pools that can't stream: arm (arm64)" in webhook
    assert "node pools it may land on: 2; can stream: good" in webhook
    assert "can't stream: arm (arm64)" in webhook


async def test_json_output() -> None:
    reg = FakeRegistry()
    reg.image("demo/plain")
    doc = json.loads(to_json(await run(reg, f"{HOST}/demo/plain:v1")))
    assert doc["verdict"] == "not-streamable" and doc["reason"] == "no streaming artifact"
    assert doc["webhook"]["allowed"] is True and len(doc["webhook"]["warnings"]) == 1
    assert {s["name"] for s in doc["steps"]} >= {"digest", "referrers", "conversion"}
    assert doc["requests"][0]["method"] == "GET"


def test_registry_text_is_made_safe_for_a_terminal() -> None:
    assert clean("ok\x1b[31mred\n") == "ok?[31mred?"
    assert len(clean("x" * 500)) == 200


async def test_annotations_with_control_characters_are_cleaned() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    reg.referrer(
        "demo/app",
        digest,
        annotations={"streaming.format": "overlaybd\x1b[2J", "streaming.platform.os": "linux"},
    )
    text = to_text(await run(reg, f"{HOST}/demo/app:v1"))
    assert "\x1b" not in text and "overlaybd?[2J" in text


def test_command_exit_codes(capsys) -> None:
    assert main(["explain", "NOT//valid"]) == EXIT_USAGE
    assert "is not an image reference" in capsys.readouterr().err
    assert main(["explain", "registry.example.com/nginx:1.27"]) == EXIT_OK
    assert "not-acr" in capsys.readouterr().out
