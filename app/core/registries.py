"""Settings of the registry look-ups, validated once at start-up.

`RegistryConfig` is a pydantic model (unknown keys are errors); the server builds it from the
`registry:` section of its settings file and hands it to `RegistryVerdictSource`. Secrets are
never inline: basic credentials name an environment variable or a file (a mounted Secret).
`registries` is keyed by `host[:port]` or by a `*.domain` pattern; the most specific key wins
and a registry with no key gets the defaults (HTTPS, anonymous, or AAD for ACR hosts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from app.core.images import is_acr_host
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

    def auth_mode(
        self, registry: str, *, acr_hosts: Callable[[str], bool] = is_acr_host
    ) -> AuthMode:
        """The mode `auto` stands for at `registry`."""
        if self.auth != "auto":
            return self.auth
        if self.username or self.username_env or self.username_file:
            return "basic"
        return "acr-aad" if self.is_acr(registry, acr_hosts=acr_hosts) else "anonymous"

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
        for key in value:
            if not _KEY.match(key):
                raise ValueError(
                    f"registry key {key!r} must be a lower-case host[:port] or *.domain"
                )
        return value

    @model_validator(mode="after")
    def _check_times(self) -> RegistryConfig:
        if self.background_seconds < self.deadline_seconds:
            raise ValueError("background_seconds must not be below deadline_seconds")
        return self

    @property
    def wanted_platform(self) -> Platform:
        return Platform.parse(self.platform)

    def settings_key(self, registry: str) -> str | None:
        """The key of `registries` that applies to `registry`, or None."""
        registry = registry.lower()
        if registry in self.registries:
            return registry
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
        wildcards = [k for k in self.registries if k.startswith("*.") and host.endswith(k[1:])]
        return max(wildcards, key=len) if wildcards else None

    def settings_for(self, registry: str) -> RegistrySettings:
        key = self.settings_key(registry)
        return self.registries[key] if key is not None else _DEFAULT_SETTINGS


_DEFAULT_SETTINGS = RegistrySettings()
