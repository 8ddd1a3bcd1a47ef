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

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without a traceback, control characters escaped."""
        return super().formatMessage(record).translate(_CONTROL)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={_text(v)}" for k, v in _fields(record).items())
        return f"{line} {extra}" if extra else line


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and value.isprintable() else repr(value)
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
