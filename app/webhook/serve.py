"""Start the webhook: settings -> policy, sources, TLS, uvicorn. Everything is built once here
and passed in; no request reads the environment."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from app.certs.keeper import CertificateKeeper, ManagedCertSettings, manage_certificates
from app.certs.tls import CertReloader, issue_self_signed, server_context
from app.cluster.lease import LeaderElector
from app.cluster.namespaces import NamespaceLabels
from app.cluster.nodes import NodeWatcher, api_client_from_config
from app.cluster.policyreports import ReportWriter
from app.cluster.workloads import WorkloadWatcher
from app.core.policy import Policy
from app.core.pools import NoInventory, PlacementSource
from app.core.reports import WGPOLICY
from app.core.verdicts import VerdictSource
from app.registry.source import RegistryVerdictSource
from app.telemetry.event_checks import KubeObjects
from app.telemetry.events import DEFAULT_INTERVAL, EventRecorder, KubeEventsApi
from app.telemetry.metrics import Metrics, serve_metrics
from app.webhook.admission import (
    Admission,
    AdmissionObserver,
    NamespaceModes,
    NoNamespaceLabels,
    NoObserver,
)
from app.webhook.connections import FIRST_REQUEST_TIMEOUT, guarded_protocol
from app.webhook.loops import EventLoop, loop_factory
from app.webhook.reload import PolicyReloader, load_policy
from app.webhook.remediator import Remediator
from app.webhook.reporter import Reporter, ReporterSettings
from app.webhook.server import create_app

logger = logging.getLogger(__name__)

IN_CLUSTER = "in-cluster"
LOOKUP_GRACE = 0.25


def default_identity() -> str:
    """The pod's name (POD_NAME, from the downward API) or host name, and the process id."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{host}_{os.getpid()}"


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
    log_format: str = "text"
    # /metrics on its own port (0: off), so the admission port serves only admission.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0
    policy_reload_interval: float = 5.0
    first_request_timeout: float = FIRST_REQUEST_TIMEOUT
    # HTTP/1.1 parser and event loop: httptools + uvloop (C) by default, h11 + asyncio (pure
    # Python) where those extensions are not available (app/webhook/connections.py, loops.py).
    http: str = "httptools"
    loop: EventLoop = "uvloop"
    # Connections plus requests in progress past which uvicorn answers 503 at once: bounds
    # memory whatever a client does (the apiserver keeps a handful of connections).
    limit_concurrency: int = 1000
    # Kubernetes Events on warned and denied objects (needs `kube`); at most one per object and
    # reason every `event_interval` seconds (app/telemetry/events.py).
    events: bool = False
    event_interval: float = DEFAULT_INTERVAL
    # --client-ca: admission requests must carry a client certificate signed by this CA
    # (self-managed control planes whose apiserver presents one; not possible on AKS).
    client_ca: Path | None = None
    # The source revision, for streamgate_build_info (app/cli/version.py works it out).
    revision: str = "unknown"
    # --reports: keep policy reports up to date beside serving (needs `kube`).
    reports: ReportOptions | None = None


@dataclass
class ReportOptions:
    """The reporter (app/webhook/reporter.py): which API, the Lease that picks the one replica
    that writes (no Lease: this process always writes), and its pace."""

    api: str = WGPOLICY
    lease_namespace: str | None = None
    lease_name: str = "streamgate-reporter"
    identity: str = field(default_factory=default_identity)
    lease_seconds: int = 15
    interval: float = 2.0
    resync_seconds: float = 300.0
    writes_per_second: float = 5.0
    namespaces: tuple[str, ...] = ()  # only these (default: every namespace)
    min_write_interval: float = 10.0  # seconds between writes of one namespace's reports


