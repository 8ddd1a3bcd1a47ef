"""Writes policy report objects (app/core/reports.py) through the API, and only when they
changed.

`ReportWriter.resume()` lists the reports streamgate already wrote (label
`app.kubernetes.io/managed-by=streamgate`), so a replica taking over compares against what is
there instead of writing everything again. `apply()` creates, replaces (conditioned on the
resourceVersion it knows: a 409 re-reads and tries once more) or leaves alone a report whose
content is unchanged; `delete()` removes one no longer wanted. At most `writes_per_second`
requests are made (a simple pace between writes): a namespace of thousands of workloads is one
or a few objects, so this bounds the API traffic of a whole cluster's change.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from app.core.reports import KINDS, MANAGED_BY

logger = logging.getLogger(__name__)

PLURALS = {"PolicyReport": "policyreports", "Report": "reports"}
SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())


def content_key(doc: Mapping[str, Any]) -> str:
    """What decides whether a report must be written: everything but server-set metadata."""
    meta = doc.get("metadata") or {}
    wanted = {k: v for k, v in doc.items() if k != "metadata"}
    wanted["labels"] = meta.get("labels") or {}
    return json.dumps(wanted, sort_keys=True, separators=(",", ":"))


class ReportWriter:
    def __init__(
        self,
        api_client: Any,
        *,
        api: str,
        writes_per_second: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        group, version = api.split("/")
        self._group, self._version = group, version
        self._plural = PLURALS[KINDS[api]]
        self._api: Any = client.CustomObjectsApi(api_client)
        self._pace = 1.0 / writes_per_second if writes_per_second > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._last = -1e9
        self._lock = threading.Lock()
        # (namespace, name) -> (content_key, resourceVersion) of what is in the API
        self.known: dict[tuple[str, str], tuple[str, str]] = {}
        self.writes = 0
        self.deletes = 0
        self.conflicts = 0

    def _paced(self) -> None:
        with self._lock:
            wait = self._last + self._pace - self._clock()
            if wait > 0:
                self._sleep(wait)
            self._last = self._clock()

    def resume(self) -> None:
        """What streamgate's reports in the API hold now (on becoming the leader)."""
        found = self._api.list_cluster_custom_object(
            self._group,
            self._version,
            self._plural,
            label_selector=SELECTOR,
            _request_timeout=(5, 60),
        )
        known = {}
        for item in found.get("items") or ():
            meta = item.get("metadata") or {}
            key = (str(meta.get("namespace")), str(meta.get("name")))
            known[key] = (content_key(item), str(meta.get("resourceVersion") or ""))
        self.known = known
        logger.info("reports: %d %s found", len(known), self._plural)

    def names(self, namespace: str) -> set[str]:
        return {name for ns, name in self.known if ns == namespace}

    def namespaces(self) -> set[str]:
        return {ns for ns, _ in self.known}

    def apply(self, doc: Mapping[str, Any]) -> bool:
        """Writes `doc` unless the API already holds the same; True when it wrote."""
        meta = doc["metadata"]
        key = (meta["namespace"], meta["name"])
        wanted = content_key(doc)
        known = self.known.get(key)
        if known is not None and known[0] == wanted:
            return False
        for attempt in range(2):
            self._paced()
            try:
                if known is None:
                    out = self._api.create_namespaced_custom_object(
                        self._group,
                        self._version,
                        key[0],
                        self._plural,
                        dict(doc),
                        _request_timeout=(5, 60),
                    )
                else:
                    body = {**doc, "metadata": {**meta, "resourceVersion": known[1]}}
                    out = self._api.replace_namespaced_custom_object(
                        self._group,
                        self._version,
                        key[0],
                        self._plural,
                        key[1],
                        body,
                        _request_timeout=(5, 60),
                    )
            except ApiException as err:
                if err.status not in (404, 409) or attempt:
                    raise
                self.conflicts += 1
                known = self._read(key)  # someone else wrote (or deleted) it: start from there
                if known is not None and known[0] == wanted:
                    self.known[key] = known
                    return False
                continue
            self.writes += 1
            self.known[key] = (wanted, str(out["metadata"].get("resourceVersion") or ""))
            return True
        return False  # pragma: no cover (the loop returns or raises)

    def _read(self, key: tuple[str, str]) -> tuple[str, str] | None:
        try:
            item = self._api.get_namespaced_custom_object(
                self._group,
                self._version,
                key[0],
                self._plural,
                key[1],
                _request_timeout=(5, 30),
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return content_key(item), str(item["metadata"].get("resourceVersion") or "")

    def delete(self, namespace: str, name: str) -> None:
        self._paced()
        try:
            self._api.delete_namespaced_custom_object(
                self._group,
                self._version,
                namespace,
                self._plural,
                name,
                _request_timeout=(5, 30),
            )
        except ApiException as err:
            if err.status != 404:
                raise
        self.known.pop((namespace, name), None)
        self.deletes += 1
