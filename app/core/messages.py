"""The words users read: one warning per problem, and the denial message.

What the kube-apiserver does with warnings (k8s.io/apiserver/pkg/warning and the warning
recorder of its handler chain, checked against the real apiserver in
tests/e2e/test_admission_e2e.py): identical texts are sent once; while all warnings of a
request add up to at most 4,096 characters each is passed on whole; past that, every warning
is cut to 256 characters and those past the 4,096 are dropped. So a warning here:

- names the image as the user wrote it, shortening only the middle of a very long one;
- never cuts the fix: the command is printed whole and runs as printed;
- stays within `MAX_WARNING` (256) characters whenever the fix itself allows;
- holds no control character (the apiserver silently drops a warning with one, and a
  terminal would run an escape sequence a tenant put in an image name): `printable`;

and `fit_warnings` keeps a request's warnings within `OWN_BUDGET`, most important first: the
4,096 characters are shared by every webhook and the apiserver's own warnings (PodSecurity,
deprecations) on the same request, so streamgate leaves a quarter of them to the others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from app.core.images import ImageRef, acr_registry_name
from app.core.pools import PoolFit

MAX_WARNING = 256  # the apiserver cuts longer warnings once a request's warnings pass 4 KiB
MAX_TOTAL = 4096  # the apiserver drops warnings past this many characters in all
OWN_BUDGET = 3072  # streamgate's share of MAX_TOTAL
NO_ARTIFACT = "no streaming artifact"
_ELLIPSIS = "…"


# What Go's unicode.IsControl (used by the apiserver's warning header check) calls control:
# C0, DEL and C1. Written as escapes, the way Python's repr writes them.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str, keep: str = "") -> str:
    """`text` with every control character (but those in `keep`) written as an escape."""
    if text.isprintable():  # the usual case, and cheap: no control character in it
        return text
    table = _CONTROLS if not keep else {k: v for k, v in _CONTROLS.items() if chr(k) not in keep}
    return text.translate(table)


def fit(text: str, limit: int = MAX_WARNING) -> str:
    """One line of at most `limit` characters (for texts with nothing to copy out of them)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + _ELLIPSIS


def short(text: str, budget: int) -> str:
    """Shorten in the middle, keeping both ends readable."""
    if len(text) <= budget:
        return text
    head = (budget - 1) // 2
    return text[:head] + _ELLIPSIS + text[-(budget - 1 - head) :]


def display(ref: ImageRef) -> str:
    """The image as written, with a digest cut to its first 12 hex characters (the fix
    command, where one is printed, carries the whole digest)."""
    text = ref.raw
    if ref.digest:
        algo, _, hexpart = ref.digest.partition(":")
        text = text.replace(ref.digest, f"{algo}:{hexpart[:12]}{_ELLIPSIS}")
    return text


def _line(prefix: str, ref: ImageRef, suffix: str, limit: int = MAX_WARNING) -> str:
    """`prefix`, the image as written, `suffix`; when the line would pass `limit`, only the
    image's middle is shortened (down to 16 characters; never the prefix or the suffix)."""
    shown = display(ref)
    over = len(prefix) + len(shown) + len(suffix) - limit
    if over > 0:
        room = max(16, len(shown) - over)
        host = ref.registry + "/"
        if shown.startswith(host) and room >= len(host) + 12:  # keep the host whole
            shown = host + short(shown[len(host) :], room - len(host))
        else:
            shown = short(shown, room)
    return prefix + shown + suffix


def registry_name(ref: ImageRef, names: Mapping[str, str]) -> str | None:
    """The ACR resource name `az acr` wants for this image's registry: from `names` (the
    policy's `acrRegistryNames`, for custom domains), else from an `*.azurecr.*` host."""
    return names.get(ref.registry) or acr_registry_name(ref.registry)


