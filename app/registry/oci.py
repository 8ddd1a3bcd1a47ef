"""Pure reading of OCI / Docker JSON documents: descriptors, indexes, platforms, digests.

Nothing here does I/O. Documents come from registries and are not trusted: shapes are
checked, malformed descriptors are skipped, and a document that is not what it claims to be
raises `BadResponse`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.core.platform import Platform
from app.registry.errors import BadResponse
from app.registry.mediatypes import (
    IMAGE_TYPES,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    STREAMING,
    STREAMING_ANNOTATION_PREFIX,
)

DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
MAX_ANNOTATION_VALUE = 256


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None


def valid_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST.match(value) is not None


def sha256_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def fallback_tag(digest: str) -> str:
    """The OCI 1.1 referrers tag schema: `<alg>-<hex>`, at most 128 characters."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}"[:128]


def _platform(value: object) -> Platform | None:
    if not isinstance(value, Mapping):
        return None
    os_, arch, variant = value.get("os"), value.get("architecture"), value.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str):
        return None
    return Platform(
        os_.lower(), arch.lower(), variant.lower() if isinstance(variant, str) else None
    )


def _annotations(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {
        k: v[:MAX_ANNOTATION_VALUE]
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, str)
    }


def parse_descriptor(value: object) -> Descriptor | None:
    """A descriptor, or None when `value` is not a usable one."""
    if not isinstance(value, Mapping):
        return None
    media_type, digest = value.get("mediaType"), value.get("digest")
    if not isinstance(media_type, str) or not valid_digest(digest):
        return None
    artifact_type = value.get("artifactType")
    return Descriptor(
        media_type=media_type,
        digest=str(digest),
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        annotations=_annotations(value.get("annotations")),
        platform=_platform(value.get("platform")),
    )


def index_descriptors(doc: Mapping[str, Any], *, registry: str, what: str) -> list[Descriptor]:
    """The usable descriptors of an image index (or referrers list); malformed ones skipped."""
    manifests = doc.get("manifests", None)
    if manifests is None and "manifests" in doc:
        return []  # some registries send null for an empty list
    if not isinstance(manifests, list):
        raise BadResponse(registry, f"{what} has no manifests list")
    return [d for d in (parse_descriptor(m) for m in manifests) if d is not None]


def manifest_kind(content_type: str, doc: Mapping[str, Any], *, registry: str) -> str:
    """The media type a manifest document really is: from its `mediaType`, its content type,
    or its shape; `BadResponse` when it is neither an image manifest nor an index."""
    declared = doc.get("mediaType")
    for candidate in (declared, content_type):
        if isinstance(candidate, str) and candidate in IMAGE_TYPES | INDEX_TYPES:
            if declared is not None and declared != candidate:
                raise BadResponse(registry, "manifest media type mismatch")
            return candidate
    if isinstance(doc.get("manifests"), list):
        return OCI_INDEX
    if isinstance(doc.get("config"), Mapping) or isinstance(doc.get("layers"), list):
        return OCI_MANIFEST
    raise BadResponse(registry, "manifest of an unknown kind")


def pick_platform(descriptors: Iterable[Descriptor], wanted: Platform) -> Descriptor | None:
    """The entry of an index for `wanted`: exact variant first, then any variant."""
    matches = [
        d
        for d in descriptors
        if d.platform is not None
        and d.platform.os == wanted.os
        and d.platform.architecture == wanted.architecture
        and d.media_type in IMAGE_TYPES
    ]
    if wanted.variant is not None:
        exact = [d for d in matches if d.platform and d.platform.variant == wanted.variant]
        matches = exact or matches
    return matches[0] if matches else None


def streaming_annotations(descriptor: Descriptor) -> dict[str, str]:
    return {
        k: v for k, v in descriptor.annotations.items() if k.startswith(STREAMING_ANNOTATION_PREFIX)
    }


def artifact_platform(descriptor: Descriptor) -> str | None:
    """`os/arch` from `streaming.platform.*` annotations, or None when they are absent."""
    os_ = descriptor.annotations.get("streaming.platform.os")
    arch = descriptor.annotations.get("streaming.platform.arch")
    if not os_ and not arch:
        return None
    return f"{(os_ or '?').lower()}/{(arch or '?').lower()}"


def for_platform(descriptor: Descriptor, wanted: Platform) -> bool:
    """True unless the artifact's annotations name another platform."""
    os_ = descriptor.annotations.get("streaming.platform.os")
    arch = descriptor.annotations.get("streaming.platform.arch")
    return (not os_ or os_.lower() == wanted.os) and (
        not arch or arch.lower() == wanted.architecture
    )


def is_streaming(descriptor: Descriptor) -> bool:
    return descriptor.artifact_type == STREAMING
