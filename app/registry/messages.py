"""Verdicts and the short texts users read in them.

Reasons stay short (the policy layer puts them into warnings of at most 120 characters, with
the image name) and say what to do when there is something to do: for an ACR image without a
streaming artifact, the `az acr artifact-streaming create` command that makes one.
"""

from __future__ import annotations

from app.images import ImageRef
from app.registry.config import ACR_SUFFIXES
from app.registry.conversion import ConversionState, ConversionStatus
from app.registry.errors import RegistryError
from app.registry.lookup import LookupResult
from app.registry.oci import Platform
from app.verdicts import ImageVerdict, Verdict

TIMED_OUT = "registry timed out"
FAILED = "registry look-up failed"

_PLATFORM_CODES = frozenset(
    {"UNSUPPORTED_PLATFORM", "NO_SUPPORTED_PLATFORM_FOUND", "IMAGE_NOT_RUNNABLE"}
)
_HINTS = {
    "UNSUPPORTED_MEDIATYPE": "the manifest type can't be converted",
    "UNSUPPORTED_ARTIFACT_TYPE": "the artifact type can't be converted",
}


def fix_command(ref: ImageRef) -> str:
    """The az command that asks ACR for a streaming artifact of this image."""
    host = ref.registry.split(":")[0]
    name = host.split(".")[0] if host.endswith(ACR_SUFFIXES) else "<registry-name>"
    image = f"{ref.repository}@{ref.digest}" if ref.digest else f"{ref.repository}:{ref.tag}"
    return f"az acr artifact-streaming create -n {name} --image {image}"


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
        return "no streaming artifact"
    return _conversion_reason(result.conversion, fix_command(ref))


def _conversion_reason(status: ConversionStatus, command: str) -> str:
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
        return f"streaming conversion failed ({code}); retry: {command}"
    if state is ConversionState.CANCELED:
        return f"streaming conversion canceled; fix: {command}"
    if state is ConversionState.NEVER_REQUESTED:
        return f"no streaming artifact, conversion never requested; fix: {command}"
    return f"no streaming artifact (conversion status unknown); fix: {command}"


def unknown(reason: str) -> ImageVerdict:
    return ImageVerdict(Verdict.UNKNOWN, reason=reason)


def verdict_for_error(err: RegistryError) -> ImageVerdict:
    return unknown(err.reason)
