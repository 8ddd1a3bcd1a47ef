"""Errors of the registry client.

Everything in `app.registry` below the verdict source raises only these; the source turns them
into `Verdict.UNKNOWN` with `reason` as the user-facing text. `str(err)` adds the registry and a
detail for logs. Neither ever holds a token, a password or a response body.

    RegistryError              base; `.registry`, `.reason` (short, for users), `.detail` (logs)
    ├── RegistryTimeout        no answer within the time allowed
    ├── RegistryUnavailable    connection failed, or an HTTP 5xx answer
    │   ├── RateLimited        HTTP 429; `.retry_after` seconds (None: not said) not to ask again
    │   └── CircuitOpen        too many failures in a row: the registry is not asked for a while
    ├── RegistryAuthError      no usable credentials, credentials refused, token exchange failed
    ├── ImageNotFound          the registry does not know the tag or digest
    └── BadResponse            an answer that is not what the spec says: bad JSON, wrong content
                               type, too large, a digest mismatch, a redirect to another host
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of all registry errors. `reason` is short and safe to show to users."""

    default_reason = "registry look-up failed"

    def __init__(self, registry: str, detail: str = "", *, reason: str | None = None) -> None:
        self.registry = registry
        self.detail = detail
        self.reason = reason or self.default_reason
        super().__init__(f"{registry}: {self.reason}" + (f" ({detail})" if detail else ""))


class RegistryTimeout(RegistryError):
    default_reason = "registry timed out"


class RegistryUnavailable(RegistryError):
    default_reason = "registry unavailable"


class RateLimited(RegistryUnavailable):
    default_reason = "registry rate-limited"

    def __init__(self, registry: str, retry_after: float | None, detail: str = "") -> None:
        self.retry_after = retry_after
        when = "" if retry_after is None else f"; retry in {max(1, round(retry_after))} s"
        super().__init__(registry, detail, reason=f"registry rate-limited{when}")


class CircuitOpen(RegistryUnavailable):
    default_reason = "registry unavailable (recent failures)"

    def __init__(self, registry: str, retry_in: float, detail: str = "") -> None:
        self.retry_in = retry_in
        super().__init__(
            registry,
            detail,
            reason=f"registry unavailable (recent failures; retry in {max(1, round(retry_in))} s)",
        )


class RegistryAuthError(RegistryError):
    default_reason = "registry authentication failed"


class ImageNotFound(RegistryError):
    default_reason = "image not found in registry"


class BadResponse(RegistryError):
    default_reason = "registry sent a bad answer"

    def __init__(self, registry: str, what: str, detail: str = "") -> None:
        super().__init__(registry, detail, reason=f"registry sent a bad answer: {what}")
