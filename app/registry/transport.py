"""HTTP to one registry: URLs, authentication, redirects, status codes, the circuit.

`RegistryTransport.request` sends one logical request and returns the bounded answer for the
caller to read (200, 404, ...), or raises a `RegistryError`:

- authorization from `Authenticator`: up front when known, else after a 401 challenge; a
  second 401 is `RegistryAuthError` (the tokens are dropped first); 403 likewise;
- 429 → `RateLimited` (`Retry-After` honoured by the circuit); 5xx → `RegistryUnavailable`;
- redirects are followed on the same origin only, at most three, never to plain HTTP from
  HTTPS; a redirect to another host is refused, with or without credentials: what streamgate
  reads (manifests, referrers, tags) registries serve themselves, and following a registry
  anywhere it points would let whoever runs one make streamgate send requests inside the
  cluster's network;
- the circuit is asked first and told the outcome (see `circuit.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import httpx

from app.registry.auth import Authenticator
from app.registry.circuit import CircuitBreaker
from app.registry.errors import (
    BadResponse,
    RateLimited,
    RegistryAuthError,
    RegistryError,
    RegistryTimeout,
    RegistryUnavailable,
)
from app.registry.headers import parse_retry_after
from app.registry.metrics import NULL_OBSERVER, RegistryObserver
from app.registry.wire import WireResponse, send_bounded

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RegistryTransport:
    def __init__(
        self,
        *,
        registry: str,
        base_url: str,
        http: httpx.AsyncClient,
        auth: Authenticator,
        circuit: CircuitBreaker,
        max_body: int,
        max_connections: int = 32,
        observer: RegistryObserver = NULL_OBSERVER,
    ) -> None:
        self.registry = registry
        self.base_url = httpx.URL(base_url)
        self.http = http
        self.auth = auth
        self.circuit = circuit
        self.max_body = max_body
        self._observer = observer
        # Requests beyond the pool's connections wait here, not in httpcore's queue, which is
        # scanned whole on every change: 2,000 queued requests held the event loop for 20 s.
        self._slots = asyncio.Semaphore(max_connections)

    async def request(
        self,
        method: str,
        target: str,
        *,
        scope: str,
        endpoint: str,
        accept: Sequence[str] = (),
        params: Mapping[str, str] | None = None,
        json_body: bytes | None = None,
    ) -> WireResponse:
        """`target`: a path ("/v2/...") or an absolute URL on this registry (a `Link`).
        `json_body`: a JSON request body (the conversion API's POSTs)."""
        self.circuit.check()
        try:
            response = await self._authorized(
                method,
                self._url(target),
                scope=scope,
                endpoint=endpoint,
                accept=accept,
                params=params,
                json_body=json_body,
            )
        except RateLimited as err:
            self.circuit.rate_limited(err.retry_after)
            raise
        except (RegistryTimeout, RegistryUnavailable):
            self.circuit.failure()
            raise
        except RegistryError:
            self.circuit.success()  # it answered; the answer was the problem
            raise
        self.circuit.success()
        return response

    def _url(self, target: str) -> httpx.URL:
        if target.startswith("/"):
            try:
                return self.base_url.copy_with(raw_path=target.encode("ascii"))
            except UnicodeEncodeError as err:
                raise BadResponse(self.registry, "a link that is not a URL") from err
        try:
            url = self.base_url.join(target)
        except httpx.InvalidURL as err:
            raise BadResponse(self.registry, "a link that is not a URL") from err
        if not self._same_origin(url):
            raise BadResponse(self.registry, "a link to another host")
        return url

    def _same_origin(self, url: httpx.URL) -> bool:
        return url.scheme == self.base_url.scheme and url.netloc == self.base_url.netloc

    async def _authorized(
        self,
        method: str,
        url: httpx.URL,
        *,
        scope: str,
        endpoint: str,
        accept: Sequence[str],
        params: Mapping[str, str] | None,
        json_body: bytes | None = None,
    ) -> WireResponse:
        header = await self.auth.header(scope)
        response = await self._follow(
            method,
            url,
            authorization=header,
            endpoint=endpoint,
            accept=accept,
            params=params,
            json_body=json_body,
        )
        if response.status == 401:
            header = await self.auth.answer(
                response.headers.get("www-authenticate"), scope, rejected=header
            )
            response = await self._follow(
                method,
                url,
                authorization=header,
                endpoint=endpoint,
                accept=accept,
                params=params,
                json_body=json_body,
            )
            if response.status == 401:
                self.auth.forget(scope, header)
                raise RegistryAuthError(
                    self.registry,
                    f"{endpoint}: 401 after authenticating",
                    reason="registry refused the credentials",
                )
        status = response.status
        if status == 403:
            raise RegistryAuthError(
                self.registry, f"{endpoint}: 403", reason="registry denied access"
            )
        if status == 429:
            retry = parse_retry_after(response.headers.get("retry-after"))
            raise RateLimited(self.registry, retry, endpoint)
        if status >= 500:
            raise RegistryUnavailable(
                self.registry, endpoint, reason=f"registry unavailable (HTTP {status})"
            )
        return response

    async def _follow(
        self,
        method: str,
        url: httpx.URL,
        *,
        authorization: str | None,
        endpoint: str,
        accept: Sequence[str],
        params: Mapping[str, str] | None,
        json_body: bytes | None = None,
    ) -> WireResponse:
        headers = {"Accept": ", ".join(accept)} if accept else {}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        for _ in range(MAX_REDIRECTS + 1):
            if authorization is not None:
                headers["Authorization"] = authorization
            request = self.http.build_request(
                method, url, params=params, headers=headers, content=json_body
            )
            async with self._slots:
                response = await send_bounded(
                    self.http,
                    request,
                    registry=self.registry,
                    endpoint=endpoint,
                    limit=self.max_body,
                    observer=self._observer,
                )
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or not location:
                return response
            try:
                target = response.url.join(location)
            except httpx.InvalidURL as err:
                raise BadResponse(self.registry, "a redirect that is not a URL") from err
            if target.scheme not in ("http", "https"):
                raise BadResponse(self.registry, "a redirect that is not HTTP")
            if url.scheme == "https" and target.scheme == "http":
                raise BadResponse(self.registry, "a redirect to plain HTTP")
            if not self._same_origin(target):
                raise BadResponse(
                    self.registry, "a redirect to another host", f"to {target.host[:80]}"
                )
            logger.debug("%s %s redirected to %s", self.registry, endpoint, target.host)
            url, params = target, None
            if response.status == 303:
                method, json_body = "GET", None
                headers.pop("Content-Type", None)
        raise BadResponse(self.registry, "too many redirects")

    async def aclose(self) -> None:
        await self.auth.aclose()
        await self.http.aclose()
