"""What a tag or digest points at: `GET /v2/<repo>/manifests/<reference>`.

`describe()` answers with the manifest digest, its media type and, for an index, the digest
of the entry for the wanted platform (the one a linux/amd64 node pulls), from ONE request:
a GET with all four Accept types (a registry gives `Docker-Content-Digest` only for an
accepted type). A HEAD first would save a few KiB of body but cost a second request for every
multi-arch image, whose index entries are needed anyway (issue 9: at most resolve + referrers
per image). The body must hash to the digest asked for, or to the one the registry states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

from app.core.platform import Platform
from app.registry.errors import BadResponse, ImageNotFound
from app.registry.mediatypes import INDEX_TYPES, MANIFEST_ACCEPT
from app.registry.oci import (
    index_descriptors,
    manifest_kind,
    pick_platform,
    sha256_digest,
    valid_digest,
)
from app.registry.transport import RegistryTransport
from app.registry.wire import WireResponse

logger = logging.getLogger(__name__)


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """`platform_digest` is set for an index that has an entry for the wanted platform;
    `platforms` lists the index's platforms (for messages when it has none)."""

    digest: str
    media_type: str
    platform_digest: str | None = None
    platforms: tuple[str, ...] = ()

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


async def describe(
    transport: RegistryTransport, repository: str, reference: str, *, platform: Platform
) -> ManifestInfo:
    """Resolve `reference` (a tag or a digest) in `repository`."""
    registry = transport.registry
    body = await _manifest(transport, "GET", repository, reference)
    if body.status != 200:
        _not_found_or_bad(body, registry)
    return _read_manifest(body, registry=registry, asked=reference, platform=platform)


async def _manifest(
    transport: RegistryTransport, method: str, repository: str, reference: str
) -> WireResponse:
    return await transport.request(
        method,
        f"/v2/{repository}/manifests/{reference}",
        scope=pull_scope(repository),
        endpoint="manifest",
        accept=MANIFEST_ACCEPT,
    )


def _not_found_or_bad(response: WireResponse, registry: str) -> NoReturn:
    if response.status == 404:
        raise ImageNotFound(registry, "manifest unknown")
    raise BadResponse(registry, f"manifest answered HTTP {response.status}")


def _read_manifest(
    response: WireResponse, *, registry: str, asked: str, platform: Platform
) -> ManifestInfo:
    computed = sha256_digest(response.body)
    header = response.headers.get("docker-content-digest")
    if header is not None and not valid_digest(header):
        raise BadResponse(registry, "invalid Docker-Content-Digest")
    if valid_digest(asked):
        expected: str | None = asked
    else:
        expected = header
    if expected is not None and expected.startswith("sha256:") and expected != computed:
        raise BadResponse(registry, "manifest digest mismatch")
    digest = expected or computed
    doc = response.json_object(registry=registry, what="manifest")
    media_type = manifest_kind(response.content_type, doc, registry=registry)
    if media_type not in INDEX_TYPES:
        return ManifestInfo(digest=digest, media_type=media_type)
    entries = index_descriptors(doc, registry=registry, what="image index")
    chosen = pick_platform(entries, platform)
    platforms = tuple(
        sorted({str(e.platform) for e in entries if e.platform and e.platform.os != "unknown"})
    )
    if chosen is None:
        logger.info("%s: index %s has no %s entry (%s)", registry, digest, platform, platforms)
    return ManifestInfo(
        digest=digest,
        media_type=media_type,
        platform_digest=chosen.digest if chosen else None,
        platforms=platforms,
    )
