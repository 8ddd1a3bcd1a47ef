"""Removing the chart's two webhook configurations, as `helm uninstall`'s pre-delete hook does.

Helm 3 deletes kinds it does not know (both webhook configurations among them) after the
Service and the Deployment, so for a moment the apiserver keeps calling a webhook that is
going away; with failurePolicy Fail every covered request in the cluster fails then. The hook
deletes both configurations first and waits until the apiserver no longer has them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")


class RemovalError(Exception):
    """A configuration could not be deleted (forbidden, apiserver unreachable, timed out)."""


@dataclass(frozen=True)
class Removed:
    kind: str
    name: str
    existed: bool

    def line(self) -> str:
        what = "deleted" if self.existed else "already gone:"
        return f"{what} {self.kind.lower()}/{self.name}"


def _calls(api: Any, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(api)
    if kind == "ValidatingWebhookConfiguration":
        return (
            admission.delete_validating_webhook_configuration,
            admission.read_validating_webhook_configuration,
        )
    return (
        admission.delete_mutating_webhook_configuration,
        admission.read_mutating_webhook_configuration,
    )


def _reason(err: Any) -> str:
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None) or type(err).__name__
    return f"HTTP {status} {reason}" if status else " ".join(str(err).split())[:200]


def remove_webhook_configurations(
    api: Any,
    names: list[str],
    *,
    timeout: float = 60.0,
    poll: float = 0.5,
) -> list[Removed]:
    """Delete the validating and mutating configuration of each name (a missing one is fine)
    and return once the apiserver reports all of them gone. Raises `RemovalError`."""
    from kubernetes.client.exceptions import ApiException

    removed: list[Removed] = []
    for name in names:
        for kind in KINDS:
            delete, _ = _calls(api, kind)
            try:
                delete(name, propagation_policy="Background", _request_timeout=timeout)
                removed.append(Removed(kind, name, existed=True))
            except ApiException as err:
                if err.status == 404:
                    removed.append(Removed(kind, name, existed=False))
                    continue
                raise RemovalError(f"cannot delete {kind.lower()}/{name}: {_reason(err)}") from err
            except Exception as err:  # urllib3 errors: unreachable apiserver, TLS
                raise RemovalError(f"cannot delete {kind.lower()}/{name}: {_reason(err)}") from err
    deadline = time.monotonic() + timeout
    for item in (r for r in removed if r.existed):
        _, read = _calls(api, item.kind)
        while True:
            try:
                read(item.name, _request_timeout=timeout)
            except ApiException as err:
                if err.status == 404:
                    break
                raise RemovalError(
                    f"cannot read {item.kind.lower()}/{item.name}: {_reason(err)}"
                ) from err
            if time.monotonic() > deadline:
                raise RemovalError(
                    f"{item.kind.lower()}/{item.name} still exists {timeout:g} s after its "
                    "deletion (a finalizer?)"
                )
            time.sleep(poll)
    return removed
