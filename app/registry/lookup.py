"""One image, from reference to streaming artifact (or its absence), through the caches.

    tag ──tags cache (short)──▶ digest ──manifests cache (long)──▶ index? ─▶ platform digest
    digest(s) ──artifacts cache (long if found, short if none yet)──▶ referrers search
    none found on ACR ──conversions cache (short)──▶ last conversion status

The search on the top digest starts as soon as the digest is known; for an index the search
on the platform entry runs beside it (which of the two ACR attaches to is not documented).
An artifact found on either answers even if the other search failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from app.core.images import ImageRef
from app.core.registries import CacheSettings, RegistryConfig
from app.registry.cache import TtlCache
from app.registry.conversion import STATUS_UNKNOWN, ConversionStatus, conversion_status
from app.registry.errors import RegistryError
from app.registry.manifests import ManifestInfo, describe
from app.registry.metrics import NULL_OBSERVER, RegistryObserver
from app.registry.pool import ClientPool
from app.registry.referrers import ReferrerSearch, StreamingArtifact, find_streaming
from app.registry.transport import RegistryTransport

logger = logging.getLogger(__name__)

_Key = tuple[str, str, str]  # registry, repository, tag or digest
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What the registry says about one image. `manifest` is None only when the manifest
    could not be read but an artifact was found anyway (digest-pinned references)."""

    digest: str
    manifest: ManifestInfo | None
    artifact: StreamingArtifact | None
    searches: tuple[ReferrerSearch, ...]
    conversion: ConversionStatus | None = None

    @property
    def other_platforms(self) -> tuple[str, ...]:
        return tuple(sorted({p for s in self.searches for p in s.other_platforms}))


def _cache(
    name: str,
    *,
    settings: CacheSettings,
    clock: Callable[[], float],
    observer: RegistryObserver,
) -> TtlCache[_Key, V]:
    return TtlCache(
        name,
        max_entries=settings.max_entries,
        stale_seconds=settings.stale_seconds,
        clock=clock,
        observer=observer,
    )