def build_reporter(
    api: Any, admission: Admission, options: ReportOptions
) -> tuple[Reporter, WorkloadWatcher]:
    """The reporter over `admission` (its caches, memo, node pools and modes) and a watch of
    every workload kind; start the watcher, then run `reporter.run()`."""
    watcher = WorkloadWatcher(api, namespaces=options.namespaces)
    writer = ReportWriter(api, api=options.api, writes_per_second=options.writes_per_second)
    elector = None
    if options.lease_namespace:
        elector = LeaderElector(
            api,
            namespace=options.lease_namespace,
            name=options.lease_name,
            identity=options.identity,
            lease_seconds=options.lease_seconds,
            renew_deadline_seconds=options.lease_seconds * 2 / 3,
            retry_seconds=options.interval,
        )
    reporter = Reporter(
        admission,
        watcher.store,
        writer,
        elector,
        settings=ReporterSettings(
            api=options.api,
            interval=options.interval,
            resync_seconds=options.resync_seconds,
            namespaces=options.namespaces,
            min_write_interval=options.min_write_interval,
        ),
        ready=lambda: watcher.ready,
    )
    return reporter, watcher


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
    observer: AdmissionObserver | None = None,
) -> Admission:
    holder = _PolicyHolder(policy or load_policy(settings.policy_path))
    return Admission(
        policy=holder,
        verdicts=verdicts,
        placement=placement or NoInventory(),
        namespaces=namespaces or NoNamespaceLabels(),
        observer=observer or NoObserver(),
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
    on_bad_request: Callable[[str, int], None] | None = None,
) -> Running:
    cert, key, ca, keeper = _tls_files(settings)
    config = uvicorn.Config(
        create_app(admission, ready=ready, on_bad_request=on_bad_request),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep the process's own format (app/telemetry/logs.py)
        access_log=False,
        lifespan="off",
        http=guarded_protocol(
            settings.http,
            settings.first_request_timeout,
            client_auth=settings.client_ca is not None,
        ),
        loop=settings.loop,
        limit_concurrency=settings.limit_concurrency,
        # The apiserver connects directly (no proxy whose X-Forwarded-* to trust, and nothing
        # reads the client address): uvicorn's proxy-headers middleware would be a call and a
        # header scan per request for nothing.
        proxy_headers=False,
    )
    loop_factory(settings.loop)  # refuse a loop that is not installed, with the way out
    config.load()
    # uvicorn's own ssl_* options build a context it never reloads: we hand it ours.
    context = server_context(cert, key, client_ca=settings.client_ca)
    config.ssl = context
    reloader = CertReloader(context, cert, key, interval=settings.cert_reload_interval)
    url = f"https://{settings.host}:{settings.port}"
    return Running(uvicorn.Server(config), reloader, url, ca, keeper)


async def serve(
    settings: ServeSettings,
    admission: Admission,
    *,
    ready: Callable[[], tuple[bool, str]] = _always_ready,
    background: list[Callable[[], Coroutine[Any, Any, None]]] | None = None,
    on_bad_request: Callable[[str, int], None] | None = None,
    on_built: Callable[[Running], None] | None = None,
) -> None:
    """Serve until stopped; `background` loops run beside the server and end with it.
    `on_built` sees the configured server before it starts (metrics read its certificate)."""
    running = build_server(settings, admission, ready=ready, on_bad_request=on_bad_request)
    if on_built is not None:
        on_built(running)
    logger.info("streamgate listening on %s (validate, mutate, healthz, readyz)", running.url)
    if settings.client_ca is not None:
        logger.info("client certificates signed by %s required for admission", settings.client_ca)
    loops = [running.reloader.run, *(background or [])]
    if running.keeper:
        loops.append(running.keeper.run)
    tasks = [asyncio.create_task(loop()) for loop in loops]
    # What start-up built (the kubernetes client, pydantic models, FastAPI: ~85,000 objects)
    # lives as long as the process. Frozen, it leaves the collector's full passes, which
    # otherwise walk all of it (45-70 ms) several times a second under load: the p99 spikes.
    gc.collect()
    gc.freeze()
    # uvicorn shuts down on SIGTERM/SIGINT and then raises the signal again with the handlers
    # it found: those are ours while it serves, so the background loops' own ends run (the
    # reporter gives its Lease up) before the signal takes effect as it would have.
    captured: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: captured.append(signum))
    try:
        await running.server.serve()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for signum in captured:
        signal.raise_signal(signum)


