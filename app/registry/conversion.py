"""ACR's record of the last streaming conversion of an image (ACR registries only).

`GET /acr/v1/<repo>/_streaming/<digest>`: 404 means no conversion was ever requested; 200
carries the last operation: `status` (NotStarted, Running, Succeeded, Failed, Canceled),
`progress`, and on failure a code such as UNSUPPORTED_PLATFORM (docs/aks-facts.md §5; the API has no
published spec, so the field holding the code is looked for under a few likely names, and
every value is reduced to a short, safe string before it can reach a user).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.registry.errors import BadResponse
from app.registry.manifests import pull_scope
from app.registry.transport import RegistryTransport

logger = logging.getLogger(__name__)

FAILURE_CODES = frozenset(
    {
        "UNKNOWN_ERROR",
        "RESOURCE_NOT_FOUND",
        "UNSUPPORTED_PLATFORM",
        "NO_SUPPORTED_PLATFORM_FOUND",
        "UNSUPPORTED_MEDIATYPE",
        "UNSUPPORTED_ARTIFACT_TYPE",
        "IMAGE_NOT_RUNNABLE",
    }
)
# What each code means, for users (ACR troubleshooting doc, docs/aks-facts.md §5).
FAILURE_MEANINGS = {
    "UNKNOWN_ERROR": "an internal ACR error; try again",
    "RESOURCE_NOT_FOUND": "the image is gone, or not yet replicated to this region",
    "UNSUPPORTED_PLATFORM": "only linux/amd64 images convert",
    "NO_SUPPORTED_PLATFORM_FOUND": "the image has no linux/amd64 platform; only that converts",
    "UNSUPPORTED_MEDIATYPE": "the manifest type can't be converted (OCI or Docker v2 only)",
    "UNSUPPORTED_ARTIFACT_TYPE": "it is already a streaming artifact, or another non-image",
    "IMAGE_NOT_RUNNABLE": "the image is not runnable; only runnable linux/amd64 images convert",
}
_CODE_KEYS = ("failureCode", "errorCode", "code", "failureReason", "error", "errors", "details")
_SAFE_CODE = re.compile(r"[A-Z][A-Z0-9_]{2,40}\Z")
_PROGRESS = re.compile(r"\d{1,3}(?:\.\d+)?%?\Z")


def failure_meaning(code: str | None) -> str:
    """One short line on what a failure code means (unknown codes: say so)."""
    if code is None:
        return "ACR gave no failure code"
    return FAILURE_MEANINGS.get(code, "a code streamgate doesn't know; see the ACR docs")


class ConversionState(StrEnum):
    NEVER_REQUESTED = "never-requested"
    NOT_STARTED = "not-started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"  # the status could not be read


_STATES = {
    "notstarted": ConversionState.NOT_STARTED,
    "running": ConversionState.RUNNING,
    "succeeded": ConversionState.SUCCEEDED,
    "failed": ConversionState.FAILED,
    "canceled": ConversionState.CANCELED,
    "cancelled": ConversionState.CANCELED,
}


@dataclass(frozen=True, slots=True)
class ConversionStatus:
    state: ConversionState
    progress: str | None = None  # e.g. "42%"
    failure_code: str | None = None


NEVER_REQUESTED = ConversionStatus(ConversionState.NEVER_REQUESTED)
STATUS_UNKNOWN = ConversionStatus(ConversionState.UNKNOWN)


async def conversion_status(
    transport: RegistryTransport, repository: str, digest: str
) -> ConversionStatus:
    response = await transport.request(
        "GET",
        f"/acr/v1/{repository}/_streaming/{digest}",
        scope=pull_scope(repository),
        endpoint="conversion",
    )
    if response.status == 404:
        return NEVER_REQUESTED
    if response.status != 200:
        raise BadResponse(transport.registry, f"conversion status answered HTTP {response.status}")
    doc = response.json_object(registry=transport.registry, what="conversion status")
    return parse_conversion(doc)


def parse_conversion(doc: dict[str, Any]) -> ConversionStatus:
    raw_state = doc.get("status")
    state = (
        _STATES.get(raw_state.lower(), ConversionState.UNKNOWN)
        if isinstance(raw_state, str)
        else ConversionState.UNKNOWN
    )
    progress = _progress(doc.get("progress"))
    code = _failure_code(doc) if state is ConversionState.FAILED else None
    return ConversionStatus(state=state, progress=progress, failure_code=code)


def _progress(value: object) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = f"{value:g}%"
    if isinstance(value, str) and _PROGRESS.match(value.strip()):
        text = value.strip()
        return text if text.endswith("%") else f"{text}%"
    return None


def _strings(value: object, depth: int = 0) -> Iterator[str]:
    if depth > 3:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in _CODE_KEYS:
            if key in value:
                yield from _strings(value[key], depth + 1)
    elif isinstance(value, list):
        for item in value[:8]:
            yield from _strings(item, depth + 1)


def _failure_code(doc: dict[str, Any]) -> str | None:
    candidates = [s.strip() for s in _strings(doc)]
    known = next((c for c in candidates if c in FAILURE_CODES), None)
    if known is not None:
        return known
    # No known code under a known key: a known code mentioned anywhere, then any code-like word.
    for text in candidates + [str(v) for v in doc.values() if isinstance(v, str)]:
        for code in FAILURE_CODES:
            if code in text:
                return code
    return next((c for c in candidates if _SAFE_CODE.match(c)), None)
