"""The workloads of the cluster, watched in the background and kept small, for the reporter.

`WorkloadWatcher` runs one `Reflector` (list + watch, in a daemon thread) per judged kind:
Deployments, StatefulSets, DaemonSets, CronJobs, Jobs, ReplicaSets, ReplicationControllers
and Pods, cluster-wide. Memory is taken care of as for the node inventory: an object is cut
down on arrival to what judging reads (`trim`: name, namespace, uid, the exempt annotation,
and of its pod spec the containers' names and images and the scheduling fields) and the API's
dict is dropped; objects whose controller is one of those kinds (a Deployment's ReplicaSets,
their Pods) are not kept at all: they are judged through the controller, as `scan` does.

Each change marks its namespace dirty; `take_dirty()` hands the reporter the namespaces to
judge again (a list replaces a kind whole and marks every namespace that had or has one).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from app.cluster.reflector import Reflector, ReflectorSettings, start_threads, stop_threads
from app.core.policy import EXEMPT_ANNOTATION
from app.core.workloads import (
    CONTAINER_FIELDS,
    GROUPS,
    JUDGED_OWNERS,
    SCHEDULING_FIELDS,
    WorkloadError,
    workload,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stored:
    """One workload as the reporter keeps it: `obj` trimmed (see `trim`), or `error` when its
    kind's pod spec is missing (it is reported as an error)."""

    kind: str
    namespace: str
    name: str
    uid: str
    obj: Mapping[str, Any]
    error: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


def _annotations(meta: Any) -> dict[str, Any]:
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    if isinstance(ann, dict) and EXEMPT_ANNOTATION in ann:
        return {EXEMPT_ANNOTATION: ann[EXEMPT_ANNOTATION]}
    return {}


def _pod_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {f: spec[f] for f in SCHEDULING_FIELDS if f in spec}
    for field in CONTAINER_FIELDS:
        items = spec.get(field)
        if isinstance(items, list):
            out[field] = [
                {"name": c.get("name"), "image": c.get("image")} if isinstance(c, dict) else c
                for c in items
            ]
    return out


def _controller(meta: Mapping[str, Any]) -> str | None:
    refs = meta.get("ownerReferences")
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, dict) and ref.get("controller") is True:
            kind = ref.get("kind")
            return kind if isinstance(kind, str) else None
    return None


