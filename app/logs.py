"""Log set-up: plain text for people, one JSON object per line for log pipelines.

Structured fields travel in `extra={"fields": {...}}`; the text format appends them as
`key=value`, the JSON format merges them into the object. Nothing here ever sees a token:
the registry client keeps credentials out of every message it logs.

Names, namespaces and kinds in messages come from requests: the text format escapes control
characters (a newline in a name must not start a forged line). Wire-level loggers stay at
INFO even at --log-level debug: hpack writes encoded HTTP/2 header blocks, Authorization
included.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import orjson

FORMATS = ("text", "json")
WIRE_LOGGERS = ("hpack", "h2")
# str.translate table: C0 controls, DEL, and the Unicode line separators, as escapes.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85)} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As `logging.Formatter.formatTime`, with the date and time formatted once a second
        (one decision line per admission)."""
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without a traceback, control characters escaped."""
        return super().formatMessage(record).translate(_CONTROL)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join([f"{k}={_text(v)}" for k, v in _fields(record).items()])
        return f"{line} {extra}" if extra else line


def _text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return value if value and " " not in value and value.isprintable() else repr(value)
    if kind is bool or kind is int or kind is float or value is None:
        return str(value)
    return orjson.dumps(value).decode() if isinstance(value, list | dict) else str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: str = "info", fmt: str = "text") -> None:
    """Root logging for the process; uvicorn's own loggers follow the same format."""
    # Neither format prints the thread, the process or the caller's file and line: leave them
    # out of every record (the logging HOWTO's "Optimization"; a few µs per line, and the
    # webhook logs one line per admission).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers[:] = []
        uv.propagate = True
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    # httpx logs every request at info; the registry client reports what matters itself.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
