"""Prometheus metrics, all named `streamgate_*`, on a registry of their own.

`Metrics` is both the admission observer and the registry client's observer
(`RegistryObserver`), so one object counts everything; `serve_metrics` exposes it on its own
port, so the admission port serves only admission. State that is cheaper to read at scrape
time than to track (inventory age, pools by streaming ability, cache sizes) comes from
callbacks given to `watch` (gauges) and `watch_counter` (running totals kept elsewhere, exposed
as counters with the `_total` suffix so `rate()` and `increase()` work on them). The process
collector adds `process_*` (CPU seconds, resident memory, open and maximum file descriptors,
start time) and `streamgate_build_info` says which release and revision is running.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import platform
from collections.abc import Callable, Iterable
from typing import Any, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from app import __version__
from app.core.workloads import KINDS
from app.registry.metrics import RegistryObserver

logger = logging.getLogger(__name__)

# Admission answers from a warm cache take well under a millisecond: fine buckets below 10 ms.
ADMISSION_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
)
REGISTRY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

Probe = Callable[[], Iterable[tuple[dict[str, str], float]]]

# Label values that come from requests are kept only when they are among the few an apiserver
# sends (the kinds the chart's rules match) or, for registries, among the first MAX_REGISTRIES
# seen (registries the admin named in the policy always keep theirs); the rest count as "other".
# Anyone who can reach the webhook port can post reviews, and
# every new label value is a new series kept for the life of the process.
_KINDS = frozenset(kind for _, kind in KINDS)
_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
MAX_REGISTRIES = 64
OTHER = "other"


class _Probes(Collector):
    """Gauges and counters read at scrape time from callbacks."""

    def __init__(self) -> None:
        self.probes: list[tuple[str, str, tuple[str, ...], Probe, bool]] = []

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        for name, doc, labels, probe, counter in self.probes:
            family: GaugeMetricFamily | CounterMetricFamily
            if counter:
                family = CounterMetricFamily(name, doc, labels=list(labels))
            else:
                family = GaugeMetricFamily(name, doc, labels=list(labels))
            try:
                for values, number in probe():
                    family.add_metric([values[k] for k in labels], number)
            except Exception:  # a scrape must never fail because of one probe
                logger.exception("metrics probe %s failed", name)
            yield family


_go_float = cast(Callable[[float], str], floatToGoString)  # how prometheus_client writes `le`


class LoopCounter(Collector):
    """A counter for the admission path: a dict of floats updated without a lock, read by the
    scrape thread from a copy. Updated from one thread only (the event loop's): admissions,
    verdicts, image look-ups and registry cache events all happen there. prometheus_client's
    own counter takes a lock per increment, and an admission counts several times."""

    def __init__(
        self, name: str, doc: str, labels: tuple[str, ...], *, registry: CollectorRegistry
    ) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.doc, labels=list(self.labels))
        for key, value in list(self.values.items()):
            family.add_metric(list(key), value)
        yield family


class LoopHistogram(Collector):
    """A histogram, updated like `LoopCounter`: per label set, a count per bucket and a sum."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...],
        *,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.bounds = (*buckets, math.inf)
        self._le = tuple(_go_float(b) for b in self.bounds)  # "0.0005" ... "+Inf"
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * len(self.bounds)
            self.sums[labels] = 0.0
        counts[bisect.bisect_left(self.bounds, value)] += 1  # first bound >= value: `le`
        self.sums[labels] += value

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        for key, counts in list(self.counts.items()):
            cumulative = itertools.accumulate(list(counts))
            buckets = list(zip(self._le, cumulative, strict=True))
            family.add_metric(list(key), buckets, sum_value=self.sums.get(key, 0.0))
        yield family


class Metrics(RegistryObserver):
    def __init__(self, *, revision: str = "unknown") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        # (read from /proc at scrape time; nothing on platforms without it).
        ProcessCollector(registry=r)
        build = Gauge(
            "streamgate_build_info",
            "Always 1: the release, source revision and Python running",
            ["version", "revision", "python"],
            registry=r,
        )
        build.labels(__version__, revision, platform.python_version()).set(1)
        self.admissions = LoopCounter(
            "streamgate_admission_requests",
            "Admission requests answered",
            ("endpoint", "kind", "operation", "decision"),
            registry=r,
        )
        self.admission_seconds = LoopHistogram(
            "streamgate_admission_duration_seconds",
            "Time to answer one admission request",
            ("endpoint",),
            buckets=ADMISSION_BUCKETS,
            registry=r,
        )
        self.bad_reviews = Counter(
            "streamgate_bad_requests",
            "Requests refused as malformed (HTTP 400/413)",
            ["endpoint", "code"],
            registry=r,
        )
        self.verdicts = LoopCounter(
            "streamgate_image_verdicts",
            "Image verdicts used in decisions",
            ("verdict",),
            registry=r,
        )
        self.registry_requests = Counter(
            "streamgate_registry_requests",
            "HTTP requests to registries",
            ["registry", "endpoint", "status"],
            registry=r,
        )
        self.registry_seconds = Histogram(
            "streamgate_registry_request_duration_seconds",
            "Registry request latency",
            ["registry", "endpoint"],
            buckets=REGISTRY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "streamgate_token_exchanges",
            "Credentials obtained (aad, exchange, access)",
            ["registry", "kind", "outcome"],
            registry=r,
        )
        self.cache_events = LoopCounter(
            "streamgate_cache_events",
            "Registry cache hits, misses, stale answers, evictions",
            ("cache", "event"),
            registry=r,
        )
        self.circuit = Gauge(
            "streamgate_registry_circuit_open",
            "1 while the registry's circuit is open",
            ["registry"],
            registry=r,
        )
        self.lookups = LoopHistogram(
            "streamgate_image_lookup_duration_seconds",
            "Time to a verdict for one image",
            ("verdict",),
            buckets=REGISTRY_BUCKETS,
            registry=r,
        )
        self.policy_reloads = Counter(
            "streamgate_policy_reloads", "Policy file reloads", ["result"], registry=r
        )
        self.events_sent = Counter(
            "streamgate_kubernetes_events",
            "Kubernetes Events about decisions",
            ["result"],
            registry=r,
        )
        # Remediation (app/webhook/remediator.py): each a running total, `reason` a fixed set
        # (ACR's failure codes, forbidden, unavailable, timeout, ...; docs/operations.md).
        self.conversions_started = Counter(
            "streamgate_conversions_started",
            "Streaming conversions started (how: started by this replica, or adopted: one "
            "under way already, followed)",
            ["how"],
            registry=r,
        )
        self.conversions_succeeded = Counter(
            "streamgate_conversions_succeeded",
            "Streaming conversions followed to success",
            registry=r,
        )
        self.conversions_failed = Counter(
            "streamgate_conversions_failed",
            "Streaming conversions that failed or could not be started, by reason",
            ["reason"],
            registry=r,
        )
        self.conversions_skipped = Counter(
            "streamgate_conversions_skipped",
            "Conversions that would help but were not asked for, by reason (rate-limited, "
            "budget, queue-full, forbidden, registry-not-allowed, off, converted-already)",
            ["reason"],
            registry=r,
        )
        self._probes = _Probes()
        r.register(self._probes)
        self._registries: set[str] = set()
        # Registries the admin named in the policy always get their own label: the slots
        # the others share (first come, first served) can be filled by any tenant's Pods.
        self.named_registries: Callable[[str], bool] = lambda registry: False

    def _registry(self, registry: str) -> str:
        if registry in self._registries or self.named_registries(registry):
            return registry
        if len(self._registries) < MAX_REGISTRIES:
            self._registries.add(registry)
            return registry
        return OTHER

    # ---- admission -------------------------------------------------------------------------

    def on_admission(
        self, *, endpoint: str, kind: str, operation: str, decision: str, seconds: float
    ) -> None:
        kind = kind if kind in _KINDS else OTHER
        operation = operation if operation in _OPERATIONS else OTHER
        self.admissions.inc((endpoint, kind, operation, decision))
        self.admission_seconds.observe((endpoint,), seconds)

    def on_verdict(self, verdict: str) -> None:
        self.verdicts.inc((verdict,))

    def on_bad_request(self, *, endpoint: str, code: int) -> None:
        self.bad_reviews.labels(endpoint, str(code)).inc()

    def on_policy_reload(self, result: str) -> None:
        self.policy_reloads.labels(result).inc()

    def on_conversion(self, result: str, reason: str = "") -> None:
        if result in ("started", "adopted"):
            self.conversions_started.labels(result).inc()
        elif result == "succeeded":
            self.conversions_succeeded.inc()
        elif result == "failed":
            self.conversions_failed.labels(reason or "unknown").inc()
        else:
            self.conversions_skipped.labels(reason or "unknown").inc()

    def on_event(self, result: str) -> None:
        self.events_sent.labels(result).inc()

    # ---- registry (RegistryObserver) ------------------------------------------------------

    def on_request(self, *, registry: str, endpoint: str, status: str, seconds: float) -> None:
        registry = self._registry(registry)
        self.registry_requests.labels(registry, endpoint, status).inc()
        self.registry_seconds.labels(registry, endpoint).observe(seconds)

    def on_token(self, *, registry: str, kind: str, outcome: str) -> None:
        self.tokens.labels(self._registry(registry), kind, outcome).inc()

    def on_cache(self, *, cache: str, event: str) -> None:
        self.cache_events.inc((cache, event))

    def on_circuit(self, *, registry: str, state: str) -> None:
        registry = self._registry(registry)
        if registry != OTHER:
            self.circuit.labels(registry).set(1.0 if state == "open" else 0.0)

    def on_lookup(self, *, registry: str, verdict: str, seconds: float, timed_out: bool) -> None:
        self.lookups.observe((verdict,), seconds)

    # ---- scrape-time gauges ---------------------------------------------------------------

    def watch(self, name: str, doc: str, labels: tuple[str, ...], probe: Probe) -> None:
        """A gauge whose samples `probe` gives at each scrape."""
        self._probes.probes.append((name, doc, labels, probe, False))

    def watch_counter(self, name: str, doc: str, labels: tuple[str, ...], probe: Probe) -> None:
        """A counter (`name` without `_total`; the wire name gets it) whose running totals
        `probe` gives at each scrape. The totals must only grow for the life of the process."""
        self._probes.probes.append((name, doc, labels, probe, True))


def serve_metrics(metrics: Metrics, *, host: str, port: int) -> Any:
    """Serve /metrics on its own port, in a thread; returns the server (call `shutdown()`)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    logger.info("metrics on http://%s:%d/metrics", host, port)
    return server
