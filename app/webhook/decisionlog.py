"""One structured line per admission decision.

The line is the one `app.telemetry.logs`' formatters write for a record of the
`app.webhook.admission` logger with `extra={"fields": ...}` (text: `time LEVEL logger message
key=value...`; JSON: one object per line), so log pipelines see one shape. When the process logs
through `app.telemetry.logs.configure` and nothing else listens, the line is built here and
written straight to the handler, without a `LogRecord`: a decision line per admission through
`logging` cost more than judging the admission (docs/benchmarks.md). The part that depends only
on the decision (mode, outcome, images, problems) is rendered once per decision object, and
memoised decisions (`app.webhook.memo`) come back as the same object.

Skipped admissions are logged at debug level: they carry no news.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from app.core.evaluate import Decision
from app.core.remediation import STARTED
from app.telemetry.logs import direct_handler, escape_controls, json_time, text_time, text_value
from app.webhook.review import AdmissionRequest

_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class _Tail:
    """The decision's own fields, as values and as each format writes them."""

    fields: dict[str, Any]
    text: str
    json: dict[str, Any]


# A line names at most this many images, each at most this long (middle shortened): a
# tenant's Pod with hundreds of long image names must not write megabyte log lines (or make
# the cached tails hold them). The annotations on the object still list every container.
MAX_LOGGED_IMAGES = 20
MAX_LOGGED_CHARS = 256


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_LOGGED_CHARS:
        half = (MAX_LOGGED_CHARS - 1) // 2
        return value[:half] + "…" + value[-(MAX_LOGGED_CHARS - 1 - half) :]
    return value


def _small(decision: Decision) -> bool:
    """Whether the tails cache may keep this decision (it keeps the object alive)."""
    if len(decision.reports) > MAX_LOGGED_IMAGES:
        return False
    chars = sum(len(p.message) for p in decision.problems)
    chars += sum(len(r.container.image) for r in decision.reports if type(r.container.image) is str)
    return chars <= 16 * MAX_LOGGED_CHARS


def _tail(decision: Decision, outcome: str) -> _Tail:
    reports = decision.reports
    images: list[dict[str, Any]] = [
        {
            "container": _clip(r.container.label),
            "image": _clip(r.container.image),
            "verdict": r.verdict.verdict.value,
            "reason": _clip(r.verdict.reason),
            # remediation booked its conversion
            **({"conversion": "started"} if r.verdict.reason == STARTED else {}),
        }
        for r in reports[:MAX_LOGGED_IMAGES]
    ]
    if len(reports) > MAX_LOGGED_IMAGES:
        images.append({"more": len(reports) - MAX_LOGGED_IMAGES})
    fields: dict[str, Any] = {
        "mode": decision.mode.value,
        "decision": outcome,
        "skipped": decision.skipped,
        "images": images,
        "problems": [p.rule for p in decision.problems],
    }
    text = " ".join([f"{k}={text_value(v)}" for k, v in fields.items()])
    as_json = {
        k: orjson.Fragment(orjson.dumps(v)) if isinstance(v, list) else v for k, v in fields.items()
    }
    return _Tail(fields, text, as_json)


def _head(req: AdmissionRequest, endpoint: str) -> dict[str, Any]:
    return {
        "uid": req.uid,
        "endpoint": endpoint,
        "operation": req.operation,
        "kind": req.kind,
        "namespace": req.namespace,
        "name": req.name,
        "user": req.user,
        "dryRun": req.dry_run,
    }


def _text_head(req: AdmissionRequest, endpoint: str, outcome: str) -> str:
    """The message and the request's fields as `TextFormatter` writes them. When no value
    has a space or a character that is not printable (the usual case), each is written as it
    is, or `''` when empty, which is what `text_value` does for such strings."""
    uid, op, kind, ns, name, user = (
        req.uid,
        req.operation,
        req.kind,
        req.namespace,
        req.name,
        req.user,
    )
    message = f"admission {endpoint} {kind} {ns}/{name}: {outcome}"
    joined = uid + op + kind + ns + name + user
    if " " in joined or not joined.isprintable():
        values = " ".join([f"{k}={text_value(v)}" for k, v in _head(req, endpoint).items()])
        return f"{escape_controls(message)} {values}"
    q = "''"
    return (
        f"{message} uid={uid or q} endpoint={endpoint} operation={op or q} kind={kind or q} "
        f"namespace={ns or q} name={name or q} user={user or q} dryRun={req.dry_run}"
    )


class DecisionLog:
    """Writes decision lines for `logger` (default `app.webhook.admission`)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("app.webhook.admission")
        self._tails: dict[int, tuple[Decision, _Tail]] = {}

    def write(
        self,
        req: AdmissionRequest,
        endpoint: str,
        decision: Decision,
        outcome: str,
        took: float,
    ) -> None:
        level = logging.DEBUG if decision.skipped else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        tail = self._tail(decision, outcome)
        ms = round(took * 1000, 3)
        direct = direct_handler(self.logger, level)
        if direct is None:
            self.logger.log(
                level,
                "admission %s %s %s/%s: %s",
                endpoint,
                req.kind,
                req.namespace,
                req.name,
                outcome,
                extra={"fields": {**_head(req, endpoint), **tail.fields, "ms": ms}},
            )
            return
        handler, fmt = direct
        now = time.time()
        level_name = logging.getLevelName(level)
        if fmt == "json":
            message = f"admission {endpoint} {req.kind} {req.namespace}/{req.name}: {outcome}"
            line = orjson.dumps(
                {
                    "time": json_time(now),
                    "level": level_name.lower(),
                    "logger": self.logger.name,
                    "msg": message,
                    **_head(req, endpoint),
                    **tail.json,
                    "ms": ms,
                }
            ).decode()
        else:
            head = _text_head(req, endpoint, outcome)
            line = f"{text_time(now)} {level_name} {self.logger.name} {head} {tail.text} ms={ms}"
        handler.write_line(line, level)

    def _tail(self, decision: Decision, outcome: str) -> _Tail:
        kept = self._tails.get(id(decision))
        if kept is not None and kept[0] is decision and kept[1].fields["decision"] == outcome:
            return kept[1]
        tail = _tail(decision, outcome)
        if not _small(decision):
            return tail  # not kept: the cache would hold the whole (tenant-sized) decision
        if len(self._tails) >= _CACHE_SIZE:
            self._tails.clear()
        self._tails[id(decision)] = (decision, tail)
        return tail