def trim(kind: str, obj: Mapping[str, Any]) -> Stored | None:
    """What the reporter keeps of one API object; None for an object judged through its
    controller, or one without a name."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    controller = _controller(meta)
    if controller in JUDGED_OWNERS:
        return None
    uid = str(meta.get("uid") or "")
    small_meta: dict[str, Any] = {"name": name, "namespace": namespace}
    annotations = _annotations(meta)
    if annotations:
        small_meta["annotations"] = annotations
    if controller is not None:
        small_meta["ownerReferences"] = [{"kind": controller, "controller": True}]
    try:
        wl = workload(GROUPS[kind], kind, obj)
    except WorkloadError as err:
        return Stored(kind, namespace, name, uid, {"metadata": small_meta}, str(err))
    assert wl is not None  # every kind watched here is judged
    pod_spec = _pod_spec(wl.pod_spec)
    small: dict[str, Any] = {"metadata": small_meta}
    if len(wl.spec_path) == 1:  # a Pod
        small["spec"] = pod_spec
        return Stored(kind, namespace, name, uid, small)
    template: dict[str, Any] = {"spec": pod_spec}
    template_annotations = _annotations({"annotations": wl.template_annotations()})
    if template_annotations:
        template["metadata"] = {"annotations": template_annotations}
    node = small
    for part in wl.spec_path[:-2]:
        node = node.setdefault(part, {})
    node["template"] = template
    return Stored(kind, namespace, name, uid, small)


class WorkloadStore:
    """Trimmed workloads by namespace; the namespaces changed since the last `take_dirty`."""

    def __init__(
        self, on_change: Callable[[], None] = lambda: None, namespaces: Iterable[str] = ()
    ) -> None:
        self._only = frozenset(namespaces)  # empty: every namespace
        self._lock = threading.Lock()
        self._by_ns: dict[str, dict[tuple[str, str, str], Stored]] = {}
        self._dirty: set[str] = set()
        self._on_change = on_change
        self.events = 0

    def _trim(self, kind: str, obj: Mapping[str, Any]) -> Stored | None:
        stored = trim(kind, obj)
        if stored is None or (self._only and stored.namespace not in self._only):
            return None
        return stored

    def replace(self, kind: str, items: list[Mapping[str, Any]]) -> None:
        kept = [s for s in (self._trim(kind, item) for item in items) if s is not None]
        with self._lock:
            for ns, entries in self._by_ns.items():
                stale = [k for k in entries if k[0] == kind]
                for k in stale:
                    del entries[k]
                if stale:
                    self._dirty.add(ns)
            for s in kept:
                self._by_ns.setdefault(s.namespace, {})[s.key] = s
                self._dirty.add(s.namespace)
            self._by_ns = {ns: e for ns, e in self._by_ns.items() if e}
        self._on_change()

    def event(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        stored = self._trim(kind, obj)
        if stored is None:
            return
        with self._lock:
            self.events += 1
            entries = self._by_ns.setdefault(stored.namespace, {})
            if event == "DELETED":
                if entries.pop(stored.key, None) is None:
                    return
                if not entries:
                    del self._by_ns[stored.namespace]
            else:
                if entries.get(stored.key) == stored:
                    return  # a status change: nothing judging reads
                entries[stored.key] = stored
            self._dirty.add(stored.namespace)
        self._on_change()

    def take_dirty(self) -> set[str]:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        return dirty

    def mark(self, ns: str) -> None:
        with self._lock:
            self._dirty.add(ns)

    def mark_all(self) -> None:
        with self._lock:
            self._dirty |= set(self._by_ns)

    def namespace(self, ns: str) -> list[Stored]:
        with self._lock:
            return list(self._by_ns.get(ns, {}).values())

    def namespaces(self) -> list[str]:
        with self._lock:
            return sorted(self._by_ns)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(e) for e in self._by_ns.values())


def _lists(api_client: Any) -> dict[str, Callable[..., Any]]:
    core, apps, batch = (
        client.CoreV1Api(api_client),
        client.AppsV1Api(api_client),
        client.BatchV1Api(api_client),
    )
    return {
        "Deployment": apps.list_deployment_for_all_namespaces,
        "StatefulSet": apps.list_stateful_set_for_all_namespaces,
        "DaemonSet": apps.list_daemon_set_for_all_namespaces,
        "CronJob": batch.list_cron_job_for_all_namespaces,
        "Job": batch.list_job_for_all_namespaces,
        "ReplicaSet": apps.list_replica_set_for_all_namespaces,
        "ReplicationController": core.list_replication_controller_for_all_namespaces,
        "Pod": core.list_pod_for_all_namespaces,
    }


class WorkloadWatcher:
    """Every judged kind watched cluster-wide into a `WorkloadStore`. Start once, stop once."""

    def __init__(
        self,
        api_client: Any,
        *,
        settings: ReflectorSettings | None = None,
        on_change: Callable[[], None] = lambda: None,
        namespaces: Iterable[str] = (),
    ) -> None:
        self.store = WorkloadStore(on_change, namespaces)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reflectors = [
            Reflector(
                kind,
                list_fn,
                on_replace=functools.partial(self.store.replace, kind),
                on_event=functools.partial(self.store.event, kind),
                stop=self._stop,
                settings=settings,
            )
            for kind, list_fn in _lists(api_client).items()
        ]

    def start(self) -> None:
        if not self._threads:
            self._threads = start_threads(self._reflectors)

    def stop(self, timeout: float = 2.0) -> None:
        stop_threads(self._stop, self._reflectors, self._threads, timeout)

    @property
    def ready(self) -> bool:
        """True once every kind has been listed in full."""
        return all(r.synced for r in self._reflectors)

    @property
    def last_error(self) -> str:
        return "; ".join(f"{r.kind}: {r.last_error}" for r in self._reflectors if r.last_error)
