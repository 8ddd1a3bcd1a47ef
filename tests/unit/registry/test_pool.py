import asyncio

import httpx

from app.core.registries import RegistryConfig
from app.registry.pool import ClientPool


class _NoAad:
    async def get_token(self, scope: str) -> tuple[str, float]:
        raise AssertionError("no AAD here")

    async def aclose(self) -> None:
        return None


def _context(client) -> object:
    return client.http._transport._pool._ssl_context


async def test_new_registries_share_one_tls_context_built_at_start():
    pool = ClientPool(RegistryConfig(), aad=_NoAad())
    contexts = {id(_context(pool.transport(f"r{i}.azurecr.io"))) for i in range(20)}
    assert len(contexts) == 1
    await pool.aclose()


async def test_an_evicted_client_is_not_closed_under_a_running_request():
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        started.set()
        await release.wait()
        return httpx.Response(200, text="ok")

    config = RegistryConfig(max_registries=1, background_seconds=2.0, request_timeout_seconds=1.0)
    pool = ClientPool(config, aad=_NoAad(), transport=httpx.MockTransport(handler))
    first = pool.transport("a.example")
    running = asyncio.create_task(first.http.get("https://a.example/v2/"))
    await started.wait()
    pool.transport("b.example")  # evicts the first
    await asyncio.sleep(0.2)
    assert not first.http.is_closed
    release.set()
    assert (await running).status_code == 200
    await pool.aclose()
