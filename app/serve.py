"""Start the webhook: settings -> policy, sources, TLS, uvicorn. Everything is built once here
and passed in; no request reads the environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from app.admission import DEFAULT_LOOKUP_DEADLINE, Admission
from app.policy import Policy, load_policy
from app.pools import NoInventory, PlacementSource
from app.server import create_app
from app.tls import CertReloader, issue_self_signed, server_context
from app.verdicts import VerdictSource

logger = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    host: str = "0.0.0.0"  # in a pod the Service reaches us on the pod IP
    port: int = 8443
    cert: Path | None = None
    key: Path | None = None
    self_signed_dir: Path | None = None  # generate a CA and pair here (local runs)
    self_signed_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost"])
    policy_path: Path | None = None
    lookup_deadline: float = DEFAULT_LOOKUP_DEADLINE
    cert_reload_interval: float = 5.0
    log_level: str = "info"


class _PolicyHolder:
    """The policy in force; swapped whole on reload, read once per request."""

    def __init__(self, policy: Policy) -> None:
        self.current = policy

    def __call__(self) -> Policy:
        return self.current


def build_admission(
    settings: ServeSettings,
    *,
    verdicts: VerdictSource,
    placement: PlacementSource | None = None,
) -> Admission:
    holder = _PolicyHolder(load_policy(settings.policy_path))
    return Admission(
        policy=holder,
        verdicts=verdicts,
        placement=placement or NoInventory(),
        lookup_deadline=settings.lookup_deadline,
    )


def _tls_files(settings: ServeSettings) -> tuple[Path, Path, Path | None]:
    if settings.cert and settings.key:
        return settings.cert, settings.key, None
    if settings.self_signed_dir:
        files = issue_self_signed(settings.self_signed_dir, settings.self_signed_hosts)
        return files.cert, files.key, files.ca
    raise SystemExit("streamgate serve: give --cert and --key, or --self-signed DIR")


@dataclass
class Running:
    """A configured server: run `server.serve()`; `reloader` keeps its certificate fresh."""

    server: uvicorn.Server
    reloader: CertReloader
    url: str
    ca: Path | None


def build_server(settings: ServeSettings, admission: Admission) -> Running:
    cert, key, ca = _tls_files(settings)
    config = uvicorn.Config(
        create_app(admission),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="off",
    )
    config.load()
    # uvicorn's own ssl_* options build a context it never reloads: we hand it ours.
    context = server_context(cert, key)
    config.ssl = context
    reloader = CertReloader(context, cert, key, interval=settings.cert_reload_interval)
    url = f"https://{settings.host}:{settings.port}"
    return Running(uvicorn.Server(config), reloader, url, ca)


async def serve(settings: ServeSettings, admission: Admission) -> None:
    running = build_server(settings, admission)
    logger.info("streamgate listening on %s (validate, mutate, healthz, readyz)", running.url)
    reload_task = asyncio.create_task(running.reloader.run())
    try:
        await running.server.serve()
    finally:
        reload_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reload_task
