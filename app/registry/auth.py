"""Answering a registry's authentication challenges, with cached tokens.

The registry says how it wants to be spoken to in `WWW-Authenticate` on a 401:

- `Basic`: send `BasicAuth` credentials on every request from then on.
- `Bearer realm=..,service=..,scope=..`: get an access token from the realm:
  - `Anonymous` / `BasicAuth`: `GET realm?service=..&scope=..` (Basic header when we have it);
  - `AcrAad`: AAD token → `POST <realm origin>/oauth2/exchange` → refresh token →
    `POST realm` (grant_type=refresh_token) → access token (docs/aks-facts.md §2).

Once a registry has asked for bearer tokens, later requests get one up front (no 401 round
trip). Tokens are cached until shortly before they expire: AAD tokens per scope, refresh
tokens per (realm, service), access tokens per (realm, service, repository scope); concurrent
requests share one fetch. A 401 to a request that carried a token drops that access token and
the refresh token behind it.

Token requests only go to the registry itself or to realm hosts listed for it, with or without
credentials (an anonymous registry naming any other realm would make streamgate send requests
wherever it says); the AAD token only to the registry host itself (any ACR would accept it).
Hosts are compared without their scheme's default port (`host:443` is `host`). A realm on plain
HTTP is refused unless the registry is configured insecure. Tokens never appear in logs or
errors.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from app.core.images import canonical_registry
from app.registry.credentials import AcrAad, BasicAuth, Credentials
from app.registry.errors import (
    BadResponse,
    RateLimited,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
)
from app.registry.headers import Challenge, parse_challenges, parse_retry_after
from app.registry.metrics import NULL_OBSERVER, RegistryObserver
from app.registry.tokens import Token, TokenCache, make_token
from app.registry.wire import WireResponse, send_bounded

logger = logging.getLogger(__name__)

REFRESH_LIFETIME = 3 * 3600.0  # ACR refresh tokens: about 3 hours (docs/aks-facts.md §2)
ACCESS_LIFETIME = 75 * 60.0  # ACR access tokens: about 75 minutes
PLAIN_TOKEN_LIFETIME = 60.0  # Docker token spec: expires_in defaults to 60 s
TOKEN_BODY_LIMIT = 64 * 1024
ACCESS_KIND = "access"
_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True, slots=True)
class BearerRealm:
    realm: str
    service: str
    origin: str  # scheme://host[:port] of the realm


def _netloc(url: httpx.URL) -> str:
    port = url.port
    host = url.host.lower()
    host = f"[{host}]" if ":" in host else host
    return host if port is None or port == _DEFAULT_PORTS.get(url.scheme) else f"{host}:{port}"


def basic_header(credentials: BasicAuth) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class Authenticator:
    """Authorization for one registry. See the module docstring."""

    def __init__(
        self,
        *,
        registry: str,
        credentials: Credentials,
        http: httpx.AsyncClient,
        insecure: bool = False,
        realm_hosts: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        observer: RegistryObserver = NULL_OBSERVER,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self._http = http
        self._insecure = insecure
        self._home = canonical_registry(registry)
        self._realm_hosts = frozenset(canonical_registry(h) for h in (registry, *realm_hosts))
        self._clock = clock
        self._observer = observer
        self._bearer: BearerRealm | None = None
        self._basic = False
        self._aad = TokenCache(clock=clock)
        self._refresh = TokenCache(clock=clock)
        self._access = TokenCache(clock=clock)

    async def header(self, scope: str) -> str | None:
        """The Authorization value to send up front, from what earlier challenges taught."""
        if self._basic and isinstance(self.credentials, BasicAuth):
            return basic_header(self.credentials)
        if self._bearer is None:
            return None
        token = await self._access_token(self._bearer, scope, asked=scope)
        return f"Bearer {token.value}"

    def forget(self, scope: str, rejected: str | None) -> None:
        """After a 401 to a request sent with Authorization `rejected`: drop that access token
        and the refresh token behind it (the AAD token is checked by the exchange). Nothing is
        dropped for a request that carried no token, or when a newer token replaced it."""
        if self._bearer is None or rejected is None or not rejected.startswith("Bearer "):
            return
        key = (self._bearer.realm, self._bearer.service, scope)
        current = self._access.peek(key)
        if current is not None and current.value != rejected.removeprefix("Bearer "):
            return
        self._access.drop(key)
        self._refresh.drop((self._bearer.origin, self._bearer.service))

    async def answer(
        self, www_authenticate: str | None, scope: str, *, rejected: str | None = None
    ) -> str:
        """The Authorization value to retry a request with, after a 401 to a request that
        carried Authorization `rejected` (None: it carried none)."""
        challenges = parse_challenges(www_authenticate)
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is not None:
            self.forget(scope, rejected)
            self._bearer = self._check_realm(bearer)
            token = await self._access_token(self._bearer, scope, asked=bearer.scope or scope)
            return f"Bearer {token.value}"
        if any(c.scheme == "basic" for c in challenges):
            if isinstance(self.credentials, BasicAuth):
                self._basic = True
                return basic_header(self.credentials)
            raise RegistryAuthError(
                self.registry,
                "basic challenge, no basic credentials configured",
                reason="registry needs a user name and password",
            )
        raise RegistryAuthError(self.registry, "401 without a bearer or basic challenge")

    def _check_realm(self, challenge: Challenge) -> BearerRealm:
        try:
            url = httpx.URL(challenge.realm or "")
        except httpx.InvalidURL as err:
            raise RegistryAuthError(self.registry, "token realm is not a URL") from err
        if url.scheme not in ("https", "http") or not url.host:
            raise RegistryAuthError(self.registry, "token realm is not an http(s) URL")
        if url.scheme == "http" and not self._insecure:
            raise RegistryAuthError(self.registry, "token realm is plain HTTP")
        host = _netloc(url)
        if host not in self._realm_hosts:
            raise RegistryAuthError(
                self.registry,
                f"token realm host {host[:80]} is not the registry or a listed realm host",
                reason=(
                    f"registry token service is on another host ({host[:80]}); "
                    "list it in the registry's realmHosts if it is trusted"
                ),
            )
        if isinstance(self.credentials, AcrAad) and host != self._home:
            raise RegistryAuthError(
                self.registry,
                "ACR token realm is not the registry host",
                reason=f"ACR token service is on another host ({host[:80]}); no token sent",
            )
        return BearerRealm(
            realm=str(url),
            service=challenge.service or self.registry,
            origin=f"{url.scheme}://{host}",
        )

    async def _access_token(self, realm: BearerRealm, scope: str, *, asked: str) -> Token:
        async def fetch() -> Token:
            if isinstance(self.credentials, AcrAad):
                return await self._acr_access_token(realm, self.credentials, asked)
            return await self._plain_token(realm, asked)

        return await self._access.get((realm.realm, realm.service, scope), fetch)

    async def _plain_token(self, realm: BearerRealm, scope: str) -> Token:
        params: dict[str, str | list[str]] = {"service": realm.service, "scope": scope.split()}
        headers = {}
        if isinstance(self.credentials, BasicAuth):
            headers["Authorization"] = basic_header(self.credentials)
        request = self._http.build_request("GET", realm.realm, params=params, headers=headers)
        response = await self._send(request, endpoint="token")
        return self._token_from(
            response, ("token", "access_token"), ACCESS_KIND, PLAIN_TOKEN_LIFETIME
        )

    async def _acr_access_token(self, realm: BearerRealm, creds: AcrAad, scope: str) -> Token:
        key = (realm.origin, realm.service)
        for attempt in (1, 2):
            refresh = await self._refresh.get(key, lambda: self._exchange(realm, creds))
            form = {
                "grant_type": "refresh_token",
                "service": realm.service,
                "scope": scope,
                "refresh_token": refresh.value,
            }
            request = self._http.build_request("POST", realm.realm, data=form)
            try:
                response = await self._send(request, endpoint="token")
            except RegistryAuthError:
                self._refresh.drop(key)  # revoked or expired early: exchange again, once
                if attempt == 2:
                    raise
                continue
            return self._token_from(response, ("access_token",), ACCESS_KIND, ACCESS_LIFETIME)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, realm: BearerRealm, creds: AcrAad) -> Token:
        aad = await self._aad.get(creds.scope, lambda: self._aad_token(creds))
        form = {"grant_type": "access_token", "service": realm.service, "access_token": aad.value}
        if creds.tenant:
            form["tenant"] = creds.tenant
        request = self._http.build_request("POST", f"{realm.origin}/oauth2/exchange", data=form)
        try:
            response = await self._send(request, endpoint="exchange")
        except RegistryAuthError:
            self._aad.drop(creds.scope)
            raise
        return self._token_from(response, ("refresh_token",), "exchange", REFRESH_LIFETIME)

    async def _aad_token(self, creds: AcrAad) -> Token:
        try:
            value, expires_on = await creds.provider.get_token(creds.scope)
        except Exception as err:
            self._observer.on_token(registry=self.registry, kind="aad", outcome="failed")
            logger.warning("AAD token for %s failed: %s", self.registry, type(err).__name__)
            raise RegistryAuthError(
                self.registry, type(err).__name__, reason="could not get an Azure AD token"
            ) from err
        self._observer.on_token(registry=self.registry, kind="aad", outcome="ok")
        return make_token(
            value, now=self._clock(), expires_on=expires_on, default_lifetime=ACCESS_LIFETIME
        )

    async def _send(self, request: httpx.Request, *, endpoint: str) -> WireResponse:
        response = await send_bounded(
            self._http,
            request,
            registry=self.registry,
            endpoint=endpoint,
            limit=TOKEN_BODY_LIMIT,
            observer=self._observer,
        )
        status = response.status
        if status == 200:
            return response
        kind = ACCESS_KIND if endpoint == "token" else endpoint
        self._observer.on_token(registry=self.registry, kind=kind, outcome="failed")
        if status in (400, 401, 403):
            raise RegistryAuthError(
                self.registry,
                f"{endpoint} answered HTTP {status}",
                reason="registry refused the credentials",
            )
        if status == 429:
            retry = parse_retry_after(response.headers.get("retry-after"))
            raise RateLimited(self.registry, retry, endpoint)
        if status >= 500:
            raise RegistryUnavailable(self.registry, f"{endpoint} answered HTTP {status}")
        raise BadResponse(self.registry, f"{endpoint} answered HTTP {status}")

    def _token_from(
        self, response: WireResponse, fields: Sequence[str], kind: str, lifetime: float
    ) -> Token:
        try:
            doc = response.json_object(registry=self.registry, what=f"{kind} response")
            value = next((doc[f] for f in fields if isinstance(doc.get(f), str) and doc[f]), None)
            if value is None or any(c in value for c in " \r\n\t"):
                raise BadResponse(self.registry, f"{kind} response has no usable token")
        except RegistryError:
            self._observer.on_token(registry=self.registry, kind=kind, outcome="failed")
            raise
        expires_in = doc.get("expires_in")
        self._observer.on_token(registry=self.registry, kind=kind, outcome="ok")
        return make_token(
            value,
            now=self._clock(),
            expires_in=float(expires_in) if isinstance(expires_in, int | float) else None,
            default_lifetime=lifetime,
        )

    async def aclose(self) -> None:
        for cache in (self._aad, self._refresh, self._access):
            await cache.aclose()
