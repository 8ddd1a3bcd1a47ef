"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Every candidate calls `step()` every `retry_seconds`:

- no Lease yet: create it holding it (a 409 means another candidate was first);
- held by us: renew (`renewTime`), a replace conditioned on the resourceVersion we read;
- held by another: take it over only when its record has not changed for `lease_seconds` as
  this process observed it (its own monotonic clock: no trust in other machines' clocks),
  again conditioned on the resourceVersion, so of two candidates that both saw it expire only
  one wins (the other gets 409 Conflict).

`is_leader()` is true only while the last successful renewal is younger than
`renew_deadline_seconds` (< `lease_seconds`): a leader that can't reach the API stops acting
before anyone else may take over. `release()` (on a graceful stop) empties the holder so a
successor need not wait for the lease to run out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)


def _micro_time(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        renew_deadline_seconds: float = 10.0,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not renew_deadline_seconds < lease_seconds:
            raise ValueError("the renew deadline must be shorter than the lease")
        self._api: Any = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._wall = wall
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self.holder = ""  # who holds it, as last read
        self.transitions = 0

    def is_leader(self) -> bool:
        renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self.renew_deadline

    def _body(self, spec: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    def _spec(self, *, acquired: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": acquired,
            "renewTime": _micro_time(self._wall()),
            "leaseTransitions": transitions,
        }

    def step(self) -> bool:
        """One try to acquire or renew; returns `is_leader()` afterwards. Never raises for
        API failures (they are logged; leadership lapses at the renew deadline)."""
        try:
            self._step()
        except ApiException as err:
            if err.status != 409:
                logger.warning(
                    "lease %s/%s: HTTP %s %s", self.namespace, self.name, err.status, err.reason
                )
        except Exception as err:  # the API unreachable: keep trying
            logger.warning(
                "lease %s/%s: %s: %s", self.namespace, self.name, type(err).__name__, err
            )
        return self.is_leader()

    def _step(self) -> None:
        now = self._clock()
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=(5, 10)
            ).to_dict()
        except ApiException as err:
            if err.status != 404:
                raise
            stamp = _micro_time(self._wall())
            self._api.create_namespaced_lease(
                self.namespace,
                self._body(self._spec(acquired=stamp, transitions=0), None),
                _request_timeout=(5, 10),
            )
            self._won(now, "created")
            return
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        holder = spec.get("holder_identity") or ""
        record = (holder, spec.get("renew_time"), meta.get("resource_version"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self.holder = holder
        duration = spec.get("lease_duration_seconds") or self.lease_seconds
        transitions = int(spec.get("lease_transitions") or 0)
        ours = holder == self.identity
        if holder and not ours and now - self._observed_at < duration:
            self._renewed_at = None  # someone else leads
            return
        acquire = spec.get("acquire_time")
        acquired = (
            _micro_time(acquire.timestamp())
            if ours and isinstance(acquire, datetime)
            else _micro_time(self._wall())
        )
        self._api.replace_namespaced_lease(
            self.name,
            self.namespace,
            self._body(
                self._spec(acquired=acquired, transitions=transitions if ours else transitions + 1),
                str(meta.get("resource_version") or ""),
            ),
            _request_timeout=(5, 10),
        )
        self._won(now, "renewed" if ours else f"taken over from {holder or 'nobody'}")

    def _won(self, now: float, how: str) -> None:
        if not self.is_leader():
            logger.info("lease %s/%s: %s leads (%s)", self.namespace, self.name, self.identity, how)
            self.transitions += 1
        self._renewed_at = now
        self.holder = self.identity

    def release(self) -> None:
        """Gives the lease up (graceful stop): the holder is emptied, the next candidate takes
        it at its next step."""
        if not self.is_leader():
            return
        self._renewed_at = None
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=(5, 10)
            ).to_dict()
            spec = lease.get("spec") or {}
            if (spec.get("holder_identity") or "") != self.identity:
                return
            body = self._body(
                {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "renewTime": _micro_time(self._wall()),
                    "leaseTransitions": int(spec.get("lease_transitions") or 0),
                },
                str((lease.get("metadata") or {}).get("resource_version") or ""),
            )
            self._api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=(5, 10)
            )
            logger.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)
        except Exception as err:  # best effort: the lease runs out anyway
            logger.warning("lease %s/%s: release failed: %s", self.namespace, self.name, err)
