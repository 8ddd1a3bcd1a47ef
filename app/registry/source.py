"""`RegistryVerdictSource`: the production `VerdictSource`, asking registries within a deadline.

    source = RegistryVerdictSource(RegistryConfig.model_validate(settings["registry"]))
    verdict = await source.verdict(parse_image("myacr.azurecr.io/app:v1"))   # never raises
    await source.aclose()

Each look-up has `deadline_seconds` (2 s by default, under the webhook's timeout, see
`RegistryConfig`), counted from the start of the run it shares. Concurrent look-ups of one
image share one run; the run is its own task,
so a caller whose deadline passes gets `unknown: registry timed out` (or, when the caches
still hold a stale answer, that answer) while the run goes on (up to `background_seconds`)
and leaves its answer in the caches for the next admission.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from app.core.images import ImageRef, is_acr_host
from app.core.registries import RegistryConfig
from app.core.verdicts import ImageVerdict
from app.registry.cache import CacheStats, TtlCache
from app.registry.conversion import ConversionStatus
from app.registry.credentials import AadTokenProvider
from app.registry.errors import RegistryError, RegistryTimeout
from app.registry.lookup import Lookup, LookupResult
from app.registry.messages import FAILED, TIMED_OUT, unknown, verdict_for, verdict_for_error
from app.registry.metrics import NULL_OBSERVER, RegistryObserver
from app.registry.pool import ClientPool
from app.registry.singleflight import SingleFlight
from app.registry.transport import RegistryTransport

logger = logging.getLogger(__name__)

_Key = tuple[str, str, str]


class RegistryVerdictSource:
    """See the module docstring.

    `aad`: where AAD tokens come from (default: azure-identity's DefaultAzureCredential, made
    lazily and closed by `aclose`). `env`: environment for secrets named in the config (default
    `os.environ`, read once here). `transport`: an httpx transport for every registry client
    (tests pass `httpx.MockTransport`). `observer`: metrics hook. `clock`: monotonic seconds.
    `acr_hosts`: which registries are ACR (AAD auth by default, conversion status asked) when
    their settings don't say; default `*.azurecr.io|cn|us`, the server passes the policy's.
    `aad_hosts`: which of them `auth: auto` may send the Azure AD token to besides ACR's own
    domains and exact registry keys (the server passes `Policy.may_get_aad`: exact names only).
    """

    def __init__(
        self,
        config: RegistryConfig | None = None,
        *,
        aad: AadTokenProvider | None = None,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: RegistryObserver = NULL_OBSERVER,
        clock: Callable[[], float] = time.monotonic,
        acr_hosts: Callable[[str], bool] = is_acr_host,
        aad_hosts: Callable[[str], bool] = is_acr_host,
    ) -> None:
        self.config = config or RegistryConfig()
        self._observer = observer
        self._pool = ClientPool(
            self.config,
            aad=aad,
            env=env,
            transport=transport,
            clock=clock,
            observer=observer,
            acr_hosts=acr_hosts,
            aad_hosts=aad_hosts,
        )
        self._lookup = Lookup(pool=self._pool, config=self.config, clock=clock, observer=observer)
        self._flights: SingleFlight[_Key, LookupResult] = SingleFlight()
        self._platform = self.config.wanted_platform
        self._clock = clock
        # image reference as written -> (verdict, fresh until, cache generation): see `cached`
        self._answers: dict[str, tuple[ImageVerdict, float, int]] = {}
        self._answers_max = self.config.cache.max_entries

    def cached(self, ref: ImageRef) -> ImageVerdict | None:
        """The verdict fresh cache entries give, at once; None means: ask `verdict`.

        The verdict is kept (the `verdicts` cache in metrics) until the first of its entries
        expires or any entry is stored or dropped, and the same object comes back meanwhile:
        the admission's decision memo compares verdicts, and a repeated image costs one
        dictionary look-up instead of three cache hits and a new verdict. Answers from here
        count as cache hits, not in the look-up latency histogram (`on_lookup`: `verdict`)."""
        generation = self._lookup.generation
        kept = self._answers.get(ref.raw)
        if kept is not None and kept[2] == generation and kept[1] > self._clock():
            verdict = kept[0]
            self._observer.on_cache(cache="verdicts", event="hit")
        else:
            found = self._lookup.fresh(ref)
            if found is None:
                return None
            result, until = found
            verdict = verdict_for(ref, result, platform=self._platform)
            if ref.raw not in self._answers and len(self._answers) >= self._answers_max:
                del self._answers[next(iter(self._answers))]
            self._answers[ref.raw] = (verdict, until, generation)
        return verdict

    async def verdict(self, ref: ImageRef) -> ImageVerdict:
        started = time.monotonic()
        key = (ref.registry, ref.repository, ref.digest or ref.tag or "latest")
        timed_out = False
        budget = self.config.deadline_seconds
        running = self._flights.age(key)
        if running is not None:
            # Joining a look-up another caller started: the deadline counts from its start,
            # so asking again for the same image (the apiserver calls /mutate, then /validate)
            # never waits a whole deadline twice on a stalled registry.
            budget = max(0.0, budget - running)
        try:
            async with asyncio.timeout(budget):
                result = await self._flights.run(key, lambda: self._bounded(ref))
            verdict = verdict_for(ref, result, platform=self._platform)
        except TimeoutError:
            timed_out = True
            stale = self._lookup.cached(ref)
            if stale is None:
                verdict = unknown(TIMED_OUT)
            else:  # the registry is slow, but what it said before still holds
                logger.info("registry timed out on %s: answering from the cache", ref.raw)
                verdict = verdict_for(ref, stale, platform=self._platform)
        except RegistryError as err:
            logger.info("registry look-up of %s: %s", ref.raw, err)
            verdict = verdict_for_error(err)
        except Exception:
            logger.exception("registry look-up of %s failed unexpectedly", ref.raw)
            verdict = unknown(FAILED)
        seconds = time.monotonic() - started
        self._observer.on_lookup(
            registry=ref.registry,
            verdict=str(verdict.verdict),
            seconds=seconds,
            timed_out=timed_out,
        )
        logger.debug("%s -> %s %r in %.3fs", ref.raw, verdict.verdict, verdict.reason, seconds)
        return verdict

    async def _bounded(self, ref: ImageRef) -> LookupResult:
        try:
            async with asyncio.timeout(self.config.background_seconds):
                return await self._lookup.run(ref)
        except TimeoutError as err:
            raise RegistryTimeout(ref.registry, "look-up ran past background_seconds") from err

    def transport(self, registry: str) -> RegistryTransport:
        """The client of `registry` look-ups use (its credentials, limits and circuit)."""
        return self._pool.transport(registry)

    def learn_conversion(
        self, registry: str, repository: str, digest: str, status: ConversionStatus
    ) -> None:
        """Record a followed conversion's state: verdicts of that digest show it at once."""
        self._lookup.learn_conversion(registry, repository, digest, status)

    def forget_missing(self, registry: str, repository: str, digest: str) -> None:
        """A conversion of `digest` finished: look its referrers up again next time."""
        self._lookup.forget_missing(registry, repository, digest)

    def cache_stats(self) -> dict[str, CacheStats]:
        return {c.name: c.stats for c in self._caches()}

    def cache_sizes(self) -> dict[str, int]:
        """Entries held per cache (each bounded by `cache.maxEntries`)."""
        return {c.name: len(c) for c in self._caches()}

    def _caches(self) -> tuple[TtlCache[Any, Any], ...]:
        lookup = self._lookup
        return (lookup.tags, lookup.manifests, lookup.artifacts, lookup.conversions)

    async def aclose(self) -> None:
        """Cancel look-ups still running in the background and close every connection."""
        await self._flights.aclose()
        await self._lookup.aclose()
        await self._pool.aclose()
