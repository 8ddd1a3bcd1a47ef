"""Start the webhook: settings -> policy, sources, TLS, uvicorn. Everything is built once here
and passed in; no request reads the environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from app.admission import Admission, NamespaceModes, NoNamespaceLabels
from app.certs import CertificateKeeper, ManagedCertSettings, manage_certificates
from app.namespaces import NamespaceLabels
from app.nodes.watcher import NodeWatcher, api_client_from_config
from app.policy import Policy, load_policy
from app.pools import NoInventory, PlacementSource
from app.server import create_app
from app.tls import CertReloader, issue_self_signed, server_context
from app.verdicts import VerdictSource

logger = logging.getLogger(__name__)

IN_CLUSTER = "in-cluster"
LOOKUP_GRACE = 0.25


@dataclass
class ServeSettings:
    host: str = "0.0.0.0"  # in a pod the Service reaches us on the pod IP
    port: int = 8443
    cert: Path | None = None
    key: Path | None = None
    self_signed_dir: Path | None = None  # generate a CA and pair here (local runs)
    self_signed_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1", "localhost"])
    policy_path: Path | None = None
    cert_reload_interval: float = 5.0
    log_level: str = "info"
    # Where the node and namespace watches read from: a kubeconfig path, "in-cluster", or
    # None for no cluster (pools unknown, namespace modes from the policy only).
    kube: str | None = None
    # --manage-certs: the pair comes from (and is kept fresh in) a Secret via the API.
    managed_certs: ManagedCertSettings | None = None


class _PolicyHolder:
    """The policy in force; swapped whole on reload, read once per request."""

    def __init__(self, policy: Policy) -> None:
        self.current = policy

    def __call__(self) -> Policy:
        return self.current


class Watches:
    """The cluster state admission reads: node pools and namespace labels, each watched in a
    thread. Ready once both have listed everything."""

    def __init__(self, kube: str, policy: Policy) -> None:
        api = api_client_from_config(None if kube == IN_CLUSTER else kube)
        self.nodes = NodeWatcher(api, rules=policy.pools)
        self.namespaces = NamespaceLabels(api)

    def start(self) -> None:
        self.nodes.start()
        self.namespaces.start()

    def stop(self) -> None:
        self.nodes.stop()
        self.namespaces.stop()

    def ready(self) -> tuple[bool, str]:
        if not self.nodes.ready:
            return False, "waiting for the first list of nodes and runtime classes"
        if not self.namespaces.ready:
            return False, "waiting for the first list of namespaces"
        return True, f"ok (node inventory {self.nodes.age_seconds:.0f}s old)"


def _always_ready() -> tuple[bool, str]:
    return True, "ok"


def build_admission(
    settings: ServeSettings,
    *,
    verdicts: VerdictSource,
    placement: PlacementSource | None = None,
    namespaces: NamespaceModes | None = None,
    policy: Policy | None = None,
) -> Admission:
    holder = _PolicyHolder(policy or load_policy(settings.policy_path))
    return Admission(
        policy=holder,
        verdicts=verdicts,
        placement=placement or NoInventory(),
        namespaces=namespaces or NoNamespaceLabels(),
        # The registry source keeps its own deadline and says "registry timed out"; this
        # outer one only guards against a source that overruns it.
        lookup_deadline=holder.current.registry.deadline_seconds + LOOKUP_GRACE,
    )


def _tls_files(
    settings: ServeSettings,
) -> tuple[Path, Path, Path | None, CertificateKeeper | None]:
    if settings.managed_certs:
        kube = settings.kube or IN_CLUSTER
        api = api_client_from_config(None if kube == IN_CLUSTER else kube)
        files, keeper = manage_certificates(api, settings.managed_certs)
        return files.cert, files.key, files.ca, keeper
    if settings.cert and settings.key:
        return settings.cert, settings.key, None, None
    if settings.self_signed_dir:
        files = issue_self_signed(settings.self_signed_dir, settings.self_signed_hosts)
        return files.cert, files.key, files.ca, None
    raise SystemExit("streamgate serve: give --cert and --key, or --self-signed DIR")


@dataclass
class Running:
    """A configured server: run `server.serve()`; `reloader` keeps its certificate fresh."""

    server: uvicorn.Server
    reloader: CertReloader
    url: str
    ca: Path | None
    keeper: CertificateKeeper | None = None


def build_server(
    settings: ServeSettings,
    admission: Admission,
    *,
    ready: Callable[[], tuple[bool, str]] = _always_ready,
) -> Running:
    cert, key, ca, keeper = _tls_files(settings)
    config = uvicorn.Config(
        create_app(admission, ready=ready),
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
    return Running(uvicorn.Server(config), reloader, url, ca, keeper)


async def serve(
    settings: ServeSettings,
    admission: Admission,
    *,
    ready: Callable[[], tuple[bool, str]] = _always_ready,
) -> None:
    running = build_server(settings, admission, ready=ready)
    logger.info("streamgate listening on %s (validate, mutate, healthz, readyz)", running.url)
    tasks = [asyncio.create_task(running.reloader.run())]
    if running.keeper:
        tasks.append(asyncio.create_task(running.keeper.run()))
    try:
        await running.server.serve()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