def _probe_watches(metrics: Metrics, watches: Watches) -> None:
    def age() -> list[tuple[dict[str, str], float]]:
        value = watches.nodes.age_seconds
        return [({}, value)] if value != float("inf") else []

    def pools() -> list[tuple[dict[str, str], float]]:
        counts: dict[str, float] = {}
        if watches.nodes.ready:
            for fit in watches.nodes.index.pool_status():
                counts[fit.streaming.value] = counts.get(fit.streaming.value, 0) + 1
        return [({"streaming": k}, v) for k, v in counts.items()]

    metrics.watch(
        "streamgate_inventory_age_seconds",
        "Seconds since the node inventory last heard from the API",
        (),
        age,
    )
    metrics.watch("streamgate_node_pools", "Node pools by streaming ability", ("streaming",), pools)


def _probe_certificate(metrics: Metrics, reloader: CertReloader) -> None:
    def expiry() -> list[tuple[dict[str, str], float]]:
        value = reloader.expires_at
        return [] if value is None else [({}, value)]

    metrics.watch(
        "streamgate_certificate_expiry_timestamp_seconds",
        "Unix time the serving certificate in use expires (follows reloads)",
        (),
        expiry,
    )


def _start_reporter(
    settings: ServeSettings,
    admission: Admission,
    background: list[Callable[[], Coroutine[Any, Any, None]]],
) -> WorkloadWatcher | None:
    """`serve --reports`: the reporter beside the server, over the server's `admission`."""
    options = settings.reports
    if options is None or not settings.kube:
        return None
    kube = settings.kube
    api = api_client_from_config(None if kube == IN_CLUSTER else kube)
    reporter, watcher = build_reporter(api, admission, options)
    background.append(reporter.run)
    watcher.start()
    lease = f"lease {options.lease_namespace}/{options.lease_name}"
    logger.info(
        "policy reports on: %s, %s",
        options.api,
        lease if options.lease_namespace else "no lease (this replica always writes)",
    )
    return watcher


def _remediator(
    admission: Admission,
    source: RegistryVerdictSource,
    metrics: Metrics,
    recorder: EventRecorder | None,
) -> Remediator:
    """The remediator of `serve`, always there (idle on its queue: a policy reload may turn
    remediation on), telling workloads by Event when Events are on."""
    notify = recorder.notify if recorder is not None else None
    remediator = Remediator(source, admission.policy, observer=metrics, notify=notify)
    admission.remediator = remediator
    return remediator


def _needs_kube(settings: ServeSettings) -> None:
    for on, flag in ((settings.events, "--events"), (settings.reports, "--reports")):
        if on and not settings.kube:
            raise SystemExit(f"streamgate serve: {flag} needs --kubeconfig (a path or in-cluster)")


