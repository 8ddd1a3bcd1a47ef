"""Finding the streaming artifact among the referrers of a manifest.

1. `GET /v2/<repo>/referrers/<digest>?artifactType=<streaming>` (OCI 1.1). When the answer
   lacks `OCI-Filters-Applied: artifactType` the registry ignored the filter and we filter.
   `Link: <..>; rel="next"` pages are followed, at most `max_pages`.
2. On 404 the registry has no referrers API: read the fallback tag `sha256-<hex>` (an image
   index of referrers); 404 there means no referrers.
3. A referrer is the streaming artifact when its `artifactType` is the streaming type. A
   descriptor without `artifactType` (possible in a fallback index) is checked by reading
   its manifest's `config.mediaType`, for at most `MAX_CONFIG_CHECKS` descriptors.
4. An artifact whose `streaming.platform.*` annotations name another platform does not count
   for ours; it is reported in `other_platforms`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from app.core.platform import Platform
from app.registry.errors import BadResponse
from app.registry.headers import filters_applied, parse_link_next
from app.registry.manifests import pull_scope
from app.registry.mediatypes import IMAGE_TYPES, MANIFEST_ACCEPT, OCI_INDEX, STREAMING
from app.registry.oci import (
    Descriptor,
    artifact_platform,
    fallback_tag,
    for_platform,
    index_descriptors,
    is_streaming,
    streaming_annotations,
)
from app.registry.transport import RegistryTransport

logger = logging.getLogger(__name__)

MAX_CONFIG_CHECKS = 4


@dataclass(frozen=True, slots=True)
class StreamingArtifact:
    digest: str
    subject: str
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReferrerSearch:
    """What the referrers of `subject` say. `via` is "api" or "tag" (the fallback)."""

    subject: str
    artifact: StreamingArtifact | None
    other_platforms: tuple[str, ...] = ()
    via: str = "api"


async def find_streaming(
    transport: RegistryTransport,
    repository: str,
    subject: str,
    *,
    platform: Platform,
    max_pages: int,
) -> ReferrerSearch:
    candidates: list[Descriptor] = []
    target = f"/v2/{repository}/referrers/{subject}"
    params: dict[str, str] | None = {"artifactType": STREAMING}
    via = "api"
    for page in range(max_pages):
        response = await transport.request(
            "GET",
            target,
            scope=pull_scope(repository),
            endpoint="referrers",
            accept=(OCI_INDEX,),
            params=params,
        )
        if response.status == 404 and page == 0:
            via = "tag"
            candidates = await _fallback_index(transport, repository, subject)
            break
        if response.status != 200:
            raise BadResponse(transport.registry, f"referrers answered HTTP {response.status}")
        doc = response.json_object(registry=transport.registry, what="referrers list")
        entries = index_descriptors(doc, registry=transport.registry, what="referrers list")
        filtered = "artifacttype" in filters_applied(response.headers.get("oci-filters-applied"))
        candidates.extend(_candidates(entries, trusted_filter=filtered))
        if any(is_streaming(d) and for_platform(d, platform) for d in candidates):
            break
        link = parse_link_next(response.headers.get("link"))
        if link is None:
            break
        try:
            target, params = str(response.url.join(link)), None
        except httpx.InvalidURL as err:
            raise BadResponse(transport.registry, "a referrers link that is not a URL") from err
    else:
        logger.info("%s: referrers of %s exceed %d pages", transport.registry, subject, max_pages)
    await _check_configs(transport, repository, candidates)
    return _search_result(subject, candidates, platform=platform, via=via)


def _candidates(entries: Iterable[Descriptor], *, trusted_filter: bool) -> list[Descriptor]:
    out = []
    for entry in entries:
        if trusted_filter and entry.artifact_type is None:
            # The registry says it filtered by artifactType: everything left is streaming.
            out.append(replace(entry, artifact_type=STREAMING))
        elif entry.artifact_type in (None, STREAMING):
            out.append(entry)
    return out


async def _fallback_index(
    transport: RegistryTransport, repository: str, subject: str
) -> list[Descriptor]:
    response = await transport.request(
        "GET",
        f"/v2/{repository}/manifests/{fallback_tag(subject)}",
        scope=pull_scope(repository),
        endpoint="fallback-tag",
        accept=(OCI_INDEX,),
    )
    if response.status == 404:
        return []
    if response.status != 200:
        raise BadResponse(transport.registry, f"referrers tag answered HTTP {response.status}")
    doc = response.json_object(registry=transport.registry, what="referrers tag")
    entries = index_descriptors(doc, registry=transport.registry, what="referrers tag")
    return _candidates(entries, trusted_filter=False)


async def _check_configs(
    transport: RegistryTransport, repository: str, candidates: list[Descriptor]
) -> None:
    """Give descriptors without `artifactType` the config media type of their manifest."""
    checked = 0
    for position, descriptor in enumerate(candidates):
        if descriptor.artifact_type is not None or descriptor.media_type not in IMAGE_TYPES:
            continue
        if checked == MAX_CONFIG_CHECKS:
            break
        checked += 1
        response = await transport.request(
            "GET",
            f"/v2/{repository}/manifests/{descriptor.digest}",
            scope=pull_scope(repository),
            endpoint="referrer-manifest",
            accept=MANIFEST_ACCEPT,
        )
        if response.status != 200:
            continue
        doc = response.json_object(registry=transport.registry, what="referrer manifest")
        candidates[position] = replace(descriptor, artifact_type=_artifact_type_of(doc))
        if candidates[position].artifact_type == STREAMING:
            break


def _artifact_type_of(doc: dict[str, Any]) -> str | None:
    artifact_type = doc.get("artifactType")
    if isinstance(artifact_type, str):
        return artifact_type
    config = doc.get("config")
    media_type = config.get("mediaType") if isinstance(config, dict) else None
    return media_type if isinstance(media_type, str) else None


def _search_result(
    subject: str, candidates: list[Descriptor], *, platform: Platform, via: str
) -> ReferrerSearch:
    streaming = [d for d in candidates if is_streaming(d)]
    mine = [d for d in streaming if for_platform(d, platform)]
    others = tuple(sorted({artifact_platform(d) or "?" for d in streaming if d not in mine}))
    if not mine:
        return ReferrerSearch(subject=subject, artifact=None, other_platforms=others, via=via)
    chosen = mine[0]
    artifact = StreamingArtifact(
        digest=chosen.digest, subject=subject, annotations=streaming_annotations(chosen)
    )
    return ReferrerSearch(subject=subject, artifact=artifact, other_platforms=others, via=via)
