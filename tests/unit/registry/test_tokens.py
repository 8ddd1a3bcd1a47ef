"""Token expiry (JWT exp, expires_in, defaults), early refresh, and the token cache."""

from __future__ import annotations

import asyncio

from app.registry.tokens import Token, TokenCache, jwt_expiry, make_token
from tests.unit.registry.test_fakes import FakeClock, jwt


def test_jwt_expiry_reads_exp_without_verifying() -> None:
    assert jwt_expiry(jwt(1_700_000_000)) == 1_700_000_000.0
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.!!!.c") is None
    assert jwt_expiry("a.bm90IGpzb24.c") is None  # "not json"


def test_make_token_prefers_jwt_exp_then_expires_on_then_expires_in() -> None:
    token = make_token(jwt(2000), now=10.0, expires_in=5, default_lifetime=60, wall_now=1000.0)
    assert token.expires_at == 10.0 + 1000.0
    token = make_token("opaque", now=10.0, expires_on=1100.0, default_lifetime=60, wall_now=1000)
    assert token.expires_at == 110.0
    token = make_token("opaque", now=10.0, expires_in=300, default_lifetime=60, wall_now=1000)
    assert token.expires_at == 310.0
    token = make_token("opaque", now=10.0, default_lifetime=60, wall_now=1000)
    assert token.expires_at == 70.0
    token = make_token(jwt(900), now=10.0, default_lifetime=60, wall_now=1000.0)
    assert token.expires_at == 10.0  # already expired: never usable


def test_token_is_refreshed_early() -> None:
    hour = Token("t", obtained_at=0.0, expires_at=3600.0)
    assert hour.usable(3239.0)
    assert not hour.usable(3301.0)  # five minutes early at most
    minute = Token("t", obtained_at=0.0, expires_at=60.0)
    assert minute.usable(53.0)
    assert not minute.usable(55.0)  # 10% early
    assert "secret-value" not in repr(Token("secret-value", 0, 1))


async def test_token_cache_shares_one_fetch_and_refetches_after_expiry() -> None:
    clock = FakeClock(0.0)
    cache = TokenCache(clock=clock)
    fetches = 0

    async def fetch() -> Token:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.01)
        return Token(f"t{fetches}", obtained_at=clock(), expires_at=clock() + 100)

    tokens = await asyncio.gather(*(cache.get("k", fetch) for _ in range(20)))
    assert {t.value for t in tokens} == {"t1"} and fetches == 1
    clock.advance(50)
    assert (await cache.get("k", fetch)).value == "t1"
    clock.advance(45)  # within 10 s of expiry
    assert (await cache.get("k", fetch)).value == "t2"
    cache.drop("k")
    assert cache.peek("k") is None
    assert (await cache.get("k", fetch)).value == "t3"
    await cache.aclose()


async def test_token_cache_is_bounded() -> None:
    cache = TokenCache(clock=lambda: 0.0, max_entries=2)

    async def fetch() -> Token:
        return Token("v", 0.0, 100.0)

    for key in ("a", "b", "c"):
        await cache.get(key, fetch)
    assert cache.peek("a") is None and cache.peek("c") is not None