def image_argument(ref: ImageRef) -> str:
    """`--image` as az takes it, from what the user wrote: `repo:tag`, or `repo@digest` for an
    image pinned by digest alone (never a tag the user did not write)."""
    if ref.tag:
        return f"{ref.repository}:{ref.tag}"
    if ref.digest:
        return f"{ref.repository}@{ref.digest}"
    return f"{ref.repository}:latest"  # no tag and no digest: the kubelet pulls :latest


def fix_command(ref: ImageRef, names: Mapping[str, str] | None = None) -> str:
    """The az command that asks ACR for a streaming artifact of this image."""
    name = registry_name(ref, names or {})
    registry = name if name else f"<registry name of {ref.registry}>"
    return f"az acr artifact-streaming create -n {registry} --image {image_argument(ref)}"


_RETRY = re.compile(r"conversion (failed \([A-Z_]+\)|canceled)\Z")


def conversion_helps(reason: str) -> bool:
    """Would starting a conversion (`fix_command`) help an image not streamable for `reason`?
    Yes when it has no artifact or its last conversion failed or was canceled; not while one
    is queued or running, nor for a failure no retry fixes."""
    return not reason or reason == NO_ARTIFACT or bool(_RETRY.match(reason))


def not_streamable(
    label: str, ref: ImageRef, reason: str, names: Mapping[str, str] | None = None
) -> str:
    """Names the image and what to do. When the registry knows more (conversion queued,
    running, failed for a reason no retry fixes) its reason is the message; the command that
    starts a conversion is added only where running it would help."""
    fix = fix_command(ref, names)
    if not reason or reason == NO_ARTIFACT:  # (conversion_helps says the same)
        detail = f" has no streaming artifact; fix: {fix}"
    elif _RETRY.match(reason):
        detail = f": {' '.join(reason.split())}; retry: {fix}"
    else:
        detail = f": {' '.join(reason.split())}"
    line = _line(f"{label}: ", ref, detail)
    if len(line) > MAX_WARNING and fix in detail:
        # The command names the registry and the image: it alone says which image it is.
        line = f"{label}: {detail.removeprefix(' has ').lstrip(': ')}"
    return line


def unknown(label: str, ref: ImageRef, reason: str, *, denied: bool) -> str:
    """Not checked: why, what happens now, and where to look further."""
    outcome = "denied (onError: deny)" if denied else "allowed"
    why = " ".join((reason or "unknown").split())[:120]
    line = _line(f"{label}: ", ref, f" not checked: {why}; {outcome}")
    details = f"; details: streamgate explain {ref.raw}"
    return line + details if len(line) + len(details) <= MAX_WARNING else line


def digest_pinned(label: str, ref: ImageRef) -> str:
    how = f"pull it by tag ({ref.repository}:{ref.tag})" if ref.tag else "pull it by tag"
    return _line(f"{label}: ", ref, f" is pinned by digest; AKS streams tag pulls only: {how}")


def pull_secrets() -> str:
    return (
        "imagePullSecrets set: ACR pulls with pull secrets don't stream; use the kubelet "
        "identity (az aks update -g <resource-group> -n <cluster> --attach-acr <registry>)"
    )


def not_acr(label: str, ref: ImageRef) -> str:
    return _line(f"{label}: ", ref, " is not from ACR and can't stream")


def invalid_image(label: str, image: object, reason: str) -> str:
    if image is None:
        return f"{label}: has no image"
    shown = short(image if isinstance(image, str) else repr(image), 120)
    return fit(f"{label}: invalid image {shown!r}: {reason}")


def pool_list(pools: Sequence[PoolFit], budget: int = 110) -> str:
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


def selector_hint(selector: tuple[str, str] | None, streaming: Sequence[PoolFit]) -> str:
    """How to keep the pod on pools that stream: the label the steering option requires."""
    if selector is not None:
        key, value = selector
        return f'add nodeSelector {key}: "{value}"'
    if streaming:
        names = ", ".join(p.name for p in streaming[:4]) + (", …" if len(streaming) > 4 else "")
        return f"add a nodeSelector or affinity for the pools that stream ({names})"
    return "add a nodeSelector or affinity for a pool that streams"


