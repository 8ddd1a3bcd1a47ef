"""Settings of the registry look-ups, validated once at start-up.

`RegistryConfig` is a pydantic model (unknown keys are errors); the server builds it from the
`registry:` section of its settings file and hands it to `RegistryVerdictSource`. Secrets are
never inline: basic credentials name an environment variable or a file (a mounted Secret).
`registries` is keyed by `host[:port]` or by a `*.domain` pattern; the most specific key wins
and a registry with no key gets the defaults (HTTPS, anonymous, or AAD for ACR hosts).

Credentials go only where nobody but the admin and Azure can put a registry (docs/security.md):
a `*.domain` key may not carry a password (`auth: basic`) nor `auth: acr-aad` unless the domain
is one of ACR's own, and `auth: auto` means the cluster's Azure AD token only for ACR's own
domains or a registry listed by its exact name; any other host, even one treated as ACR through
a pattern, is asked anonymously.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from app.core.images import canonical_registry, host_of, is_acr_host
from app.core.platform import Platform

_KEY = re.compile(
    r"\*\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?\Z"  # *.domain
    r"|[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?\Z"  # host[:port]
    r"|\[[0-9a-f:.]+\](:[0-9]{1,5})?\Z"  # [ipv6][:port]
)

# The AAD scope of every ACR data plane (docs/aks-facts.md).
ACR_AAD_SCOPE = "https://containerregistry.azure.net/.default"

AuthMode = Literal["auto", "anonymous", "basic", "acr-aad"]


class _Model(BaseModel):
    # camelCase in YAML like the rest of the policy (deadlineSeconds); snake_case works too.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class RegistrySettings(_Model):
    """How to reach one registry (or all registries matching a `*.domain` key)."""

    insecure: bool = Field(False, description="plain HTTP instead of HTTPS (local registries)")
    ca_file: Path | None = Field(None, description="PEM bundle to trust instead of the system's")
    acr: bool | None = Field(None, description="ACR-only calls allowed; None: by host name")
    auth: AuthMode = "auto"
    username: str | None = None
    username_env: str | None = None
    username_file: Path | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tenant_id: str | None = Field(None, description="AAD tenant sent with the ACR exchange")
    realm_hosts: tuple[str, ...] = Field((), description="other hosts that may get credentials")
    http2: bool = True

    @field_validator("realm_hosts")
    @classmethod
    def _check_realm_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if not _KEY.match(host.lower()) or host.startswith("*."):
                raise ValueError(f"realm host {host!r} must be a host[:port], no pattern")
        return tuple(canonical_registry(h) for h in value)

    @property
    def has_user(self) -> bool:
        return bool(self.username or self.username_env or self.username_file)

    @model_validator(mode="after")
    def _check_credentials(self) -> RegistrySettings:
        users = [x for x in (self.username, self.username_env, self.username_file) if x]
        passwords = [x for x in (self.password_env, self.password_file) if x]
        if len(users) > 1:
            raise ValueError("give one of username, username_env, username_file")
        if len(passwords) > 1:
            raise ValueError("give one of password_env, password_file")
        if bool(users) != bool(passwords):
            raise ValueError("basic credentials need both a user name and a password source")
        if self.auth == "basic" and not users:
            raise ValueError("auth: basic needs username(_env|_file) and password_env|_file")
        if self.auth in ("anonymous", "acr-aad") and users:
            raise ValueError(f"auth: {self.auth} takes no user name or password")
        return self

    def is_acr(self, registry: str, *, acr_hosts: Callable[[str], bool] = is_acr_host) -> bool:
        """`acr` when set, else what `acr_hosts` says (by default: an ACR host name)."""
        return self.acr if self.acr is not None else acr_hosts(registry)


class CacheSettings(_Model):
    tag_ttl_seconds: float = Field(60.0, ge=0, description="tag -> digest")
    found_ttl_seconds: float = Field(86400.0, ge=0, description="digest -> artifact found")
    missing_ttl_seconds: float = Field(60.0, ge=0, description="digest -> none yet, conversion")
    manifest_ttl_seconds: float = Field(86400.0, ge=0, description="digest -> index entries")
    max_entries: int = Field(10000, ge=1, description="per cache")
    stale_seconds: float = Field(
        3600.0, ge=0, description="how long past expiry an entry may answer if the registry fails"
    )


class CircuitSettings(_Model):
    failure_threshold: int = Field(5, ge=1)
    open_seconds: float = Field(30.0, gt=0)
    max_retry_after_seconds: float = Field(300.0, gt=0)


class RegistryConfig(_Model):
    # The whole look-up must fit in the admission webhook's timeoutSeconds (the chart sets 5 s,
    # the API server allows at most 30) with room left for parsing, node evaluation and the
    # response: 2 s by default. Past it the verdict is unknown and the look-up goes on in the
    # background, up to background_seconds, to warm the cache for the next admission.
    deadline_seconds: float = Field(2.0, gt=0, le=25)
    background_seconds: float = Field(15.0, gt=0, le=120)
    connect_timeout_seconds: float = Field(2.0, gt=0)
    request_timeout_seconds: float = Field(5.0, gt=0)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    max_referrer_pages: int = Field(5, ge=1, le=100)
    max_connections: int = Field(32, ge=1, description="per registry")
    max_registries: int = Field(64, ge=1, description="registries with a live client")
    # Per admission: what one object may make streamgate look up. A tenant's Pod naming
    # hundreds of registries or images must not cost every other admission its deadline.
    max_registries_per_review: int = Field(8, ge=1, le=256)
    max_images_per_review: int = Field(32, ge=1, le=1024)
    platform: str = Field("linux/amd64", description="the platform streaming nodes run")
    aad_scope: str = ACR_AAD_SCOPE
    cache: CacheSettings = CacheSettings()
    circuit: CircuitSettings = CircuitSettings()
    registries: dict[str, RegistrySettings] = Field(default_factory=dict)

    @field_validator("platform")
    @classmethod
    def _check_platform(cls, value: str) -> str:
        Platform.parse(value)
        return value.lower()

    @field_validator("registries")
    @classmethod
    def _check_keys(cls, value: dict[str, RegistrySettings]) -> dict[str, RegistrySettings]:
        out: dict[str, RegistrySettings] = {}
        for key, settings in value.items():
            if not _KEY.match(key):
                raise ValueError(
                    f"registry key {key!r} must be a lower-case host[:port] or *.domain"
                )
            if key.startswith("*."):
                _check_pattern_credentials(key, settings)
            name = canonical_registry(key)
            if name in out:
                raise ValueError(f"registry keys {key!r} and {name!r} name the same registry")
            out[name] = settings
        return out

    @model_validator(mode="after")
    def _check_times(self) -> RegistryConfig:
        if self.background_seconds < self.deadline_seconds:
            raise ValueError("background_seconds must not be below deadline_seconds")
        return self

    @property
    def wanted_platform(self) -> Platform:
        return Platform.parse(self.platform)

    def settings_key(self, registry: str) -> str | None:
        """The key of `registries` that applies to `registry`, or None. An exact key matches
        its port exactly (`host` is `host:443`); a `*.domain` key any port."""
        registry = canonical_registry(registry)
        if registry in self.registries:
            return registry
        host = host_of(registry)
        wildcards = [k for k in self.registries if k.startswith("*.") and host.endswith(k[1:])]
        return max(wildcards, key=len) if wildcards else None

    def settings_for(self, registry: str) -> RegistrySettings:
        key = self.settings_key(registry)
        return self.registries[key] if key is not None else _DEFAULT_SETTINGS

    def auth_mode(
        self,
        registry: str,
        *,
        acr_hosts: Callable[[str], bool] = is_acr_host,
        aad_hosts: Callable[[str], bool] = is_acr_host,
    ) -> AuthMode:
        """The mode `registry` is asked with: its key's `auth`, where `auto` stands for `basic`
        when the key has a user name; for `acr-aad` when the registry is ACR (`acr`, else
        `acr_hosts`) and may get the Azure AD token: one of ACR's own domains, an exact key
        here, or a host `aad_hosts` lists by its exact name (`Policy.may_get_aad`); else for
        `anonymous`."""
        key = self.settings_key(registry)
        settings = self.registries[key] if key is not None else _DEFAULT_SETTINGS
        if settings.auth != "auto":
            return settings.auth
        if settings.has_user:
            return "basic"
        if not settings.is_acr(registry, acr_hosts=acr_hosts):
            return "anonymous"
        exact_key = key is not None and not key.startswith("*.")
        if exact_key or is_acr_host(registry) or aad_hosts(registry):
            return "acr-aad"
        return "anonymous"


def _check_pattern_credentials(key: str, settings: RegistrySettings) -> None:
    """A `*.domain` key matches hosts nobody listed, some of which a tenant may be able to
    create (a DNS name and a certificate under the domain): no credentials for them."""
    if settings.has_user or settings.auth == "basic":
        raise ValueError(
            f"registry key {key!r}: a pattern can't carry a user name and password (they would "
            "go to every host under it, including ones a tenant can create); give each "
            "registry its own key, host[:port]"
        )
    if settings.auth == "acr-aad" and not is_acr_host("x" + key[1:]):
        raise ValueError(
            f"registry key {key!r}: auth: acr-aad on a pattern would send the cluster's Azure "
            "AD token to every host under it, including ones a tenant can create; give each "
            "registry its own key, host[:port] (patterns may use acr-aad only under "
            "ACR's own domains, like *.azurecr.io)"
        )


_DEFAULT_SETTINGS = RegistrySettings()
