"""One HTTP exchange with a size bound, mapped onto `RegistryError`s.

`send_bounded` streams the body and stops reading past `limit` bytes (decoded), so a huge or
endless answer costs bounded memory; it gives one exchange at most connect + request timeout
in all, so a slow drip costs bounded time; it never follows redirects (the transport decides)
and turns every httpx failure into `RegistryTimeout`, `RegistryUnavailable` or `BadResponse`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from app.registry.errors import BadResponse, RegistryTimeout, RegistryUnavailable
from app.registry.metrics import NULL_OBSERVER, RegistryObserver

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WireResponse:
    """A complete, bounded answer."""

    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL

    @property
    def content_type(self) -> str:
        """Media type without parameters, lower-case; "" when absent."""
        return str(self.headers.get("content-type", "")).split(";")[0].strip().lower()

    def json_object(self, *, registry: str, what: str) -> dict[str, Any]:
        """The body as a JSON object; `BadResponse` when it is not one."""
        ctype = self.content_type
        if ctype and "json" not in ctype:
            raise BadResponse(registry, f"{what} is not JSON", f"content type {ctype[:60]!r}")
        try:
            doc = orjson.loads(self.body)
        except orjson.JSONDecodeError as err:
            raise BadResponse(registry, f"{what} is not valid JSON", str(err)[:120]) from err
        if not isinstance(doc, dict):
            raise BadResponse(registry, f"{what} is not a JSON object")
        return doc


def exchange_budget(client: httpx.AsyncClient) -> float | None:
    """The most one exchange may take, however its bytes arrive: connecting plus one request
    timeout. httpx's timeouts bound each read, so an answer that drips a byte at a time would
    otherwise hold its connection until the whole look-up is given up."""
    timeout = client.timeout
    if timeout.read is None:
        return None
    return (timeout.connect or 0.0) + timeout.read


async def send_bounded(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    registry: str,
    endpoint: str,
    limit: int,
    observer: RegistryObserver = NULL_OBSERVER,
) -> WireResponse:
    started = time.monotonic()
    status = "error"
    budget = exchange_budget(client)
    try:
        try:
            async with asyncio.timeout(budget):
                try:
                    response = await client.send(request, stream=True, follow_redirects=False)
                except httpx.TimeoutException as err:
                    status = "timeout"
                    raise RegistryTimeout(registry, f"{endpoint}: {type(err).__name__}") from err
                except httpx.HTTPError as err:
                    raise RegistryUnavailable(
                        registry, f"{endpoint}: {type(err).__name__}"
                    ) from err
                status = str(response.status_code)
                try:
                    body = await _read(response, registry=registry, endpoint=endpoint, limit=limit)
                except BadResponse:
                    status = "too-large"
                    raise
                except httpx.TimeoutException as err:
                    status = "timeout"
                    raise RegistryTimeout(
                        registry, f"{endpoint} body: {type(err).__name__}"
                    ) from err
                except httpx.HTTPError as err:
                    status = "error"
                    raise RegistryUnavailable(
                        registry, f"{endpoint} body: {type(err).__name__}"
                    ) from err
                finally:
                    await response.aclose()
                return WireResponse(response.status_code, response.headers, body, response.url)
        except TimeoutError as err:
            status = "timeout"
            raise RegistryTimeout(
                registry, f"{endpoint}: no complete answer within {budget:g}s"
            ) from err
    finally:
        elapsed = time.monotonic() - started
        observer.on_request(registry=registry, endpoint=endpoint, status=status, seconds=elapsed)
        logger.debug("%s %s %s -> %s in %.3fs", registry, request.method, endpoint, status, elapsed)


async def _read(response: httpx.Response, *, registry: str, endpoint: str, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadResponse(registry, f"{endpoint} answer too large", f"{declared} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise BadResponse(registry, f"{endpoint} answer too large", f"over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