def pools_may_not_stream(
    pools: Sequence[PoolFit],
    selector: tuple[str, str] | None = None,
    streaming: Sequence[PoolFit] = (),
) -> str:
    hint = selector_hint(selector, streaming)
    return fit(f"may land on pools that can't stream: {pool_list(pools)}; {hint}")


def pools_cannot_stream(pools: Sequence[PoolFit]) -> str:
    return fit(f"only fits pools that can't stream: {pool_list(pools)}; target a streaming pool")


def no_streaming_pools(pools: Sequence[PoolFit]) -> str:
    """No node of the cluster carries the streaming label: streaming was never enabled."""
    pool = next((p.name for p in pools if p.streaming.value == "unknown"), "<pool>")
    return (
        "no node pool in this cluster has artifact streaming enabled; enable it: "
        f"az aks nodepool update -g <resource-group> --cluster-name <cluster> -n {pool} "
        "--enable-artifact-streaming"
    )


def no_pool() -> str:
    return "fits no current node pool (nodeSelector, affinity, tolerations): it will stay Pending"


def grouped(labels: Sequence[str], text: str) -> str | None:
    """One warning for a problem several containers share: `text` without its label, led by
    how many and which; None when even the shortest form passes MAX_WARNING (each
    container's own line was fitted to its own label, so those are kept instead)."""
    names = ", ".join(labels[:3]) + (f", +{len(labels) - 3} more" if len(labels) > 3 else "")
    line = f"{len(labels)} containers ({names}){text}"
    if len(line) > MAX_WARNING:
        line = f"{len(labels)} containers{text}"
    if len(line) > MAX_WARNING and "; details: streamgate explain " in line:
        line = line.split("; details: streamgate explain ", 1)[0]
    return line if len(line) <= MAX_WARNING else None


def _escaped(text: str) -> str:
    """`printable(text)`, cut to MAX_WARNING again when the escapes made it longer."""
    out = printable(text)
    return out if out == text or len(out) <= MAX_WARNING else fit(out)


def fit_warnings(texts: Sequence[str], limit: int = OWN_BUDGET) -> list[str]:
    """The warnings the apiserver will pass on whole: in order, each once, within `limit`
    characters in all; when some must go, the last kept says how many were left out."""
    out: list[str] = []
    used = 0
    unique = list(dict.fromkeys(_escaped(t) for t in texts))
    for i, text in enumerate(unique):
        rest = len(unique) - i - 1
        reserve = 90 if rest else 0  # room for the "+N more" line
        if used + len(text) + reserve > limit:
            out.append(
                f"+{len(unique) - i} more problems not shown; see the streamgate.io/report "
                "annotation or run streamgate check"
            )
            break
        out.append(text)
        used += len(text)
    return out


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
    return printable(
        f"streamgate: {kind} {name or '(unnamed)'} can't use artifact streaming: {listed}"
    )


# Where a message's fix starts: after one of these markers (the command, whole), or its last
# "; " part when that says what to do. Checked against every builder above in
# tests/unit/core/test_messages.py.
_FIX_MARKERS = ("; fix: ", "; retry: ", "; enable it: ", "; details: ")
_FIX_STARTS = ("use ", "add ", "target ", "pull it by tag")


def fix_of(text: str) -> str | None:
    """The part of a message that says what to do (a command, or the change to make), or None
    when the message names no fix (a conversion that is running, an image outside ACR)."""
    for marker in _FIX_MARKERS:
        if marker in text:
            return text.rsplit(marker, 1)[1]
    for sep in ("; ", ": "):
        tail = text.rsplit(sep, 1)[-1] if sep in text else ""
        if tail.startswith(_FIX_STARTS):
            return tail
    return None
