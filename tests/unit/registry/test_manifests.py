"""Tag -> digest, index platform choice, digest checks (`describe`), and `oci` helpers."""

from __future__ import annotations

import httpx
import pytest

from app.core.images import parse_image
from app.core.verdicts import Verdict
from app.registry.errors import BadResponse, ImageNotFound
from app.registry.manifests import describe
from app.registry.mediatypes import DOCKER_MANIFEST, MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST
from app.registry.oci import (
    Descriptor,
    Platform,
    fallback_tag,
    manifest_kind,
    parse_descriptor,
    pick_platform,
)
from tests.unit.registry.test_fakes import FakeRegistry, make_source, transport_to

AMD64 = Platform.parse("linux/amd64")


async def test_one_get_resolves_a_single_image() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    accepts: list[str] = []

    async def spy(request: httpx.Request) -> None:
        accepts.append(request.headers["accept"])

    reg.hook = spy
    info = await describe(transport_to(reg), "demo/app", "v1", platform=AMD64)
    assert (info.digest, info.media_type, info.platform_digest) == (digest, OCI_MANIFEST, None)
    assert reg.calls == [("GET", "/v2/demo/app/manifests/v1")]
    assert accepts == [", ".join(MANIFEST_ACCEPT)]


async def test_without_a_digest_header_the_body_is_hashed() -> None:
    reg = FakeRegistry(send_digest=False)
    digest = reg.image("demo/app", docker=True)
    info = await describe(transport_to(reg), "demo/app", "v1", platform=AMD64)
    assert info.digest == digest and info.media_type == DOCKER_MANIFEST
    assert [m for m, _ in reg.calls] == ["GET"]


async def test_index_picks_the_linux_amd64_entry() -> None:
    reg = FakeRegistry()
    amd = reg.image("demo/multi", None, arch="amd64")
    arm = reg.image("demo/multi", None, arch="arm64")
    index = reg.index("demo/multi", "v1", [(arm, "linux/arm64"), (amd, "linux/amd64")])
    info = await describe(transport_to(reg), "demo/multi", "v1", platform=AMD64)
    assert info.is_index and info.digest == index and info.platform_digest == amd
    assert info.platforms == ("linux/amd64", "linux/arm64")
    assert reg.calls == [("GET", "/v2/demo/multi/manifests/v1")]  # one request, entries too


async def test_index_without_the_platform() -> None:
    reg = FakeRegistry()
    arm = reg.image("demo/arm", None, arch="arm64")
    reg.index("demo/arm", "v1", [(arm, "linux/arm64")])
    source = make_source(reg)
    verdict = await source.verdict(parse_image("reg.test/demo/arm:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert verdict.reason == "no linux/amd64 image in the index; streaming needs one"


async def test_unknown_tag_is_image_not_found() -> None:
    with pytest.raises(ImageNotFound):
        await describe(transport_to(FakeRegistry()), "demo/none", "v1", platform=AMD64)


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"Docker-Content-Digest": "md5:abc"}, None, "invalid Docker-Content-Digest"),
        ({"Docker-Content-Digest": "sha256:" + "0" * 64}, None, "digest mismatch"),
        ({"Content-Type": "text/html"}, b"<html/>", "not JSON"),
        ({"Content-Type": "application/json"}, b'{"schemaVersion": 2}', "unknown kind"),
    ],
    ids=["bad-digest-header", "mismatch", "html", "unknown-kind"],
)
async def test_bad_manifest_answers(
    headers: dict[str, str], body: bytes | None, message: str
) -> None:
    reg = FakeRegistry(send_digest=False)
    digest = reg.image("demo/app")

    async def fault(request: httpx.Request) -> httpx.Response | None:
        stored = reg.blobs[("demo/app", digest)][1]
        return httpx.Response(200, headers=headers, content=stored if body is None else body)

    reg.hook = fault
    with pytest.raises(BadResponse, match=message):
        await describe(transport_to(reg), "demo/app", "v1", platform=AMD64)


def test_pick_platform_prefers_the_exact_variant_and_skips_non_images() -> None:
    def entry(digest_char: str, platform: str, media_type: str = OCI_MANIFEST) -> Descriptor:
        return Descriptor(
            media_type, "sha256:" + digest_char * 64, platform=Platform.parse(platform)
        )

    entries = [
        entry("a", "linux/amd64", OCI_INDEX),
        entry("b", "linux/amd64/v2"),
        entry("c", "linux/amd64/v3"),
        entry("d", "windows/amd64"),
    ]
    assert pick_platform(entries, AMD64) == entries[1]
    assert pick_platform(entries, Platform.parse("linux/amd64/v3")) == entries[2]
    assert pick_platform(entries, Platform.parse("linux/arm64")) is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "x",
        {"mediaType": "a/b"},
        {"mediaType": "a/b", "digest": "sha256:short"},
        {"mediaType": 5, "digest": "sha256:" + "a" * 64},
    ],
    ids=["none", "string", "no-digest", "bad-digest", "bad-type"],
)
def test_malformed_descriptors_are_skipped(value: object) -> None:
    assert parse_descriptor(value) is None


def test_descriptor_annotations_keep_only_strings_and_are_bounded() -> None:
    descriptor = parse_descriptor(
        {
            "mediaType": OCI_MANIFEST,
            "digest": "sha256:" + "a" * 64,
            "annotations": {"streaming.format": "x" * 1000, "n": 5},
        }
    )
    assert descriptor is not None
    assert descriptor.annotations == {"streaming.format": "x" * 256}


def test_manifest_kind_from_body_when_content_type_is_generic() -> None:
    assert manifest_kind("application/json", {"manifests": []}, registry="r") == OCI_INDEX
    assert manifest_kind("", {"config": {}, "layers": []}, registry="r") == OCI_MANIFEST
    with pytest.raises(BadResponse, match="mismatch"):
        manifest_kind(OCI_INDEX, {"mediaType": "application/vnd.x"}, registry="r")


def test_fallback_tag_schema() -> None:
    assert fallback_tag("sha256:" + "a" * 64) == "sha256-" + "a" * 64
    assert len(fallback_tag("sha512:" + "b" * 128)) == 128


@pytest.mark.parametrize("text", ["linux", "linux/", "a/b/c/d", ""], ids=str)
def test_platform_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="os/arch"):
        Platform.parse(text)