async def run_webhook(settings: ServeSettings) -> None:
    """Everything `streamgate serve` runs: policy, watches, registry client, metrics,
    policy reload, TLS server. Returns when the server stops."""
    policy = load_policy(settings.policy_path)
    metrics = Metrics(revision=settings.revision)
    metrics.named_registries = policy.names_registry
    _needs_kube(settings)
    watches = Watches(settings.kube, policy) if settings.kube else None
    source = RegistryVerdictSource(
        policy.registry, acr_hosts=policy.is_acr, aad_hosts=policy.may_get_aad, observer=metrics
    )
    metrics.watch_counter(
        "streamgate_cache_lookups",
        "Registry cache hits, misses, stale answers and evictions by cache (running totals)",
        ("cache", "event"),
        lambda: [
            ({"cache": name, "event": event}, float(getattr(stats, event)))
            for name, stats in source.cache_stats().items()
            for event in ("hits", "misses", "stale", "evictions")
        ],
    )
    metrics.watch(
        "streamgate_cache_entries",
        "Entries held per registry cache",
        ("cache",),
        lambda: [({"cache": name}, float(size)) for name, size in source.cache_sizes().items()],
    )
    admission = build_admission(
        settings,
        verdicts=source,
        placement=watches.nodes if watches else None,
        namespaces=watches.namespaces if watches else None,
        policy=policy,
        observer=metrics,
    )
    memo = admission.memo
    metrics.watch_counter(
        "streamgate_decision_memo_lookups",
        "Decisions handed back from the per-template memo (hits) or judged anew (misses)",
        ("event",),
        lambda: [({"event": "hits"}, float(memo.hits)), ({"event": "misses"}, float(memo.misses))],
    )
    metrics.watch(
        "streamgate_decision_memo_entries",
        "Decisions held in the per-template memo",
        (),
        lambda: [({}, float(len(memo)))],
    )
    recorder = None
    if settings.events and settings.kube:
        kube = settings.kube
        events_client = api_client_from_config(None if kube == IN_CLUSTER else kube)
        recorder = EventRecorder(
            KubeEventsApi(events_client),
            objects=KubeObjects(events_client),
            interval=settings.event_interval,
            on_result=metrics.on_event,
        )
        admission.on_decision = recorder.record
        recorder.start()
        logger.info(
            "kubernetes events on: at most one per object and reason every %gs",
            settings.event_interval,
        )
    background: list[Callable[[], Coroutine[Any, Any, None]]] = []
    background.append(_remediator(admission, source, metrics, recorder).run)
    workload_watcher = _start_reporter(settings, admission, background)
    if settings.policy_path is not None:
        assert isinstance(admission.policy, _PolicyHolder)
        reloader = PolicyReloader(
            admission.policy,
            settings.policy_path,
            interval=settings.policy_reload_interval,
            on_result=metrics.on_policy_reload,
        )
        background.append(reloader.run)
    metrics_server = None
    if settings.metrics_port:
        metrics_server = serve_metrics(
            metrics, host=settings.metrics_host, port=settings.metrics_port
        )
    if watches:
        _probe_watches(metrics, watches)
        watches.start()
    ready = watches.ready if watches else _always_ready
    metrics.watch(
        "streamgate_ready",
        "1 when /readyz answers ready (node and namespace inventories listed), else 0",
        (),
        lambda: [({}, 1.0 if ready()[0] else 0.0)],
    )
    try:
        await serve(
            settings,
            admission,
            ready=ready,
            background=background,
            on_bad_request=lambda endpoint, code: metrics.on_bad_request(
                endpoint=endpoint, code=code
            ),
            on_built=lambda running: _probe_certificate(metrics, running.reloader),
        )
    finally:
        if watches:
            watches.stop()
        if workload_watcher is not None:
            workload_watcher.stop()
        if recorder is not None:
            recorder.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        await source.aclose()


async def run_reporter(settings: ServeSettings, options: ReportOptions) -> None:
    """`streamgate report`: the reporter alone, with its own watches and registry client
    (the same code as `serve --reports`). Runs until cancelled (SIGTERM, SIGINT), then gives
    its Lease up."""
    assert settings.kube is not None
    policy = load_policy(settings.policy_path)
    watches = Watches(settings.kube, policy)
    source = RegistryVerdictSource(
        policy.registry, acr_hosts=policy.is_acr, aad_hosts=policy.may_get_aad
    )
    admission = build_admission(
        settings,
        verdicts=source,
        placement=watches.nodes,
        namespaces=watches.namespaces,
        policy=policy,
    )
    api = api_client_from_config(None if settings.kube == IN_CLUSTER else settings.kube)
    reporter, watcher = build_reporter(api, admission, options)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = [reporter.run]
    if settings.policy_path is not None:
        assert isinstance(admission.policy, _PolicyHolder)
        reloader = PolicyReloader(
            admission.policy, settings.policy_path, interval=settings.policy_reload_interval
        )
        background.append(reloader.run)
    watches.start()
    watcher.start()
    first = reporter.ready
    reporter.ready = lambda: first() and watches.ready()[0]
    tasks = [asyncio.create_task(loop()) for loop in background]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: [t.cancel() for t in tasks])
    logger.info(
        "streamgate report: %s as %s%s",
        options.api,
        options.identity,
        f", lease {options.lease_namespace}/{options.lease_name}"
        if options.lease_namespace
        else " (no lease: always writes)",
    )
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        pass
    finally:
        for task in tasks:
            if not task.done() and not task.cancelling():
                task.cancel()  # (a cancelled one is finishing: the reporter gives its Lease up)
        await asyncio.gather(*tasks, return_exceptions=True)
        watcher.stop()
        watches.stop()
        await source.aclose()
