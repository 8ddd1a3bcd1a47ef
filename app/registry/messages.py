"""Verdicts and the short texts users read in them.

Reasons stay short and state the registry's side only (the policy layer puts them into
warnings of at most 120 characters, with the image name, and adds the `az acr
artifact-streaming create` command where running it would help: app/core/messages.py).
"""

from __future__ import annotations

from app.core.images import ImageRef
from app.core.messages import NO_ARTIFACT
from app.core.platform import Platform
from app.core.verdicts import ImageVerdict, Verdict
from app.registry.conversion import ConversionState, ConversionStatus
from app.registry.errors import RegistryError
from app.registry.lookup import LookupResult

TIMED_OUT = "registry timed out"
FAILED = "registry look-up failed"

_PLATFORM_CODES = frozenset(
    {"UNSUPPORTED_PLATFORM", "NO_SUPPORTED_PLATFORM_FOUND", "IMAGE_NOT_RUNNABLE"}
)
_HINTS = {
    "UNSUPPORTED_MEDIATYPE": "the manifest type can't be converted",
    "UNSUPPORTED_ARTIFACT_TYPE": "the artifact type can't be converted",
}


def verdict_for(ref: ImageRef, result: LookupResult, *, platform: Platform) -> ImageVerdict:
    if result.artifact is not None:
        return ImageVerdict(
            Verdict.STREAMABLE,
            digest=result.digest,
            artifact_digest=result.artifact.digest,
            annotations=dict(result.artifact.annotations),
        )
    return ImageVerdict(
        Verdict.NOT_STREAMABLE,
        reason=_missing_reason(ref, result, platform=platform),
        digest=result.digest,
    )


def _missing_reason(ref: ImageRef, result: LookupResult, *, platform: Platform) -> str:
    manifest = result.manifest
    if manifest is not None and manifest.is_index and manifest.platform_digest is None:
        return f"no {platform} image in the index; streaming needs one"
    if result.other_platforms:
        others = ", ".join(result.other_platforms[:3])
        more = ", ..." if len(result.other_platforms) > 3 else ""
        return f"streaming artifact only for {others}{more}, not {platform}"
    if result.conversion is None:
        return NO_ARTIFACT
    return _conversion_reason(result.conversion)


def _conversion_reason(status: ConversionStatus) -> str:
    state = status.state
    if state is ConversionState.NOT_STARTED:
        return "no streaming artifact yet; conversion queued"
    if state is ConversionState.RUNNING:
        progress = f" ({status.progress})" if status.progress else ""
        return f"no streaming artifact yet; conversion running{progress}"
    if state is ConversionState.SUCCEEDED:
        return "no streaming artifact visible yet; conversion succeeded"
    if state is ConversionState.FAILED:
        code = status.failure_code or "no code"
        if code in _PLATFORM_CODES:
            return f"streaming conversion failed ({code}): only linux/amd64 images convert"
        if code in _HINTS:
            return f"streaming conversion failed ({code}): {_HINTS[code]}"
        return f"conversion failed ({code})"
    if state is ConversionState.CANCELED:
        return "conversion canceled"
    if state is ConversionState.NEVER_REQUESTED:
        return NO_ARTIFACT  # the message layer adds the command that starts one
    return NO_ARTIFACT


def unknown(reason: str) -> ImageVerdict:
    return ImageVerdict(Verdict.UNKNOWN, reason=reason)


def verdict_for_error(err: RegistryError) -> ImageVerdict:
    return unknown(err.reason)
