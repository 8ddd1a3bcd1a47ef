"""`streamgate scan`: a cluster audit. Reads every workload in the cluster (or some
namespaces), judges each with the same core and registry client as the webhook, and reports.

    snapshot = read_cluster(reader, namespaces)          # one list of each kind, nodes, modes
    report = await scan(snapshot, policy, source)         # Admission.decide per workload
    print(to_table(report))                               # or to_json / to_markdown / to_html

What is judged: Deployments, StatefulSets, DaemonSets, CronJobs, Jobs, ReplicaSets,
ReplicationControllers and Pods, except objects whose controller is one of those kinds (a
Deployment's ReplicaSets and their Pods, a CronJob's Jobs): the webhook judged them through
that controller, and counting them again would count one workload many times.

Each object becomes a CREATE `AdmissionRequest` for `Admission.decide`, with namespace modes
from the namespaces' `streamgate.io/mode` labels and a `PlacementIndex` over one snapshot of
the nodes, so exemptions, modes and pool rules apply as in the webhook. Registry look-ups go
through `ScanVerdicts`: every distinct image is asked once, at most `concurrency` at a time
per registry, with a longer deadline than admission has (a scan is not in a hurry), and a
rate-limited registry is waited for (its `Retry-After`, bounded) and asked again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import yaml

from app.core.evaluate import ANNOTATION_STREAMING, Decision, Severity
from app.core.images import ImageRef
from app.core.nodes.model import inventory_from_api
from app.core.nodes.placement import PlacementIndex
from app.core.plan import plan
from app.core.policy import MODE_LABEL, Mode, Policy, mode_from_label, parse_policy
from app.core.pools import UNKNOWN_PLACEMENT, Placement, PlacementSource, PoolFit
from app.core.registries import RegistryConfig
from app.core.reports import OPENREPORTS, WGPOLICY, RuleResult, Subject, reports, workload_results
from app.core.verdicts import ImageVerdict, Verdict, VerdictSource
from app.core.workloads import GROUPS, JUDGED_OWNERS, KIND_ORDER, WorkloadError, workload
from app.registry.errors import CircuitOpen, RateLimited
from app.webhook.admission import Admission
from app.webhook.review import AdmissionRequest, judging_request

logger = logging.getLogger(__name__)

# A scan waits longer for a registry than an admission may (RegistryConfig caps it at 25 s).
SCAN_DEADLINE = 20.0
DEFAULT_CONCURRENCY = 4
RATE_LIMIT_ATTEMPTS = 3
MAX_RATE_LIMIT_WAIT = 60.0
PAGE_SIZE = 500


STATUSES = ("streamable", "not-streamable", "unknown", "not-acr", "skipped", "error")


class ScanError(Exception):
    """The scan can't run (a namespace that does not exist, the cluster can't be read)."""


# ---- reading the cluster --------------------------------------------------------------------


class ClusterReader(Protocol):
    """Raw API objects (dicts as the API sends them). `KubeReader` in production."""

    def objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of `kind` (one of KIND_ORDER) in `namespace`, or everywhere when None."""
        ...

    def namespace(self, name: str) -> dict[str, Any] | None:
        """The namespace, or None when it does not exist."""
        ...

    def namespaces(self) -> list[dict[str, Any]]: ...

    def nodes(self) -> list[dict[str, Any]]: ...

    def runtime_classes(self) -> list[dict[str, Any]]: ...


