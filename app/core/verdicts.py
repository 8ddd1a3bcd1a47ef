"""What is known about one image, and the interface that finds it out.

An `ImageVerdict` says whether an image can stream. A `VerdictSource` produces verdicts for
ACR images (the registry client is the production one); it never raises: failures come back
as `Verdict.UNKNOWN` with a reason. Images outside ACR never reach a source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from app.core.images import ImageRef

STREAMING_ARTIFACT_TYPE = "application/vnd.azure.artifact.streaming.v1"


class Verdict(StrEnum):
    STREAMABLE = "streamable"
    NOT_STREAMABLE = "not-streamable"
    NOT_ACR = "not-acr"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ImageVerdict:
    """The registry's answer for one image.

    `reason` is short and meant for users (why unknown, or conversion status when not
    streamable); `digest` is the manifest digest the look-up resolved; `artifact_digest` and
    `annotations` describe the streaming artifact when one was found.
    """

    verdict: Verdict
    reason: str = ""
    digest: str | None = None
    artifact_digest: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


class VerdictSource(Protocol):
    """Finds out whether an ACR image has a streaming artifact. Must not raise.

    `cached` answers at once from what the source already knows (None: not known, ask
    `verdict`), so the admission hot path makes no task for images it has seen."""

    def cached(self, ref: ImageRef) -> ImageVerdict | None: ...

    async def verdict(self, ref: ImageRef) -> ImageVerdict: ...


NOT_ACR = ImageVerdict(Verdict.NOT_ACR)


class OfflineVerdicts:
    """The source for `check --offline`: no registry is asked, every ACR image is unknown."""

    def cached(self, ref: ImageRef) -> ImageVerdict | None:
        return OFFLINE

    async def verdict(self, ref: ImageRef) -> ImageVerdict:
        return OFFLINE


OFFLINE = ImageVerdict(Verdict.UNKNOWN, "offline, registry not asked")
