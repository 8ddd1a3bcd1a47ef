"""Container image references, parsed the way the kubelet (and containerd) read them.

`parse_image` turns the string of a container's `image:` field into an `ImageRef`, or raises
`InvalidImageRef` with a short reason meant for the person who wrote the manifest.
The grammar follows the distribution reference grammar (docker/distribution `reference`):

    [domain[:port]/]path[:tag][@algorithm:hex]

A first path component is a domain when it contains "." or ":" or is "localhost"; otherwise
the image lives on Docker Hub (`docker.io`, with `library/` for one-component names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

DOCKER_HUB = "docker.io"
# Azure Container Registry's public clouds; other hosts count as ACR only when configured.
ACR_SUFFIXES = (".azurecr.io", ".azurecr.cn", ".azurecr.us")

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
    r"(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*"
    r"(?::[0-9]+)?\Z"
    r"|\[[0-9a-fA-F:.]+\](?::[0-9]+)?\Z"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}\Z")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}\Z")
MAX_LENGTH = 4096


class InvalidImageRef(ValueError):
    """The image string is not a reference a kubelet would pull; `str()` is the reason."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One parsed image reference. `tag` is None when the reference has only a digest."""

    raw: str
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def digest_pinned(self) -> bool:
        """True when the kubelet pulls by digest (a tag next to a digest is ignored)."""
        return self.digest is not None

    @property
    def name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the registry is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and first == "index.docker.io":
        return DOCKER_HUB, rest
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DOCKER_HUB, name if sep else f"library/{name}"


# References up to this long are kept by the parse cache (8,192 of them: at most ~2 MiB); a
# longer one, which a tenant can write thousands of, is parsed each time instead.
CACHED_LENGTH = 256


def parse_image(raw: str) -> ImageRef:
    """Parse `raw` into an `ImageRef`; raise `InvalidImageRef` with the reason when it can't be."""
    if type(raw) is str and len(raw) <= CACHED_LENGTH:
        return _parse_cached(raw)
    return _parse(raw)


@lru_cache(maxsize=8192)
def _parse_cached(raw: str) -> ImageRef:
    return _parse(raw)


def _parse(raw: str) -> ImageRef:
    if not isinstance(raw, str):
        raise InvalidImageRef("image is not a string")
    if not raw:
        raise InvalidImageRef("image is empty")
    if len(raw) > MAX_LENGTH:
        raise InvalidImageRef("image reference is too long")
    if raw != raw.strip():
        raise InvalidImageRef("image has leading or trailing spaces")
    rest, _, digest = raw.partition("@")
    if digest.startswith("sha256:") and not _SHA256.match(digest):
        raise InvalidImageRef("sha256 digest must be 64 lower-case hex characters")
    if digest and not _DIGEST.match(digest):
        raise InvalidImageRef(f"invalid digest {digest[:80]!r}")
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidImageRef(f"invalid tag {tag[:80]!r}")
    if not rest:
        raise InvalidImageRef("image has no repository name")
    domain, path = _split_domain(rest)
    if not _DOMAIN.match(domain):
        raise InvalidImageRef(f"invalid registry host {domain[:80]!r}")
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            if component.lower() != component:
                raise InvalidImageRef("repository name must be lower-case")
            raise InvalidImageRef(f"invalid repository name {path[:80]!r}")
    if tag is None and not digest:
        tag = "latest"
    return ImageRef(
        raw=raw,
        registry=canonical_registry(domain),
        repository=path,
        tag=tag,
        digest=digest or None,
    )


def canonical_registry(registry: str) -> str:
    """`registry` lower-case and without HTTPS's default port: `host:443` and `host` are the
    same registry to the kubelet and to every HTTP client, so they must be one registry here
    too (settings, ACR patterns, where credentials may go). Any other port stays."""
    registry = registry.lower()
    return registry[:-4] if registry.endswith(":443") else registry


def host_of(registry: str) -> str:
    """`registry` without its port, lower-case (`[v6]` addresses keep their brackets)."""
    registry = registry.lower()
    if registry.startswith("["):
        return registry.partition("]")[0] + "]"
    return registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry


def is_acr_host(registry: str) -> bool:
    """True for `<name>.azurecr.io|cn|us`, with or without a port: ACR's own domains, whose
    every name is a registry Azure runs (docs/aks-facts.md §8)."""
    return host_of(registry).endswith(ACR_SUFFIXES)


def acr_registry_name(registry: str) -> str | None:
    """The registry's ACR resource name (what `az acr … -n` takes) for `<name>.azurecr.*`
    hosts; None for other hosts (a custom domain's name is not in its host name). A
    registry created with a domain-name-label scope has a hash after its name
    (`myacr-abc123.azurecr.io`); ACR names are letters and digits only, so the name is what
    comes before the first `-` (docs/aks-facts.md §8)."""
    if not is_acr_host(registry):
        return None
    return host_of(registry).split(".", 1)[0].split("-", 1)[0] or None
