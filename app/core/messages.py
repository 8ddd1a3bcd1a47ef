"""The words users read: one short warning per problem, and the denial message.

Kubernetes asks that warnings stay within 120 characters; every message here is built to
fit, shortening the image reference first and the whole text only as a last resort.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from app.core.images import ImageRef, is_acr_host
from app.core.pools import PoolFit

MAX_WARNING = 120
NO_ARTIFACT = "no streaming artifact"
_IMAGE_BUDGET = 56
_ELLIPSIS = "…"


def fit(text: str, limit: int = MAX_WARNING) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + _ELLIPSIS


def short(text: str, budget: int = _IMAGE_BUDGET) -> str:
    """Shorten in the middle, keeping the registry and the tag readable."""
    if len(text) <= budget:
        return text
    head = (budget - 1) // 2
    return text[:head] + _ELLIPSIS + text[-(budget - 1 - head) :]


def display(ref: ImageRef, budget: int = _IMAGE_BUDGET) -> str:
    """The image as written, with a digest cut to its first 12 hex characters."""
    text = ref.raw
    if ref.digest:
        algo, _, hexpart = ref.digest.partition(":")
        text = text.replace(ref.digest, f"{algo}:{hexpart[:12]}{_ELLIPSIS}")
    if len(text) > budget and text.startswith(ref.registry + "/"):
        text = text[len(ref.registry) + 1 :]  # the repository says more than the host
    return short(text, budget)


def repo_tag(ref: ImageRef) -> str:
    return f"{ref.repository}:{ref.tag or 'latest'}"


def fix_command(ref: ImageRef) -> str:
    """The az command that asks ACR for a streaming artifact of this image."""
    name = f"-n {ref.registry.split('.')[0]} " if is_acr_host(ref.registry) else ""
    image = f"{ref.repository}@{ref.digest}" if ref.digest else repo_tag(ref)
    return f"az acr artifact-streaming create {name}--image {image}"


_RETRY = re.compile(r"conversion (failed \([A-Z_]+\)|canceled)\Z")


def not_streamable(label: str, ref: ImageRef, reason: str) -> str:
    """Names the image and what to do. When the registry knows more (conversion queued,
    running, failed for a reason no retry fixes) its reason is the message; the command that
    starts a conversion is added only where running it would help."""
    if not reason or reason == NO_ARTIFACT:
        detail = f" has no streaming artifact; fix: {fix_command(ref)}"
    elif _RETRY.match(reason):
        detail = f": {reason}; retry: {fix_command(ref)}"
    else:
        detail = f": {reason}"
    full = f"{label}: {display(ref)}{detail}"
    if len(full) <= MAX_WARNING:
        return full
    return fit(f"{label}: {short(repo_tag(ref), 40)}{detail}")


def unknown(label: str, ref: ImageRef, reason: str, *, denied: bool) -> str:
    """The outcome stays readable: a long reason is shortened before it."""
    outcome = "denied (onError: deny)" if denied else "allowed"
    head = " ".join(f"{label}: {display(ref, 48)} not checked:".split())
    room = MAX_WARNING - len(head) - len(outcome) - 3
    why = " ".join((reason or "unknown").split())
    if len(why) > room > 8:
        why = why[: room - 1] + _ELLIPSIS
    return fit(f"{head} {why}; {outcome}")


def digest_pinned(label: str, ref: ImageRef) -> str:
    return fit(f"{label}: {display(ref, 48)} is pinned by digest; AKS streams tag pulls only")


def pull_secrets() -> str:
    return fit(
        "imagePullSecrets set: ACR pulls with pull secrets don't stream; "
        "use the kubelet identity (az aks update --attach-acr)"
    )


def not_acr(label: str, ref: ImageRef) -> str:
    return fit(f"{label}: {display(ref)} is not from ACR and can't stream")


def invalid_image(label: str, image: object, reason: str) -> str:
    shown = short(image if isinstance(image, str) else repr(image), 40)
    return fit(f"{label}: invalid image {shown!r}: {reason}")


def pool_list(pools: Sequence[PoolFit], budget: int = 70) -> str:
    """`arm (arm64), cvm (Confidential VM), +2 more`, kept within `budget` characters."""
    parts: list[str] = []
    used = 0
    for i, pool in enumerate(pools):
        item = f"{pool.name} ({', '.join(pool.reasons) or 'can not stream'})"
        more = len(pools) - i - 1
        tail = len(f", +{more} more") if more else 0
        if parts and used + len(item) + 2 + tail > budget:
            parts.append(f"+{len(pools) - i} more")
            break
        parts.append(item)
        used += len(item) + 2
    return ", ".join(parts)


def pools_may_not_stream(pools: Sequence[PoolFit]) -> str:
    return fit(f"may land on pools that can't stream: {pool_list(pools)}; add a nodeSelector")


def pools_cannot_stream(pools: Sequence[PoolFit]) -> str:
    return fit(f"only fits pools that can't stream: {pool_list(pools)}; target a streaming pool")


def no_pool() -> str:
    return fit(
        "fits no current node pool (nodeSelector, affinity, tolerations): it will stay Pending"
    )


def exemption_ignored(*, allowed: bool) -> str:
    if not allowed:
        return fit(
            "streamgate.io/exempt ignored: this cluster's policy allows no exemption by annotation"
        )
    return fit(
        "streamgate.io/exempt ignored in enforce mode here; "
        "an admin can allow it (policy exemptions.annotation)"
    )


def mode_label_ignored(label: str, admin: str) -> str:
    return fit(
        f"namespace label streamgate.io/mode={label} ignored: labels may only be stricter "
        f"than {admin} (policy namespaceLabel)"
    )


def denial(kind: str, name: str, problems: Sequence[str]) -> str:
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
    return f"streamgate: {kind} {name or '(unnamed)'} can't use artifact streaming: {listed}"
