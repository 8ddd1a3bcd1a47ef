"""What the client authenticates with, per registry.

- `Anonymous`: no credentials; a bearer challenge is answered with an anonymous token request.
- `BasicAuth`: a user name and password (non-ACR registries, or ACR tokens/admin users): sent
  as HTTP Basic to the registry or to its token service, never anywhere else.
- `AcrAad`: an Azure AD token, exchanged at the registry's `/oauth2/exchange` for a refresh
  token, then at `/oauth2/token` for a repository-scoped access token (docs/aks-facts.md §2).

AAD tokens come from an `AadTokenProvider`. Production uses `AzureIdentityProvider` (the async
`DefaultAzureCredential`: workload identity, managed identity, environment); tests pass any
object with the same `get_token`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.core.registries import ACR_AAD_SCOPE

logger = logging.getLogger(__name__)


class AadTokenProvider(Protocol):
    async def get_token(self, scope: str) -> tuple[str, float]:
        """An AAD access token for `scope` and its expiry as Unix seconds."""
        ...


class AzureIdentityProvider:
    """`AadTokenProvider` on azure-identity's async `DefaultAzureCredential`.

    The credential is made on first use (so a process that never meets an ACR image needs no
    Azure identity) and caches tokens itself; `close()` releases its HTTP sessions.
    """

    def __init__(self, **credential_kwargs: Any) -> None:
        self._kwargs = credential_kwargs
        self._credential: Any = None

    async def get_token(self, scope: str) -> tuple[str, float]:
        if self._credential is None:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential(**self._kwargs)
        access = await self._credential.get_token(scope)
        return str(access.token), float(access.expires_on)

    async def close(self) -> None:
        if self._credential is not None:
            await self._credential.close()
            self._credential = None


@dataclass(frozen=True, slots=True)
class Anonymous:
    pass


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AcrAad:
    provider: AadTokenProvider = field(repr=False)
    tenant: str | None = None
    scope: str = ACR_AAD_SCOPE


Credentials = Anonymous | BasicAuth | AcrAad