class Lookup:
    def __init__(
        self,
        *,
        pool: ClientPool,
        config: RegistryConfig,
        clock: Callable[[], float] = time.monotonic,
        observer: RegistryObserver = NULL_OBSERVER,
    ) -> None:
        self._pool = pool
        self._config = config
        self._platform = config.wanted_platform
        make = partial(_cache, settings=config.cache, clock=clock, observer=observer)
        self.tags: TtlCache[_Key, str] = make("tags")
        self.manifests: TtlCache[_Key, ManifestInfo] = make("manifests")
        self.artifacts: TtlCache[_Key, ReferrerSearch] = make("artifacts")
        self.conversions: TtlCache[_Key, ConversionStatus] = make("conversions")

    async def run(self, ref: ImageRef) -> LookupResult:
        transport = self._pool.transport(ref.registry)
        repo = ref.repository
        digest = ref.digest or await self._tag_digest(transport, ref)
        top = asyncio.ensure_future(self._search(transport, repo, digest))
        try:
            manifest = await self._manifest(transport, repo, digest)
        except RegistryError:
            outcome = (await asyncio.gather(top, return_exceptions=True))[0]
            if isinstance(outcome, ReferrerSearch) and outcome.artifact is not None:
                return LookupResult(digest, None, outcome.artifact, (outcome,))
            raise
        pending = [top]
        if manifest.platform_digest is not None:
            pending.append(
                asyncio.ensure_future(self._search(transport, repo, manifest.platform_digest))
            )
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        searches = tuple(o for o in outcomes if isinstance(o, ReferrerSearch))
        # Prefer the platform manifest's artifact: it is what a node of that platform pulls.
        found = [s.artifact for s in reversed(searches) if s.artifact is not None]
        if found:
            return LookupResult(digest, manifest, found[0], searches)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        conversion = None
        if self._pool.is_acr(ref.registry):
            conversion = await self._conversion(transport, repo, digest)
        return LookupResult(digest, manifest, None, searches, conversion)

    def cached(self, ref: ImageRef) -> LookupResult | None:
        """The answer the caches alone give, stale entries included, without asking anyone;
        None when a piece is missing. Used when a look-up ran out of time."""
        registry, repo = ref.registry.lower(), ref.repository
        digest = ref.digest or self.tags.get(
            (registry, repo, ref.tag or "latest"), allow_stale=True
        )
        if digest is None:
            return None
        manifest = self.manifests.get((registry, repo, digest), allow_stale=True)
        subjects = [digest]
        if manifest is not None and manifest.platform_digest is not None:
            subjects.append(manifest.platform_digest)
        found = [self.artifacts.get((registry, repo, d), allow_stale=True) for d in subjects]
        searches = tuple(s for s in found if s is not None)
        artifacts = [s.artifact for s in reversed(searches) if s.artifact is not None]
        if artifacts:
            return LookupResult(digest, manifest, artifacts[0], searches)
        if manifest is None or len(searches) < len(subjects):
            return None
        conversion = None
        if self._pool.is_acr(registry):
            key = (registry, repo, digest)
            conversion = self.conversions.get(key, allow_stale=True) or STATUS_UNKNOWN
        return LookupResult(digest, manifest, None, searches, conversion)

    @property
    def generation(self) -> int:
        """Changes whenever any cache entry is stored or dropped (see `TtlCache.writes`)."""
        return (
            self.tags.writes
            + self.manifests.writes
            + self.artifacts.writes
            + self.conversions.writes
        )

    def fresh(self, ref: ImageRef) -> tuple[LookupResult, float] | None:
        """The answer fresh cache entries give, without a task or a wait, and the clock time
        until which all of them stay fresh: the admission hot path asks this first. None when
        any piece is missing or expired."""
        registry, repo = ref.registry.lower(), ref.repository
        until = math.inf
        if ref.digest:
            digest = ref.digest
        else:
            tag = self.tags.hit_until((registry, repo, ref.tag or "latest"))
            if tag is None:
                return None
            digest, until = tag
        found = self.manifests.hit_until((registry, repo, digest))
        if found is None:
            return None
        manifest, expires = found
        until = min(until, expires)
        subjects = [digest]
        if manifest.platform_digest is not None:
            subjects.append(manifest.platform_digest)
        searches = []
        for subject in subjects:
            search = self.artifacts.hit_until((registry, repo, subject))
            if search is None:
                return None
            searches.append(search[0])
            until = min(until, search[1])
        artifacts = [s.artifact for s in reversed(searches) if s.artifact is not None]
        if artifacts:
            return LookupResult(digest, manifest, artifacts[0], tuple(searches)), until
        conversion = None
        if self._pool.is_acr(registry):
            status = self.conversions.hit_until((registry, repo, digest))
            if status is None:
                return None
            conversion, until = status[0], min(until, status[1])
        return LookupResult(digest, manifest, None, tuple(searches), conversion), until

    async def _tag_digest(self, transport: RegistryTransport, ref: ImageRef) -> str:
        assert ref.tag is not None
        repo = ref.repository

        async def resolve() -> str:
            info = await describe(transport, repo, ref.tag or "latest", platform=self._platform)
            ttl = self._config.cache.manifest_ttl_seconds
            self.manifests.put((transport.registry, repo, info.digest), info, ttl)
            return info.digest

        ttl = self._config.cache.tag_ttl_seconds
        key = (transport.registry, repo, ref.tag)
        return await self.tags.get_or_load(key, resolve, ttl=lambda _: ttl)

    async def _manifest(self, transport: RegistryTransport, repo: str, digest: str) -> ManifestInfo:
        ttl = self._config.cache.manifest_ttl_seconds
        return await self.manifests.get_or_load(
            (transport.registry, repo, digest),
            lambda: describe(transport, repo, digest, platform=self._platform),
            ttl=lambda _: ttl,
        )

    async def _search(self, transport: RegistryTransport, repo: str, digest: str) -> ReferrerSearch:
        cache = self._config.cache

        def ttl(search: ReferrerSearch) -> float:
            return cache.found_ttl_seconds if search.artifact else cache.missing_ttl_seconds

        return await self.artifacts.get_or_load(
            (transport.registry, repo, digest),
            lambda: find_streaming(
                transport,
                repo,
                digest,
                platform=self._platform,
                max_pages=self._config.max_referrer_pages,
            ),
            ttl=ttl,
        )

    async def _conversion(
        self, transport: RegistryTransport, repo: str, digest: str
    ) -> ConversionStatus:
        ttl = self._config.cache.missing_ttl_seconds
        try:
            return await self.conversions.get_or_load(
                (transport.registry, repo, digest),
                lambda: conversion_status(transport, repo, digest),
                ttl=lambda _: ttl,
            )
        except RegistryError as err:
            logger.info("conversion status of %s/%s@%s: %s", transport.registry, repo, digest, err)
            return STATUS_UNKNOWN

    def learn_conversion(
        self, registry: str, repo: str, digest: str, status: ConversionStatus
    ) -> None:
        """What a conversion this process follows says now (the next verdict shows it)."""
        ttl = self._config.cache.missing_ttl_seconds
        self.conversions.put((registry.lower(), repo, digest), status, ttl)

    def forget_missing(self, registry: str, repo: str, digest: str) -> None:
        """Drop "no streaming artifact" for `digest` (and the platform manifest it points
        to) and its conversion record: a conversion has finished, the next look-up searches
        the referrers again instead of trusting the negative answer until it expires."""
        registry = registry.lower()
        manifest = self.manifests.get((registry, repo, digest), allow_stale=True)
        subjects = [digest]
        if manifest is not None and manifest.platform_digest is not None:
            subjects.append(manifest.platform_digest)
        for subject in subjects:
            search = self.artifacts.get((registry, repo, subject), allow_stale=True)
            if search is None or search.artifact is None:
                self.artifacts.invalidate((registry, repo, subject))
        self.conversions.invalidate((registry, repo, digest))

    async def aclose(self) -> None:
        for cache in (self.tags, self.manifests, self.artifacts, self.conversions):
            await cache.aclose()
