"""Remediation from admissions: which images the webhook may ask ACR to convert, and how often.

Off by default. With `remediation: convert` (for every judged namespace, or only those the
admin lists) an admission that finds an ACR image without a streaming artifact hands it to the
webhook's remediator (app/webhook/remediator.py), which starts the conversion in the
background. This module is the pure part: the settings, which verdicts call for a conversion,
and the limits (`Limiter`: per registry per minute and per hour in all), driven by the clock
the caller passes. docs/remediation.md says what it does and never does.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.messages import conversion_helps
from app.core.verdicts import ImageVerdict, Verdict

# The reason an admission's verdict carries once its conversion is asked for (the warning reads
# "<container>: <image>: conversion started; the next rollout streams").
STARTED = "conversion started; the next rollout streams"


class RemediationAction(StrEnum):
    NONE = "none"
    CONVERT = "convert"


class Remediation(BaseModel):
    """`remediation:` in the policy. `remediation: convert` is short for `{action: convert}`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    action: RemediationAction = RemediationAction.NONE
    # namespace (fnmatch pattern) -> action, overriding `action` there; the first match wins.
    namespaces: dict[str, RemediationAction] = Field(default_factory=dict)
    # Registries (host[:port], fnmatch) it may convert in; empty: every ACR registry the webhook
    # authenticates to (ACR's own domains and registries listed by their exact name).
    registries: tuple[str, ...] = ()
    per_registry_per_minute: int = Field(6, ge=1, le=600, alias="perRegistryPerMinute")
    per_hour: int = Field(60, ge=1, le=10_000, alias="perHour")
    # Conversions waiting to be started; a sighting past it is not queued (counted, logged).
    queue_size: int = Field(100, ge=1, le=10_000, alias="queueSize")
    # How often a started conversion's operation is read, and for how long at most.
    poll_seconds: float = Field(5.0, gt=0, le=300, alias="pollSeconds")
    follow_seconds: float = Field(1800.0, gt=0, le=86_400, alias="followSeconds")
    # A digest is not asked for again within this long of its last conversion (any outcome).
    retry_seconds: float = Field(3600.0, ge=0, le=7 * 86_400, alias="retrySeconds")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"action": data}
        return data

    def action_for(self, namespace: str) -> RemediationAction:
        if not self.namespaces:  # the usual case, asked on every admission
            return self.action
        for pattern, action in self.namespaces.items():
            if fnmatch.fnmatchcase(namespace, pattern):
                return action
        return self.action

    def applies(self, namespace: str) -> bool:
        return self.action_for(namespace) is RemediationAction.CONVERT

    @property
    def anywhere(self) -> bool:
        """Whether any namespace may convert (the remediator has work to expect)."""
        return self.action is RemediationAction.CONVERT or any(
            a is RemediationAction.CONVERT for a in self.namespaces.values()
        )

    def registry_allowed(self, registry: str) -> bool:
        if not self.registries:
            return True
        host = registry.lower()
        return any(fnmatch.fnmatchcase(host, p.lower()) for p in self.registries)


def wants_conversion(verdict: ImageVerdict) -> bool:
    """Whether a conversion would help: not streamable for want of a streaming artifact (none
    ever requested, or the last one failed in a way a retry may fix), its digest known."""
    return (
        verdict.verdict is Verdict.NOT_STREAMABLE
        and verdict.digest is not None
        and conversion_helps(verdict.reason)
    )


class Refusal(StrEnum):
    """Why a conversion that would help was not asked for."""

    RATE = "rate-limited"  # the registry's per-minute limit
    BUDGET = "budget"  # the hourly budget is spent
    QUEUE = "queue-full"
    FORBIDDEN = "forbidden"  # the registry refused a write (403) under this policy
    REGISTRY = "registry-not-allowed"  # not in `remediation.registries`, or no credentials


class Limiter:
    """Sliding windows: at most `per_minute` starts per registry in any 60 s and `per_hour` in
    all in any 3,600 s. `take` books a start when both allow it; `give_back` returns one that
    was not needed (another replica had started it)."""

    def __init__(self, *, per_minute: int, per_hour: int, max_registries: int = 1024) -> None:
        self.per_minute = per_minute
        self.per_hour = per_hour
        self._max_registries = max_registries
        self._hour: deque[float] = deque()
        self._minute: dict[str, deque[float]] = {}

    def take(self, registry: str, now: float) -> Refusal | None:
        while self._hour and now - self._hour[0] >= 3600.0:
            self._hour.popleft()
        if len(self._hour) >= self.per_hour:
            return Refusal.BUDGET
        window = self._minute.get(registry)
        if window is None:
            if len(self._minute) >= self._max_registries:
                self._prune(now)
            window = self._minute.setdefault(registry, deque())
        while window and now - window[0] >= 60.0:
            window.popleft()
        if len(window) >= self.per_minute:
            return Refusal.RATE
        window.append(now)
        self._hour.append(now)
        return None

    def give_back(self, registry: str) -> None:
        window = self._minute.get(registry)
        if window:
            window.pop()
        if self._hour:
            self._hour.pop()

    def _prune(self, now: float) -> None:
        for registry in [r for r, w in self._minute.items() if not w or now - w[-1] >= 60.0]:
            del self._minute[registry]
