"""Tokens with an expiry, and a small cache of them with single-flight fetching.

Expiry comes, in order of preference, from the `exp` claim of a JWT (read without verifying:
we only want to know when to stop using it, the registry does the verifying), from the
`expires_in` the token service sent, or from a documented default lifetime. A token is used
only until shortly before it expires: 10% of its lifetime, at most five minutes, early.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import orjson

from app.registry.singleflight import SingleFlight

EARLY_MAX = 300.0
EARLY_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer value and the monotonic-clock times it was obtained and expires."""

    value: str = field(repr=False)
    obtained_at: float
    expires_at: float

    def usable(self, now: float) -> bool:
        early = min(EARLY_MAX, (self.expires_at - self.obtained_at) * EARLY_FRACTION)
        return now < self.expires_at - early


def jwt_expiry(value: str) -> float | None:
    """The `exp` claim (Unix seconds) of a JWT, unverified; None when it is not a JWT."""
    parts = value.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None


def make_token(
    value: str,
    *,
    now: float,
    expires_in: float | None = None,
    expires_on: float | None = None,
    default_lifetime: float,
    wall_now: float | None = None,
) -> Token:
    """Build a `Token` at monotonic time `now`.

    `expires_on` is an absolute Unix time (as azure-identity gives it); `expires_in` seconds
    from now (as a token service gives it). The JWT `exp` wins over both when present.
    """
    wall = time.time() if wall_now is None else wall_now
    absolute = jwt_expiry(value) or expires_on
    if absolute is not None:
        lifetime = absolute - wall
    elif expires_in is not None and expires_in > 0:
        lifetime = expires_in
    else:
        lifetime = default_lifetime
    return Token(value=value, obtained_at=now, expires_at=now + max(0.0, lifetime))


class TokenCache:
    """Usable tokens by key; concurrent fetches for one key share one call."""

    def __init__(self, *, clock: Callable[[], float], max_entries: int = 1024) -> None:
        self._clock = clock
        self._max = max_entries
        self._tokens: OrderedDict[Hashable, Token] = OrderedDict()
        self._flights: SingleFlight[Hashable, Token] = SingleFlight()

    def peek(self, key: Hashable) -> Token | None:
        token = self._tokens.get(key)
        return token if token is not None and token.usable(self._clock()) else None

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[Token]]) -> Token:
        token = self.peek(key)
        if token is not None:
            return token

        async def fetch_and_store() -> Token:
            fresh = await fetch()
            self._tokens[key] = fresh
            self._tokens.move_to_end(key)
            while len(self._tokens) > self._max:
                self._tokens.popitem(last=False)
            return fresh

        return await self._flights.run(key, fetch_and_store)

    def drop(self, key: Hashable) -> None:
        self._tokens.pop(key, None)

    async def aclose(self) -> None:
        await self._flights.aclose()
