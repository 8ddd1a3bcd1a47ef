"""One live client per registry: connection pool, authenticator and circuit, made on demand.

Settings are turned into what clients need once, at start-up (`ClientPool.__init__`): secrets
are read from their environment variables or files, CA bundles loaded, so nothing blocks the
event loop later. Clients are made on first use and kept (keep-alive, HTTP/2 where the server
offers it over TLS); past `max_registries` the least recently used one is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from app.core.images import canonical_registry, is_acr_host
from app.core.registries import RegistryConfig, RegistrySettings
from app.registry.auth import Authenticator
from app.registry.circuit import CircuitBreaker
from app.registry.credentials import (
    AadTokenProvider,
    AcrAad,
    Anonymous,
    AzureIdentityProvider,
    BasicAuth,
    Credentials,
)
from app.registry.metrics import NULL_OBSERVER, RegistryObserver
from app.registry.transport import RegistryTransport

logger = logging.getLogger(__name__)

USER_AGENT = "streamgate-registry-client"
_HOST_ALIASES = {"docker.io": "registry-1.docker.io"}
# Token services on another host than their registry, known without configuration.
_REALM_HOSTS = {"docker.io": ("auth.docker.io",)}


class ConfigError(ValueError):
    """A registry setting that can't be used (a missing secret, an unreadable CA file)."""


@dataclass(frozen=True, slots=True)
class _Profile:
    settings: RegistrySettings
    basic: BasicAuth | None
    verify: ssl.SSLContext | bool


def _secret(*, env: Mapping[str, str], var: str | None, path: str | None, what: str) -> str:
    if var is not None:
        value = env.get(var)
        if not value:
            raise ConfigError(f"{what}: environment variable {var} is not set")
        return value.strip()
    assert path is not None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as err:
        raise ConfigError(f"{what}: cannot read {path}: {err.strerror}") from err


def _profile(
    key: str,
    settings: RegistrySettings,
    env: Mapping[str, str],
    default_tls: ssl.SSLContext,
) -> _Profile:
    basic = None
    if settings.username_env or settings.username_file or settings.username:
        username = settings.username or _secret(
            env=env,
            var=settings.username_env,
            path=str(settings.username_file) if settings.username_file else None,
            what=f"registry {key} user name",
        )
        password = _secret(
            env=env,
            var=settings.password_env,
            path=str(settings.password_file) if settings.password_file else None,
            what=f"registry {key} password",
        )
        basic = BasicAuth(username, password)
    # One SSLContext per profile, built here: a context takes ~16 ms of CPU to build (loading
    # the CA bundle), and a client per new registry host building its own on the event loop
    # let one review naming hundreds of hosts stall every admission (docs/security.md).
    verify: ssl.SSLContext | bool = default_tls
    if settings.ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=str(settings.ca_file))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"registry {key}: cannot load ca_file {settings.ca_file}") from err
    return _Profile(settings=settings, basic=basic, verify=verify)


class ClientPool:
    def __init__(
        self,
        config: RegistryConfig,
        *,
        aad: AadTokenProvider | None = None,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: RegistryObserver = NULL_OBSERVER,
        acr_hosts: Callable[[str], bool] = is_acr_host,
        aad_hosts: Callable[[str], bool] = is_acr_host,
    ) -> None:
        environment = os.environ if env is None else env  # read once, never per request
        self._config = config
        self._acr_hosts = acr_hosts
        self._aad_hosts = aad_hosts
        self._transport = transport
        self._clock = clock
        self._observer = observer
        # httpx's own default trust (its CA bundle), built once and shared by every client
        default_tls = httpx.create_ssl_context()
        self._profiles = {
            k: _profile(k, s, environment, default_tls) for k, s in config.registries.items()
        }
        self._default = _profile("(default)", RegistrySettings(), environment, default_tls)
        # The default AAD provider is made here but asks Azure for nothing until an ACR
        # registry challenges us; an injected provider is the caller's to close.
        self._owned_aad: AzureIdentityProvider | None = None
        if aad is None:
            aad = self._owned_aad = AzureIdentityProvider()
        self._aad = aad
        self._tenant = environment.get("AZURE_TENANT_ID")
        self._clients: OrderedDict[str, RegistryTransport] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._evicted: set[RegistryTransport] = set()

    def _profile_for(self, registry: str) -> _Profile:
        key = self._config.settings_key(registry)
        return self._profiles[key] if key is not None else self._default

    def is_acr(self, registry: str) -> bool:
        return self._profile_for(registry).settings.is_acr(registry, acr_hosts=self._acr_hosts)

    def transport(self, registry: str) -> RegistryTransport:
        registry = canonical_registry(registry)
        client = self._clients.get(registry)
        if client is None:
            client = self._make(registry)
            self._clients[registry] = client
            while len(self._clients) > self._config.max_registries:
                _, old = self._clients.popitem(last=False)
                task = asyncio.create_task(self._close_later(old))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._clients.move_to_end(registry)
        return client

    async def _close_later(self, client: RegistryTransport) -> None:
        """Close an evicted client once any request it may still carry is over: no look-up
        outlives `background_seconds`, and no request `request_timeout_seconds`."""
        config = self._config
        self._evicted.add(client)
        try:
            await asyncio.sleep(max(config.background_seconds, config.request_timeout_seconds))
        finally:  # also at shutdown (aclose cancels the wait)
            self._evicted.discard(client)
            await client.aclose()

    def _credentials(self, registry: str, profile: _Profile) -> Credentials:
        mode = self._config.auth_mode(
            registry, acr_hosts=self._acr_hosts, aad_hosts=self._aad_hosts
        )
        if mode == "basic" and profile.basic is not None:
            return profile.basic
        if mode == "acr-aad":
            tenant = profile.settings.tenant_id or self._tenant
            return AcrAad(provider=self._aad, tenant=tenant, scope=self._config.aad_scope)
        return Anonymous()

    def _make(self, registry: str) -> RegistryTransport:
        profile = self._profile_for(registry)
        settings = profile.settings
        config = self._config
        http = httpx.AsyncClient(
            http2=settings.http2,
            verify=profile.verify,
            timeout=httpx.Timeout(
                config.request_timeout_seconds, connect=config.connect_timeout_seconds
            ),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
                keepalive_expiry=60.0,
            ),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            transport=self._transport,
        )
        scheme = "http" if settings.insecure else "https"
        credentials = self._credentials(registry, profile)
        logger.info(
            "registry %s: %s, auth %s, acr %s",
            registry,
            scheme,
            type(credentials).__name__,
            self.is_acr(registry),
        )
        auth = Authenticator(
            registry=registry,
            credentials=credentials,
            http=http,
            insecure=settings.insecure,
            realm_hosts=(*settings.realm_hosts, *_REALM_HOSTS.get(registry, ())),
            clock=self._clock,
            observer=self._observer,
        )
        circuit = CircuitBreaker(
            registry,
            failure_threshold=config.circuit.failure_threshold,
            open_seconds=config.circuit.open_seconds,
            max_retry_after=config.circuit.max_retry_after_seconds,
            clock=self._clock,
            observer=self._observer,
        )
        return RegistryTransport(
            registry=registry,
            base_url=f"{scheme}://{_HOST_ALIASES.get(registry, registry)}",
            http=http,
            auth=auth,
            circuit=circuit,
            max_body=config.max_body_bytes,
            max_connections=config.max_connections,
            observer=self._observer,
        )

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for task in self._closing:
            task.cancel()
        await asyncio.gather(*(c.aclose() for c in clients), *self._closing, return_exceptions=True)
        if self._owned_aad is not None:
            await self._owned_aad.close()