class KubeReader:
    """`ClusterReader` over the official client: raw JSON (`_preload_content=False`), paged."""

    def __init__(self, api_client: Any, *, page_size: int = PAGE_SIZE) -> None:
        from kubernetes import client

        core, apps, batch = (
            client.CoreV1Api(api_client),
            client.AppsV1Api(api_client),
            client.BatchV1Api(api_client),
        )
        self._core: Any = core
        self._node: Any = client.NodeV1Api(api_client)
        self._page = page_size
        self._lists: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "Pod": (core.list_pod_for_all_namespaces, core.list_namespaced_pod),
            "ReplicationController": (
                core.list_replication_controller_for_all_namespaces,
                core.list_namespaced_replication_controller,
            ),
            "Deployment": (
                apps.list_deployment_for_all_namespaces,
                apps.list_namespaced_deployment,
            ),
            "StatefulSet": (
                apps.list_stateful_set_for_all_namespaces,
                apps.list_namespaced_stateful_set,
            ),
            "DaemonSet": (apps.list_daemon_set_for_all_namespaces, apps.list_namespaced_daemon_set),
            "ReplicaSet": (
                apps.list_replica_set_for_all_namespaces,
                apps.list_namespaced_replica_set,
            ),
            "Job": (batch.list_job_for_all_namespaces, batch.list_namespaced_job),
            "CronJob": (batch.list_cron_job_for_all_namespaces, batch.list_namespaced_cron_job),
        }

    def _paged(self, fn: Callable[..., Any], *args: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            response = fn(
                *args,
                limit=self._page,
                _continue=token,
                _preload_content=False,
                _request_timeout=(5, 60),
            )
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
            items.extend(i for i in body.get("items") or () if isinstance(i, dict))
            token = (body.get("metadata") or {}).get("continue") or None
            if token is None:
                return items

    def objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        everywhere, namespaced = self._lists[kind]
        if namespace is None:
            return self._paged(everywhere)
        return self._paged(namespaced, namespace)

    def namespace(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._core.read_namespace(
                name, _preload_content=False, _request_timeout=(5, 30)
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        try:
            doc = json.loads(response.data)
        finally:
            response.release_conn()
        return doc if isinstance(doc, dict) else None

    def namespaces(self) -> list[dict[str, Any]]:
        return self._paged(self._core.list_namespace)

    def nodes(self) -> list[dict[str, Any]]:
        return self._paged(self._core.list_node)

    def runtime_classes(self) -> list[dict[str, Any]]:
        return self._paged(self._node.list_runtime_class)


def _api_error(err: BaseException) -> str:
    status = getattr(err, "status", None)
    if isinstance(status, int) and status:
        reason = getattr(err, "reason", "") or ""
        return f"HTTP {status} {reason}".strip()
    return f"{type(err).__name__}: {str(err)[:200]}"


@dataclass(frozen=True, slots=True)
class ClusterObject:
    kind: str
    obj: Mapping[str, Any]

    @property
    def metadata(self) -> Mapping[str, Any]:
        meta = self.obj.get("metadata")
        return meta if isinstance(meta, Mapping) else {}

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid") or "")

    @property
    def controller(self) -> str | None:
        refs = self.metadata.get("ownerReferences")
        for ref in refs if isinstance(refs, list) else ():
            if isinstance(ref, Mapping) and ref.get("controller") is True:
                kind = ref.get("kind")
                return kind if isinstance(kind, str) else None
        return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a scan judges: the workloads, the namespaces' modes and one node inventory."""

    objects: tuple[ClusterObject, ...]
    modes: Mapping[str, Mode]
    placement: PlacementSource
    scope: tuple[str, ...]  # the namespaces asked for; () = all
    covered: Mapping[str, int] = field(default_factory=dict)  # left out: judged via controller
    notes: tuple[str, ...] = ()  # what could not be read


class StaticModes:
    """`NamespaceModes` from one list of namespaces."""

    def __init__(self, modes: Mapping[str, Mode]) -> None:
        self._modes = dict(modes)

    def mode(self, namespace: str) -> Mode | None:
        return self._modes.get(namespace)


def _modes(namespaces: Iterable[Mapping[str, Any]]) -> dict[str, Mode]:
    out: dict[str, Mode] = {}
    for ns in namespaces:
        meta = ns.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        labels = meta.get("labels")
        value = labels.get(MODE_LABEL) if isinstance(labels, Mapping) else None
        mode = mode_from_label(value if isinstance(value, str) else None)
        if mode is not None:
            out[str(meta.get("name", ""))] = mode
    return out


def read_cluster(
    reader: ClusterReader,
    policy: Policy,
    *,
    namespaces: Sequence[str] = (),
    progress: Progress | None = None,
) -> Snapshot:
    """One consistent-enough read: namespaces, nodes and runtime classes, then every kind.
    Raises `ScanError` for a namespace that does not exist or a cluster that can't be read;
    a kind or the nodes that can't be listed (RBAC) become notes and the scan goes on."""
    progress = progress or Progress(enabled=False)
    notes: list[str] = []
    try:
        if namespaces:
            found = []
            for name in namespaces:
                ns = reader.namespace(name)
                if ns is None:
                    raise ScanError(f"namespace {name} not found")
                found.append(ns)
        else:
            found = reader.namespaces()
    except ScanError:
        raise
    except Exception as err:
        if getattr(err, "status", None) != 403:
            raise ScanError(f"cannot read the cluster: {_api_error(err)}") from err
        notes.append(f"namespaces not readable ({_api_error(err)}): modes from the policy only")
        found = []
    modes = _modes(found)
    placement: PlacementSource
    try:
        inventory = inventory_from_api(
            reader.nodes(),
            reader.runtime_classes(),
            synced_at=time.time(),
            pool_labels=policy.pools.pool_labels,
        )
        placement = PlacementIndex(inventory, policy.pools)
    except Exception as err:
        notes.append(f"nodes not readable ({_api_error(err)}): node pools unknown")
        placement = _Unknown()
    objects: list[ClusterObject] = []
    covered: Counter[str] = Counter()
    scopes: list[str | None] = list(namespaces) or [None]
    for index, kind in enumerate(KIND_ORDER):
        progress.update("listing", index, len(KIND_ORDER), kind)
        for scope in scopes:
            try:
                items = reader.objects(kind, scope)
            except Exception as err:
                where = f" in {scope}" if scope else ""
                notes.append(f"{kind} not listed{where}: {_api_error(err)}")
                continue
            for item in items:
                found_obj = ClusterObject(kind, item)
                if found_obj.controller in JUDGED_OWNERS:
                    covered[kind] += 1
                    continue
                objects.append(found_obj)
    progress.update("listing", len(KIND_ORDER), len(KIND_ORDER), "")
    return Snapshot(
        objects=tuple(objects),
        modes=modes,
        placement=placement,
        scope=tuple(namespaces),
        covered=dict(covered),
        notes=tuple(notes),
    )


class _Unknown:
    def place(self, pod_spec: Mapping[str, Any]) -> Placement:
        return UNKNOWN_PLACEMENT


# ---- progress -----------------------------------------------------------------------------


class Progress:
    """Progress on stderr for long runs: one rewritten line on a terminal (after a second),
    a line every few seconds in a log (after five). A phase that began and ended unseen
    stays unseen; one that was shown gets its final count too."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool = True,
        interval: float | None = None,
        after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self._after = after if after is not None else (1.0 if self.tty else 5.0)
        self._clock = clock
        self._started = clock()
        self._last = -1e9
        self._shown: set[str] = set()
        self._open = False  # a terminal line waits to be ended

    def update(self, phase: str, done: int, total: int, detail: str = "") -> None:
        if not self.enabled:
            return
        now = self._clock()
        final = done >= total
        if final:
            if phase not in self._shown:
                return
        elif now - self._started < self._after or now - self._last < self.interval:
            return
        self._last = now
        self._shown.add(phase)
        text = f"scan: {phase} {done}/{total}" + (f" ({detail})" if detail else "")
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            self._open = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\r\033[K")
            self._open = False
        self.stream.write(f"scan: {text}\n")
        self.stream.flush()


# ---- registry look-ups --------------------------------------------------------------------


def scan_registry_config(config: RegistryConfig, deadline: float = SCAN_DEADLINE) -> RegistryConfig:
    """The policy's registry settings with the scan's longer deadline."""
    wait = max(config.deadline_seconds, deadline)
    return config.model_copy(
        update={
            "deadline_seconds": wait,
            "background_seconds": max(config.background_seconds, wait),
        }
    )


_RETRY_IN = re.compile(r"retry in (\d+) s")


def _backoff(verdict: ImageVerdict) -> float | None:
    """Seconds to wait before asking again, when the registry said it is rate-limiting us (or
    its circuit is open after failures); None otherwise."""
    reason = verdict.reason
    if verdict.verdict is not Verdict.UNKNOWN or not reason.startswith(
        (RateLimited.default_reason, CircuitOpen.default_reason.rstrip(")"))
    ):
        return None
    match = _RETRY_IN.search(reason)
    return float(match.group(1)) if match else 5.0


class ScanVerdicts:
    """A `VerdictSource` for a scan: each image once, bounded concurrency per registry,
    rate limits waited out (at most `attempts` tries, waits of at most `max_wait`)."""

    def __init__(
        self,
        source: VerdictSource,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        attempts: int = RATE_LIMIT_ATTEMPTS,
        max_wait: float = MAX_RATE_LIMIT_WAIT,
        sleep: Callable[[float], Any] = asyncio.sleep,
        on_wait: Callable[[str, float], None] = lambda registry, seconds: None,
    ) -> None:
        self.source = source
        self.concurrency = max(1, concurrency)
        self.attempts = max(1, attempts)
        self.max_wait = max_wait
        self._sleep = sleep
        self._on_wait = on_wait
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._flights: dict[ImageRef, asyncio.Task[ImageVerdict]] = {}
        self.waits = 0

    def _limit(self, registry: str) -> asyncio.Semaphore:
        if registry not in self._limits:
            self._limits[registry] = asyncio.Semaphore(self.concurrency)
        return self._limits[registry]

    async def _ask(self, ref: ImageRef) -> ImageVerdict:
        verdict = ImageVerdict(Verdict.UNKNOWN, "not looked up")
        for attempt in range(self.attempts):
            async with self._limit(ref.registry):
                verdict = await self.source.verdict(ref)
            wait = _backoff(verdict)
            if wait is None or attempt == self.attempts - 1:
                return verdict
            wait = min(max(wait, 1.0), self.max_wait)
            self.waits += 1
            self._on_wait(ref.registry, wait)
            await self._sleep(wait)
        return verdict

    def cached(self, ref: ImageRef) -> ImageVerdict | None:
        return None  # a scan asks each image once, through `verdict`'s limits

    async def verdict(self, ref: ImageRef) -> ImageVerdict:
        task = self._flights.get(ref)
        if task is None:
            task = self._flights[ref] = asyncio.ensure_future(self._ask(ref))
        return await asyncio.shield(task)

    async def prefetch(
        self, refs: Iterable[ImageRef], on_done: Callable[[int, int], None] = lambda d, t: None
    ) -> dict[ImageRef, ImageVerdict]:
        wanted = sorted(set(refs), key=lambda r: r.raw)
        total, done = len(wanted), 0
        on_done(0, total)

        async def one(ref: ImageRef) -> None:
            nonlocal done
            await self.verdict(ref)
            done += 1
            on_done(done, total)

        await asyncio.gather(*(one(ref) for ref in wanted))
        return {ref: self._flights[ref].result() for ref in wanted}


# ---- judging ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    namespace: str
    kind: str
    name: str
    mode: str
    status: str  # one of STATUSES
    decision: Decision | None
    placement: Placement = UNKNOWN_PLACEMENT
    error: str | None = None
    pull_secrets: bool = False  # pulls with imagePullSecrets (which don't stream)
    pods: int = 1  # pods it runs: `pod_count`
    uid: str = ""  # metadata.uid, for the policy reports' object references

    @property
    def judged(self) -> list[Any]:
        return [r for r in self.decision.reports if not r.exempt] if self.decision else []

    @property
    def digest_pinned(self) -> bool:
        return any(r.ref is not None and r.ref.digest_pinned for r in self.judged)

    @property
    def uses_acr(self) -> bool:
        return self.status in ("streamable", "not-streamable", "unknown")

    @property
    def pools_cannot_stream(self) -> bool:
        """Every pool it can land on can't stream (so it never streams)."""
        p = self.placement
        return self.uses_acr and p.known and bool(p.pools) and len(p.non_streaming) == len(p.pools)

    @property
    def pools_may_not_stream(self) -> bool:
        """Some of the pools it can land on can't stream."""
        p = self.placement
        return self.uses_acr and p.known and 0 < len(p.non_streaming) < len(p.pools)

    @property
    def will_stream(self) -> bool:
        """Every ACR image streamable, pulled by tag without pull secrets, on pools that all
        can stream (or pools unknown)."""
        p = self.placement
        return (
            self.status == "streamable"
            and not self.digest_pinned
            and not self.pull_secrets
            and (not p.known or (bool(p.pools) and not p.non_streaming))
        )

    @property
    def images_text(self) -> str:
        judged = self.judged
        if not judged:
            return "-"
        streamable = sum(r.verdict.verdict is Verdict.STREAMABLE for r in judged)
        return f"{streamable}/{len(judged)}"

    @property
    def pools_text(self) -> str:
        p = self.placement
        if not self.uses_acr:
            return "-"
        if not p.known:
            return "?"
        return f"{len(p.streaming_pools)}/{len(p.pools)}"

    @property
    def note(self) -> str:
        if self.error:
            return self.error
        d = self.decision
        if d is None:
            return ""
        if d.skipped:
            return d.skipped
        rules = list(dict.fromkeys(p.rule for p in d.problems))
        return ", ".join(rules)


def status_of(decision: Decision) -> str:
    if decision.skipped:
        return "skipped"
    verdicts = {r.verdict.verdict for r in decision.reports if not r.exempt}
    if Verdict.NOT_STREAMABLE in verdicts:
        return "not-streamable"
    if Verdict.UNKNOWN in verdicts:
        return "unknown"
    if Verdict.STREAMABLE in verdicts:
        return "streamable"
    return "not-acr"


def _count(value: Any, default: int) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
    )


def pod_count(kind: str, obj: Mapping[str, Any]) -> int:
    """The pods a workload runs as declared: `spec.replicas` (default 1) for Deployments,
    StatefulSets, ReplicaSets and ReplicationControllers; the nodes a DaemonSet is scheduled
    on (`status.desiredNumberScheduled`, 0 before its controller has counted them); a Job's
    `spec.parallelism` and a CronJob's job template's (default 1, the pods of one run); 1 for
    a Pod. Values that are not counts (a tenant's manifest) count as the default."""
    spec = obj.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    if kind in ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"):
        return _count(spec.get("replicas"), 1)
    if kind == "DaemonSet":
        status = obj.get("status")
        status = status if isinstance(status, Mapping) else {}
        return _count(status.get("desiredNumberScheduled"), 0)
    if kind == "Job":
        return _count(spec.get("parallelism"), 1)
    if kind == "CronJob":
        template = spec.get("jobTemplate")
        job = template.get("spec") if isinstance(template, Mapping) else None
        return _count(job.get("parallelism"), 1) if isinstance(job, Mapping) else 1
    return 1


@dataclass(frozen=True, slots=True)
class Report:
    rows: tuple[Row, ...]
    images: Mapping[ImageRef, ImageVerdict]
    scope: tuple[str, ...]
    covered: Mapping[str, int]
    notes: tuple[str, ...]
    seconds: float
    pools_known: bool
    pools: tuple[PoolFit, ...] = ()  # every node pool with its streaming judgement
    registry_names: Mapping[str, str] = field(default_factory=dict)  # acrRegistryNames
    policy: Policy | None = None  # what judged the rows (the policy reports need its actions)
    finished: float = 0.0  # when the scan ended (seconds since the epoch)

    def totals(self) -> dict[str, int]:
        rows = self.rows
        counts = Counter(r.status for r in rows)
        return {
            "workloads": len(rows),
            "namespaces": len({r.namespace for r in rows}),
            **{status: counts.get(status, 0) for status in STATUSES},
            "digestPinned": sum(r.digest_pinned for r in rows),
            "poolsCannotStream": sum(r.pools_cannot_stream for r in rows),
            "poolsMayNotStream": sum(r.pools_may_not_stream for r in rows),
            "willStream": sum(r.will_stream for r in rows),
        }

    def image_totals(self) -> dict[str, int]:
        counts = Counter(v.verdict.value for v in self.images.values())
        return {v.value: counts.get(v.value, 0) for v in Verdict if v is not Verdict.NOT_ACR}

    def by_namespace(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for row in self.rows:
            out.setdefault(row.namespace, Counter())[row.status] += 1
        return dict(sorted(out.items()))


def _request(obj: ClusterObject) -> AdmissionRequest:
    return judging_request(
        obj.kind, obj.namespace, obj.name, obj.obj, source="scan", user="streamgate-scan"
    )


async def scan(
    snapshot: Snapshot,
    admission: Admission,
    verdicts: ScanVerdicts,
    *,
    progress: Progress | None = None,
) -> Report:
    """Judge every object of `snapshot` with `admission` (whose verdict source is `verdicts`
    and whose placement is the snapshot's)."""
    progress = progress or Progress(enabled=False)
    started = time.monotonic()
    policy = admission.policy()
    wanted: set[ImageRef] = set()
    for obj in snapshot.objects:
        try:
            wl = workload(GROUPS[obj.kind], obj.kind, obj.obj)
        except WorkloadError:
            continue
        if wl is not None:
            wanted.update(plan(wl, policy).to_check)
    images = await verdicts.prefetch(
        wanted, lambda done, total: progress.update("looking up images", done, total)
    )
    rows: list[Row] = []
    total = len(snapshot.objects)
    for index, obj in enumerate(snapshot.objects):
        progress.update("judging workloads", index, total)
        mode = admission.mode_for(obj.namespace, policy).value
        pods = pod_count(obj.kind, obj.obj)
        try:
            decision, wl = await admission.decide(_request(obj))
        except WorkloadError as err:
            rows.append(
                Row(
                    obj.namespace,
                    obj.kind,
                    obj.name,
                    mode,
                    "error",
                    None,
                    error=str(err),
                    pods=pods,
                    uid=obj.uid,
                )
            )
            continue
        placement, secrets = UNKNOWN_PLACEMENT, False
        if wl is not None and not decision.skipped:
            placement = snapshot.placement.place(wl.pod_spec)
            secrets = bool(wl.pod_spec.get("imagePullSecrets"))
        status = status_of(decision)
        rows.append(
            Row(
                obj.namespace,
                obj.kind,
                obj.name,
                mode,
                status,
                decision,
                placement,
                None,
                secrets,
                pods,
                obj.uid,
            )
        )
    progress.update("judging workloads", total, total)
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    rows.sort(key=lambda r: (r.namespace, order.get(r.kind, 99), r.name))
    return Report(
        rows=tuple(rows),
        images=images,
        scope=snapshot.scope,
        covered=snapshot.covered,
        notes=snapshot.notes,
        seconds=time.monotonic() - started,
        pools_known=not isinstance(snapshot.placement, _Unknown),
        pools=_pool_status(snapshot.placement),
        registry_names=dict(policy.acr_registry_names),
        policy=policy,
        finished=time.time(),
    )


def _pool_status(placement: PlacementSource) -> tuple[PoolFit, ...]:
    return placement.pool_status() if isinstance(placement, PlacementIndex) else ()


# ---- output -------------------------------------------------------------------------------

_LABELS = {
    "willStream": "will stream (streamable, by tag, on streaming pools)",
    "streamable": "streamable",
    "not-streamable": "not streamable",
    "unknown": "unknown (could not be checked)",
    "not-acr": "no ACR image",
    "skipped": "skipped (exempt or mode off)",
    "error": "errors",
    "digestPinned": "digest-pinned",
    "poolsCannotStream": "on pools that can't stream",
    "poolsMayNotStream": "may land on pools that can't stream",
}
_HEADER = ("NAMESPACE", "KIND", "NAME", "MODE", "VERDICT", "IMAGES", "PINNED", "POOLS", "NOTES")


def _cells(row: Row) -> tuple[str, ...]:
    return (
        row.namespace,
        row.kind,
        row.name,
        row.mode,
        row.status,
        row.images_text,
        "yes" if row.digest_pinned else "-",
        row.pools_text,
        row.note or "-",
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _problems(row: Row) -> list[str]:
    problems = row.decision.problems if row.decision else ()
    shown = [p for p in problems if p.severity is not Severity.RECORD] or list(problems)
    return [f"{p.severity.value}: {p.message}" for p in shown]


def _scope_text(report: Report) -> str:
    return "namespaces " + ", ".join(report.scope) if report.scope else "all namespaces"


def _covered_text(report: Report) -> str:
    if not report.covered:
        return ""
    parts = [_n(n, kind) for kind, n in sorted(report.covered.items())]
    return "left out, judged through their controllers: " + ", ".join(parts)


def to_table(report: Report) -> str:
    lines: list[str] = []
    if report.rows:
        lines.extend(_align([_HEADER, *(_cells(r) for r in report.rows)]))
    else:
        lines.append(f"no workloads found in {_scope_text(report)}")
    detailed = [(r, _problems(r)) for r in report.rows if not r.error and _problems(r)]
    if detailed:
        lines += ["", "Problems:"]
        for row, problems in detailed:
            lines.append(f"  {row.kind} {row.namespace}/{row.name}")
            lines.extend(f"    {p}" for p in problems)
    by_ns = report.by_namespace()
    if len(by_ns) > 1:
        lines += ["", "By namespace:"]
        head = ("  NAMESPACE", *(s.upper() for s in STATUSES))
        table = [head]
        for ns, counts in by_ns.items():
            table.append((f"  {ns}", *(str(counts.get(s, 0)) for s in STATUSES)))
        lines.extend(_align(table))
    totals = report.totals()
    lines += [
        "",
        f"Totals: {_n(totals['workloads'], 'workload')} in "
        f"{_n(totals['namespaces'], 'namespace')} ({_scope_text(report)})",
    ]
    width = max(len(v) for v in _LABELS.values())
    for key, label in _LABELS.items():
        lines.append(f"  {label.ljust(width)}  {totals[key]}")
    images = report.image_totals()
    lines.append(
        f"Images: {_n(len(report.images), 'distinct ACR image')}: "
        + ", ".join(f"{n} {verdict}" for verdict, n in images.items())
    )
    if not report.pools_known:
        lines.append("Node pools: unknown (nodes not readable)")
    covered = _covered_text(report)
    if covered:
        lines.append(covered[0].upper() + covered[1:])
    lines.extend(f"Note: {note}" for note in report.notes)
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    totals = report.totals()
    lines = [
        "# streamgate scan",
        "",
        f"{_n(totals['workloads'], 'workload')} in {_n(totals['namespaces'], 'namespace')} "
        f"({_scope_text(report)}), {_n(len(report.images), 'distinct ACR image')}.",
        "",
        "| | workloads |",
        "|---|---:|",
    ]
    lines.extend(f"| {label} | {totals[key]} |" for key, label in _LABELS.items())
    lines += ["", "| image verdict | images |", "|---|---:|"]
    lines.extend(f"| {verdict} | {n} |" for verdict, n in report.image_totals().items())
    namespaces: dict[str, list[Row]] = {}
    for row in report.rows:
        namespaces.setdefault(row.namespace, []).append(row)
    for ns, rows in namespaces.items():
        lines += [
            "",
            f"## {ns}",
            "",
            "| kind | name | mode | verdict | images | pinned | pools | notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            cells = _cells(row)[1:]
            lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    detailed = [(r, _problems(r)) for r in report.rows if not r.error and _problems(r)]
    if detailed:
        lines += ["", "## Problems", ""]
        for row, problems in detailed:
            lines.append(f"- **{row.kind} {row.namespace}/{row.name}**")
            lines.extend(f"  - {_md(p)}" for p in problems)
    extra = [c for c in (_covered_text(report), *report.notes) if c]
    if not report.pools_known:
        extra.append("node pools unknown (nodes not readable)")
    if extra:
        lines += [""] + [f"_{_md(e)}_  " for e in extra]
    return "\n".join(lines) + "\n"


def _row_json(row: Row) -> dict[str, Any]:
    d = row.decision
    p = row.placement
    return {
        "namespace": row.namespace,
        "kind": row.kind,
        "name": row.name,
        "mode": row.mode,
        "verdict": row.status,
        "error": row.error,
        "skipped": d.skipped if d else None,
        "streaming": d.annotations.get(ANNOTATION_STREAMING) if d else None,
        "digestPinned": row.digest_pinned,
        "pools": {
            "known": p.known,
            "total": len(p.pools),
            "streaming": [f.name for f in p.streaming_pools],
            "notStreaming": [f.name for f in p.non_streaming],
        }
        if row.uses_acr
        else None,
        "images": [
            {
                "container": r.container.label,
                "image": r.container.image,
                "verdict": r.verdict.verdict.value,
                "reason": r.verdict.reason,
                "digestPinned": bool(r.ref and r.ref.digest_pinned),
                "exempt": r.exempt,
            }
            for r in (d.reports if d else ())
        ],
        "problems": [
            {"rule": q.rule, "severity": q.severity.value, "message": q.message}
            for q in (d.problems if d else ())
        ],
    }


def to_json(report: Report) -> str:
    out = {
        "scope": list(report.scope) or "all",
        "seconds": round(report.seconds, 3),
        "totals": report.totals(),
        "imageTotals": report.image_totals(),
        "namespaces": {ns: dict(c) for ns, c in report.by_namespace().items()},
        "workloads": [_row_json(r) for r in report.rows],
        "images": [
            {
                "image": ref.raw,
                "verdict": v.verdict.value,
                "reason": v.reason,
                "digest": v.digest,
                "artifact": v.artifact_digest,
            }
            for ref, v in sorted(report.images.items(), key=lambda kv: kv[0].raw)
        ],
        "leftOut": dict(report.covered),
        "poolsKnown": report.pools_known,
        "notes": list(report.notes),
    }
    return json.dumps(out, indent=2)


def to_html(report: Report) -> str:
    """One self-contained HTML page (app/cli/htmlreport.py)."""
    from app.cli.htmlreport import render

    return render(report)


def report_results(report: Report) -> list[RuleResult]:
    """Each row's four policy-report results (app/core/reports.py), stamped with the scan's
    end."""
    policy = report.policy or parse_policy({})
    stamp = int(report.finished or time.time())
    out: list[RuleResult] = []
    for row in report.rows:
        subject = Subject(row.kind, row.namespace, row.name, row.uid)
        out.extend(
            workload_results(subject, row.decision, policy, timestamp=stamp, error=row.error)
        )
    return out


def _report_yaml(report: Report, api: str) -> str:
    docs = reports(report_results(report), api=api)
    if not docs:
        return ""
    return yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True, width=1000)


def to_policyreport(report: Report) -> str:
    """wgpolicyk8s.io/v1alpha2 PolicyReports, one per namespace, as multi-document YAML for
    `kubectl apply -f -`."""
    return _report_yaml(report, WGPOLICY)


def to_openreports(report: Report) -> str:
    """The same results as openreports.io/v1alpha1 Reports."""
    return _report_yaml(report, OPENREPORTS)


RENDERERS: dict[str, Callable[[Report], str]] = {
    "table": to_table,
    "json": to_json,
    "markdown": to_markdown,
    "html": to_html,
    "policyreport": to_policyreport,
    "openreports": to_openreports,
}
REPORT_OUTPUTS = ("policyreport", "openreports")  # Kubernetes objects, not text to read


def kube_api(kubeconfig: str | None, context: str | None = None) -> Any:
    """An ApiClient: `in-cluster` for the pod's service account, a path, or (None) $KUBECONFIG
    (several files joined by ':', as kubectl reads them) or ~/.kube/config; `context` picks a
    context as `kubectl --context` does. Raises `ScanError` when none can be loaded."""
    from app.cluster.nodes import api_client_from_config

    if kubeconfig == "in-cluster":
        target = None
    else:
        target = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        return api_client_from_config(target, context=context)
    except Exception as err:  # the client raises ConfigException, OSError, ...
        where = target or "the in-cluster service account"
        why = " ".join(str(err).split())[:200]
        raise ScanError(f"cannot load a kubeconfig from {where}: {why}") from err
