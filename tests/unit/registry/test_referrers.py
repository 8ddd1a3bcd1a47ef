"""Referrers: the API with and without server-side filtering, Link pages, the fallback tag,
config-form artifacts, platform annotations, and which digest of an index carries it."""

from __future__ import annotations

import httpx
import pytest

from app.core.images import parse_image
from app.core.platform import Platform
from app.core.verdicts import Verdict
from app.registry.errors import BadResponse
from app.registry.mediatypes import OCI_INDEX, STREAMING
from app.registry.referrers import find_streaming
from tests.unit.registry.test_fakes import FakeRegistry, dumps, make_source, transport_to

AMD64 = Platform.parse("linux/amd64")
SBOM = "application/spdx+json"


async def search(reg: FakeRegistry, subject: str, *, max_pages: int = 5):  # type: ignore[no-untyped-def]
    return await find_streaming(
        transport_to(reg), "demo/app", subject, platform=AMD64, max_pages=max_pages
    )


async def test_filtered_by_the_registry() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest, artifact_type=SBOM)
    artifact = reg.referrer("demo/app", digest)
    result = await search(reg, digest)
    assert result.artifact is not None and result.artifact.digest == artifact
    assert result.via == "api"
    assert reg.calls[0][1] == f"/v2/demo/app/referrers/{digest}"


async def test_filter_ignored_so_the_client_filters() -> None:
    reg = FakeRegistry(filter_applied=False)
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest, artifact_type=SBOM)
    assert (await search(reg, digest)).artifact is None
    artifact = reg.referrer("demo/app", digest)
    found = await search(reg, digest)
    assert found.artifact is not None and found.artifact.digest == artifact


async def test_filter_header_is_trusted_for_descriptors_without_artifact_type() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")

    async def answer(request: httpx.Request) -> httpx.Response:
        doc = {"manifests": [{"mediaType": "x/y", "digest": "sha256:" + "c" * 64}]}
        headers = {"OCI-Filters-Applied": "artifactType", "Content-Type": OCI_INDEX}
        return httpx.Response(200, headers=headers, content=dumps(doc))

    reg.hook = answer
    result = await search(reg, digest)
    assert result.artifact is not None and result.artifact.digest == "sha256:" + "c" * 64


async def test_link_pages_are_followed_until_found() -> None:
    reg = FakeRegistry(filter_applied=False, page_size=3)
    digest = reg.image("demo/app")
    for _ in range(10):
        reg.referrer("demo/app", digest, artifact_type=SBOM)
    artifact = reg.referrer("demo/app", digest)
    result = await search(reg, digest)
    assert result.artifact is not None and result.artifact.digest == artifact
    assert reg.count("referrers") == 4


async def test_pages_are_bounded() -> None:
    reg = FakeRegistry(filter_applied=False, page_size=2)
    digest = reg.image("demo/app")
    for _ in range(20):
        reg.referrer("demo/app", digest, artifact_type=SBOM)
    reg.referrer("demo/app", digest)
    result = await search(reg, digest, max_pages=3)
    assert result.artifact is None
    assert reg.count("referrers") == 3


async def test_fallback_tag_when_the_api_answers_404() -> None:
    reg = FakeRegistry(referrers_api=False)
    digest = reg.image("demo/app")
    assert (await search(reg, digest)).artifact is None  # no referrers: tag 404 too
    artifact = reg.referrer("demo/app", digest)
    reg.calls.clear()
    result = await search(reg, digest)
    assert result.artifact is not None and result.artifact.digest == artifact
    assert result.via == "tag"
    assert reg.calls == [
        ("GET", f"/v2/demo/app/referrers/{digest}"),
        ("GET", f"/v2/demo/app/manifests/sha256-{digest[7:]}"),
    ]


async def test_fallback_index_filters_other_artifacts() -> None:
    reg = FakeRegistry(referrers_api=False)
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest, artifact_type=SBOM)
    assert (await search(reg, digest)).artifact is None


async def test_config_media_type_counts_when_artifact_type_is_missing() -> None:
    reg = FakeRegistry(referrers_api=False)
    digest = reg.image("demo/app")
    artifact = reg.referrer(
        "demo/app", digest, artifact_type=STREAMING, config_form=True, in_descriptor=False
    )
    result = await search(reg, digest)
    assert result.artifact is not None and result.artifact.digest == artifact
    assert ("GET", f"/v2/demo/app/manifests/{artifact}") in reg.calls


async def test_artifact_for_another_platform_does_not_count() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    arm = {"streaming.platform.os": "linux", "streaming.platform.arch": "arm64"}
    reg.referrer("demo/app", digest, annotations=arm)
    result = await search(reg, digest)
    assert result.artifact is None and result.other_platforms == ("linux/arm64",)
    source = make_source(reg)
    verdict = await source.verdict(parse_image("reg.test/demo/app:v1"))
    await source.aclose()
    assert verdict.reason == "streaming artifact only for linux/arm64, not linux/amd64"


async def test_artifact_without_platform_annotations_counts() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest, annotations={})
    result = await search(reg, digest)
    assert result.artifact is not None and result.artifact.annotations == {}


@pytest.mark.parametrize("on", ["platform", "index"])
async def test_index_referrer_found_on_either_digest(on: str) -> None:
    reg = FakeRegistry()
    amd = reg.image("demo/multi", None, arch="amd64")
    arm = reg.image("demo/multi", None, arch="arm64")
    index = reg.index("demo/multi", "v1", [(amd, "linux/amd64"), (arm, "linux/arm64")])
    artifact = reg.referrer("demo/multi", amd if on == "platform" else index)
    source = make_source(reg)
    verdict = await source.verdict(parse_image("reg.test/demo/multi:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.STREAMABLE
    assert verdict.digest == index and verdict.artifact_digest == artifact
    assert reg.count("referrers") == 2  # both digests asked, side by side


async def test_index_artifact_found_even_when_the_other_search_fails() -> None:
    reg = FakeRegistry()
    amd = reg.image("demo/multi", None, arch="amd64")
    index = reg.index("demo/multi", "v1", [(amd, "linux/amd64")])
    reg.referrer("demo/multi", amd)

    async def index_broken(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith(f"/referrers/{index}"):
            return httpx.Response(500)
        return None

    reg.hook = index_broken
    source = make_source(reg)
    verdict = await source.verdict(parse_image("reg.test/demo/multi:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.STREAMABLE


async def test_unexpected_status_is_a_bad_answer() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")

    async def teapot(request: httpx.Request) -> httpx.Response:
        return httpx.Response(418)

    reg.hook = teapot
    with pytest.raises(BadResponse, match="HTTP 418"):
        await search(reg, digest)


async def test_null_manifests_is_an_empty_list() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")

    async def null(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"manifests": None})

    reg.hook = null
    assert (await search(reg, digest)).artifact is None


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ('<https://evil.test/v2/x>; rel="next"', "a link to another host"),
        ('<http://[::1/x>; rel="next"', "not a URL"),
    ],
    ids=["other-host", "broken"],
)
async def test_bad_next_links_are_bad_answers(link: str, message: str) -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")

    async def linked(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"manifests": []}, headers={"Link": link})

    reg.hook = linked
    with pytest.raises(BadResponse, match=message):
        await search(reg, digest)
