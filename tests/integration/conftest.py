"""Fixtures for integration tests against real local registries (hack/registries.sh).

Session-scoped, all on 127.0.0.1 (docs/registries.md has the whole picture):

* ``registry_env`` - :class:`RegistryEnv`: runs ``hack/registries.sh up`` once (the first run on
  a machine builds olareg and may apt-get install docker-registry).
* ``olareg``, ``olareg_paged``, ``distribution``, ``basic_registry``, ``token_registry`` -
  :class:`Registry`: ``.host`` (host:port), ``.url``, ``.client()`` (httpx, credentials set),
  ``.offset()`` / ``.count(since, method, path_re)`` to count requests from the registry's log,
  ``.username`` / ``.password`` (basic only), ``.referrers_api``.
* ``acr_front`` - :class:`AcrFront`: this session's own ACR front (HTTPS, free port) before the
  token registry: ``.host`` (= the ``service``), ``.url``, ``.ca_cert``, ``.aad_token`` (an
  opaque AAD token it accepts), ``.mint_aad_token()``, ``.stats()`` / ``.count()`` /
  ``.reset_stats()``, ``.configured(access_token_lifetime=..)``, ``.upstream`` (the token
  registry, whose log counts requests at the registry side). No referrers API behind it.
* ``acr_front_referrers`` - the same, before an olareg (``olareg_acr``) and checking the bearer
  tokens itself: ACR auth with the referrers API, as on a real ACR.
* ``seeded`` - :class:`Seeded`: ``seeded["olareg"]`` etc. seeds that registry with
  ``hack/seed_registry.py`` on first use in the session and returns a :class:`SeedResult`
  (digests, platform digests, referrers). Names: olareg, olareg_paged, distribution, basic,
  acr_front, acr_front_referrers.

Registries that this session had to start are stopped at its end when ``CI`` or
``STREAMGATE_STOP_REGISTRIES`` is set; otherwise they stay up for the next run
(``hack/registries.sh down`` stops them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.registries import (
    AcrFront,
    Registry,
    RegistryEnv,
    RegistryInfraError,
    Seeded,
    ensure_registries,
    start_acr_front,
    started_here,
    stop_registries,
)


@pytest.fixture(scope="session")
def registry_env() -> Iterator[RegistryEnv]:
    try:
        env = ensure_registries()
    except RegistryInfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield env
    if started_here() and (os.environ.get("CI") or os.environ.get("STREAMGATE_STOP_REGISTRIES")):
        stop_registries()


@pytest.fixture(scope="session")
def olareg(registry_env: RegistryEnv) -> Registry:
    """olareg: OCI 1.1 referrers API, artifactType filter, in memory."""
    return registry_env.olareg


@pytest.fixture(scope="session")
def olareg_paged(registry_env: RegistryEnv) -> Registry:
    """olareg with 4 KiB referrers pages: long referrer lists come in pages (Link rel=next)."""
    return registry_env.olareg_paged


@pytest.fixture(scope="session")
def distribution(registry_env: RegistryEnv) -> Registry:
    """docker-registry 2.8, no auth: referrers API answers 404, fallback tags instead."""
    return registry_env.distribution


@pytest.fixture(scope="session")
def basic_registry(registry_env: RegistryEnv) -> Registry:
    """docker-registry 2.8 with htpasswd basic auth (sg-user / sg-pass)."""
    return registry_env.basic


@pytest.fixture(scope="session")
def token_registry(registry_env: RegistryEnv) -> Registry:
    """The token-auth docker-registry behind the ACR front (use its log to count requests)."""
    return registry_env.token_registry


class _FrontHolder:
    """Starts one of this session's ACR fronts on first use (by its fixture or ``seeded``)."""

    def __init__(self, env: RegistryEnv, *, referrers: bool = False) -> None:
        self.env = env
        self.referrers = referrers
        self.front: AcrFront | None = None

    def get(self) -> AcrFront:
        if self.front is None:
            try:
                if self.referrers:
                    self.front = start_acr_front(
                        self.env, upstream=self.env.olareg_acr, enforce_auth=True
                    )
                else:
                    self.front = start_acr_front(self.env)
            except RegistryInfraError as exc:
                pytest.fail(str(exc), pytrace=False)
        return self.front

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
            self.front = None


@pytest.fixture(scope="session")
def _front_holder(registry_env: RegistryEnv) -> Iterator[_FrontHolder]:
    holder = _FrontHolder(registry_env)
    yield holder
    holder.stop()


@pytest.fixture(scope="session")
def _front_referrers_holder(registry_env: RegistryEnv) -> Iterator[_FrontHolder]:
    holder = _FrontHolder(registry_env, referrers=True)
    yield holder
    holder.stop()


@pytest.fixture(scope="session")
def acr_front(_front_holder: _FrontHolder) -> AcrFront:
    """This session's ACR front (HTTPS on a free port) before the token registry: ACR auth,
    no referrers API (docker-registry 2.8), so clients use the fallback tag."""
    return _front_holder.get()


@pytest.fixture(scope="session")
def acr_front_referrers(_front_referrers_holder: _FrontHolder) -> AcrFront:
    """This session's ACR front before olareg, checking the tokens itself: ACR auth and the
    referrers API together, as on a real ACR."""
    return _front_referrers_holder.get()


@pytest.fixture(scope="session")
def seeded(
    registry_env: RegistryEnv, _front_holder: _FrontHolder, _front_referrers_holder: _FrontHolder
) -> Seeded:
    """Seeds each registry on first use in the session: ``seeded["olareg"]`` -> SeedResult."""
    return Seeded(
        {
            "olareg": registry_env.olareg,
            "olareg_paged": registry_env.olareg_paged,
            "distribution": registry_env.distribution,
            "basic": registry_env.basic,
            "acr_front": _front_holder.get,
            "acr_front_referrers": _front_referrers_holder.get,
        }
    )
