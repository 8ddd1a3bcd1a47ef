"""Registry look-ups: does an image have an ACR streaming artifact? (see docs/registry.md)

The public surface is `RegistryVerdictSource` (the production `VerdictSource`), its settings
`RegistryConfig`, the metrics hook `RegistryObserver` and the AAD token seam
`AadTokenProvider`.
"""

from app.core.registries import RegistryConfig, RegistrySettings
from app.registry.credentials import AadTokenProvider, AzureIdentityProvider
from app.registry.metrics import RegistryObserver
from app.registry.pool import ConfigError
from app.registry.source import RegistryVerdictSource

__all__ = [
    "AadTokenProvider",
    "AzureIdentityProvider",
    "ConfigError",
    "RegistryConfig",
    "RegistryObserver",
    "RegistrySettings",
    "RegistryVerdictSource",
]
