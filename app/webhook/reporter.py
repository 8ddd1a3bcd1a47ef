"""The reporter: keeps one policy report per namespace in step with the cluster, off the
admission path.

    watcher = WorkloadWatcher(api)            # app/cluster/workloads.py: every judged kind
    reporter = Reporter(admission, watcher.store, writer, elector)
    await reporter.run()                      # until cancelled

Each `interval` the leader (app/cluster/lease.py; every replica without an elector) takes the
namespaces whose workloads changed since the last round (changes coalesce: a rollout of 50
Deployments in one namespace is one report write, and a namespace written less than
`min_write_interval` ago waits for the next round), judges their workloads with the same
`Admission` as the webhook (its registry caches, decision memo, node inventory and namespace
modes), builds the reports (app/core/reports.py) and writes those whose content changed
(app/cluster/policyreports.py). Every `resync_seconds` it judges every namespace again (node
pools, registry verdicts and namespace labels change without a workload changing), and a
policy reload does the same; unchanged reports cost no write.

A result that did not change keeps its first timestamp, so an unchanged namespace gives a
byte-identical report. A replica that becomes the leader lists what is in the API first and
judges everything: reports are keyed by name, so it replaces, never duplicates, and it deletes
the reports of namespaces with no workload left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.cluster.workloads import Stored, WorkloadStore
from app.core.images import ImageRef
from app.core.plan import plan
from app.core.policy import Policy
from app.core.reports import RuleResult, Subject, namespace_reports, workload_results
from app.core.workloads import GROUPS, WorkloadError, workload
from app.webhook.admission import Admission
from app.webhook.review import AdmissionRequest, judging_request

logger = logging.getLogger(__name__)

REPORTER_USER = "streamgate-reporter"


class Elector(Protocol):
    def step(self) -> bool: ...

    def is_leader(self) -> bool: ...

    def release(self) -> None: ...


class Writer(Protocol):
    writes: int
    deletes: int

    def resume(self) -> None: ...

    def names(self, namespace: str) -> set[str]: ...

    def namespaces(self) -> set[str]: ...

    def apply(self, doc: dict[str, Any]) -> bool: ...

    def delete(self, namespace: str, name: str) -> None: ...


@dataclass
class ReporterSettings:
    api: str = "wgpolicyk8s.io/v1alpha2"
    interval: float = 2.0  # seconds between rounds: changes within one coalesce
    resync_seconds: float = 300.0
    lookups_at_once: int = 4
    # A namespace written less than this long ago waits (stays marked): under steady churn
    # (a rollout, a mass delete) its reports are rewritten at most this often.
    min_write_interval: float = 10.0
    namespaces: tuple[str, ...] = ()  # only these (default: every namespace)


@dataclass
class ReporterState:
    rounds: int = 0
    judged: int = 0
    leader: bool = False
    last_round: float = 0.0
    errors: list[str] = field(default_factory=list)


def _request(stored: Stored) -> AdmissionRequest:
    return judging_request(
        stored.kind, stored.namespace, stored.name, stored.obj, source="report", user=REPORTER_USER
    )


class Reporter:
    def __init__(
        self,
        admission: Admission,
        store: WorkloadStore,
        writer: Writer,
        elector: Elector | None = None,
        *,
        settings: ReporterSettings | None = None,
        ready: Callable[[], bool] = lambda: True,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.admission = admission
        self.store = store
        self.writer = writer
        self.elector = elector
        self.settings = settings or ReporterSettings()
        self.ready = ready
        self._wall = wall
        self._clock = clock
        self._results: dict[tuple[str, str, str], tuple[RuleResult, ...]] = {}
        self._leading = False
        self._policy: Policy | None = None
        self._synced_at = -1e18
        self._said = ""
        self._written_at: dict[str, float] = {}
        self.state = ReporterState()

    # ---- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self.round()
                await asyncio.sleep(self.settings.interval)
        finally:
            if self.elector is not None:
                await asyncio.to_thread(self.elector.release)

    async def round(self) -> None:
        """One pass: leadership, then the namespaces that need it."""
        leader = True
        if self.elector is not None:
            leader = await asyncio.to_thread(self.elector.step)
        self.state.leader = leader
        if not leader:
            if self._leading:
                logger.info("reports: no longer the leader; stopped writing")
            self._leading = False
            self.store.take_dirty()  # a new leader judges everything anyway
            return
        if not self.ready():
            return  # before every kind is listed, a namespace would look empty
        namespaces = self.store.take_dirty()
        policy = self.admission.policy()
        now = self._clock()
        if (
            not self._leading
            or policy is not self._policy
            or now - self._synced_at >= self.settings.resync_seconds
        ):
            if not self._leading:
                try:
                    await asyncio.to_thread(self.writer.resume)
                except Exception as err:
                    self._cannot_resume(err)
                    self.store.mark_all()
                    return
                self._leading = True
                self._said = ""
            self._policy = policy
            self._synced_at = now
            existing = self.writer.namespaces()
            only = self.settings.namespaces
            namespaces |= set(self.store.namespaces()) | (
                existing & set(only) if only else existing
            )
        for ns in sorted(namespaces):
            if self.elector is not None and not self.elector.is_leader():
                return  # lost the lease mid-round: the next leader judges everything
            last = self._written_at.get(ns)
            if last is not None and now - last < self.settings.min_write_interval:
                self.store.mark(ns)  # written a moment ago: this change waits for the next
                continue
            try:
                if await self.sync_namespace(ns, policy):
                    self._written_at[ns] = self._clock()
            except Exception as err:
                logger.warning("reports: namespace %s not written: %s", ns, _short(err))
                self.state.errors = [*self.state.errors[-9:], f"{ns}: {_short(err)}"]
                self.store.mark(ns)  # try again next round
        self.state.rounds += 1
        self.state.last_round = self._wall()

    def _cannot_resume(self, err: BaseException) -> None:
        """The reports can't be listed: said once (not every round) until it changes."""
        why = _short(err)
        if getattr(err, "status", None) == 404:
            why = (
                f"the {self.settings.api} CRD is not installed (HTTP 404); install it "
                "(chart value reports.installCRDs, or the CRDs of Kyverno or Policy Reporter)"
            )
        if why != self._said:
            logger.warning("reports: cannot list the existing reports: %s; retrying", why)
            self._said = why
        self.state.errors = [*self.state.errors[-9:], why]

    # ---- one namespace ------------------------------------------------------------------------

    async def _prefetch(self, items: Iterable[Stored], policy: Policy) -> None:
        """Looks up every image of the namespace first (bounded), with the registry source's
        own deadline: the judging below then answers from the cache, as a warm webhook does."""
        refs: set[ImageRef] = set()
        for stored in items:
            if stored.error is not None:
                continue
            try:
                wl = workload(GROUPS[stored.kind], stored.kind, stored.obj)
            except WorkloadError:
                continue
            if wl is not None:
                refs.update(plan(wl, policy).to_check)
        source = self.admission.verdicts
        missing = [ref for ref in refs if source.cached(ref) is None]
        limit = asyncio.Semaphore(self.settings.lookups_at_once)

        async def one(ref: ImageRef) -> None:
            async with limit:
                await source.verdict(ref)

        await asyncio.gather(*(one(ref) for ref in missing))

    async def sync_namespace(self, ns: str, policy: Policy) -> int:
        """Judges the namespace's workloads and writes what changed; returns the number of
        writes and deletes made."""
        items = sorted(self.store.namespace(ns), key=lambda s: s.key)
        await self._prefetch(items, policy)
        stamp = int(self._wall())
        results: list[RuleResult] = []
        seen = set()
        for stored in items:
            subject = Subject(stored.kind, stored.namespace, stored.name, stored.uid)
            decision = None
            error = stored.error
            if error is None:
                try:
                    decision, _ = await self.admission.decide(_request(stored))
                except WorkloadError as err:
                    error = str(err)
            new = workload_results(subject, decision, policy, timestamp=stamp, error=error)
            old = self._results.get(stored.key)
            if old is not None and len(old) == len(new):
                new = tuple(o if o.same(n) else n for o, n in zip(old, new, strict=True))
            self._results[stored.key] = new
            seen.add(stored.key)
            results.extend(new)
            self.state.judged += 1
        for key in [k for k in self._results if k[1] == ns and k not in seen]:
            del self._results[key]  # deleted workloads
        docs = namespace_reports(ns, results, api=self.settings.api)
        wanted = {d["metadata"]["name"] for d in docs}
        changes = 0
        for doc in docs:
            if await asyncio.to_thread(self.writer.apply, doc):
                changes += 1
                logger.info(
                    "reports: wrote %s/%s (%d results)",
                    ns,
                    doc["metadata"]["name"],
                    len(doc["results"]),
                )
        for name in sorted(self.writer.names(ns) - wanted):
            await asyncio.to_thread(self.writer.delete, ns, name)
            changes += 1
            logger.info("reports: deleted %s/%s (no workload left for it)", ns, name)
        return changes


def _short(err: BaseException) -> str:
    status = getattr(err, "status", None)
    if isinstance(status, int):
        return f"HTTP {status} {getattr(err, 'reason', '')}".strip()
    return f"{type(err).__name__}: {str(err)[:200]}"
