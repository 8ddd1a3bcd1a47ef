"""The hook through which the registry client reports what it does, for metrics.

`RegistryObserver` is a base class whose methods do nothing; a metrics module subclasses it,
overrides what it counts, and passes an instance to `RegistryVerdictSource`. The methods are
called on the event loop and must return quickly and not raise. Label values are small, fixed
sets (registry host, endpoint name, status class) so they are safe as metric labels.
"""

from __future__ import annotations


class RegistryObserver:
    """No-op base; override the callbacks you need."""

    def on_request(self, *, registry: str, endpoint: str, status: str, seconds: float) -> None:
        """One HTTP request to a registry or its token service.

        `endpoint`: manifest, referrers, fallback-tag, referrer-manifest, conversion, token,
        exchange. `status`: the HTTP status code as text, or timeout, error, too-large.
        """

    def on_token(self, *, registry: str, kind: str, outcome: str) -> None:
        """A credential was obtained. `kind`: aad, exchange (refresh token), access; `outcome`:
        ok or failed. Cached tokens that are reused are not reported here."""

    def on_cache(self, *, cache: str, event: str) -> None:
        """A cache event. `cache`: tags, manifests, artifacts, conversions; `event`: hit, miss,
        stale (an expired entry answered because the registry failed), eviction."""

    def on_circuit(self, *, registry: str, state: str) -> None:
        """The circuit of a registry changed state: closed, open, half-open."""

    def on_lookup(self, *, registry: str, verdict: str, seconds: float, timed_out: bool) -> None:
        """A verdict was returned for one image, `seconds` after it was asked for."""


NULL_OBSERVER = RegistryObserver()
