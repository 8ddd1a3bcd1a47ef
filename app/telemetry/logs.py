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

import contextlib
import datetime as dt
import logging
import sys
import threading
import time
from typing import Any, TextIO

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


class _State:
    """Module state: the last formatted second, the handler `configure` installed."""

    second = -1
    stamp = ""
    installed: tuple[BufferedStreamHandler, str] | None = None


def text_time(created: float) -> str:
    """`logging.Formatter.formatTime` as the text format uses it (local time, milliseconds
    after a comma), with the date and time formatted once a second."""
    second = int(created)
    if second != _State.second:
        _State.stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        _State.second = second
    return f"{_State.stamp},{int((created - second) * 1000):03d}"


def json_time(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return text_time(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without a traceback, control characters escaped."""
        return super().formatMessage(record).translate(_CONTROL)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join([f"{k}={text_value(v)}" for k, v in _fields(record).items()])
        return f"{line} {extra}" if extra else line


def escape_controls(text: str) -> str:
    """Control characters and line separators as escapes: a name from a request must not
    start a forged line."""
    return text.translate(_CONTROL)


def text_value(value: Any) -> str:
    """How the text format writes one field's value."""
    kind = type(value)
    if kind is str:
        return value if value and " " not in value and value.isprintable() else repr(value)
    if kind is bool or kind is int or kind is float or value is None:
        return str(value)
    return orjson.dumps(value).decode() if isinstance(value, list | dict) else str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": json_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


FLUSH_SECONDS = 0.2


def stderr_stream() -> TextIO:
    """Standard error as a block-buffered text stream (Python's own `sys.stderr` is
    line-buffered: one write system call per line). When standard error is not a file
    (replaced by a test's capture, an embedding program), it is used as it is."""
    try:
        fileno = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return open(
        fileno,
        "w",
        buffering=1 << 16,
        encoding="utf-8",
        errors="backslashreplace",
        closefd=False,
    )


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A `StreamHandler` that leaves info and debug lines in the stream's buffer, flushed by a
    background thread every `interval` seconds; warnings and errors are flushed at once, and
    `logging.shutdown` (at exit) flushes the rest.

    The webhook writes a decision line per admission: flushing each one cost about 100 µs of
    the request (docs/benchmarks.md). Kubernetes' own components buffer the same way (klog
    flushes every 5 s); a process killed outright loses at most `interval` of info lines."""

    def __init__(self, stream: TextIO, interval: float = FLUSH_SECONDS) -> None:
        super().__init__(stream)
        self._pending = False
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="log-flush", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record), record.levelno)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str, levelno: int) -> None:
        """Write one formatted line, as `emit` would (for writers that format their own)."""
        with self.lock:  # type: ignore[union-attr]
            try:
                self._write(line, levelno)
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": line, "levelno": levelno}))

    def _write(self, line: str, levelno: int) -> None:
        self.stream.write(line + self.terminator)
        if levelno >= logging.WARNING:
            self.stream.flush()
        else:
            self._pending = True

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._pending = False
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        super().close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._pending:
                try:
                    self.flush()
                except Exception:  # a closed or broken stream: nothing to do but stop
                    return


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Root logging for the process (to standard error unless `stream` is given); uvicorn's
    own loggers follow the same format."""
    # Neither format prints the thread, the process or the caller's file and line: leave them
    # out of every record (the logging HOWTO's "Optimization"; a few µs per line, and the
    # webhook logs one line per admission).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = BufferedStreamHandler(stream or stderr_stream())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _State.installed = (handler, fmt)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BufferedStreamHandler):
            with contextlib.suppress(ValueError, OSError):  # its stream may be closed
                old.flush()
            old.close()
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


def direct_handler(
    logger: logging.Logger, levelno: int
) -> tuple[BufferedStreamHandler, str] | None:
    """The handler `configure` installed and its format, when a record from `logger` at
    `levelno` would reach that handler alone, through no filter: a writer that formats its own
    lines (app/webhook/decisionlog.py) may then write them straight to it. None otherwise (tests
    capturing logs, another handler added): log through `logging`."""
    installed = _State.installed
    if installed is None:
        return None
    handler = installed[0]
    root = logging.getLogger()
    node: logging.Logger | None = logger
    while node is not None and node is not root:
        if node.filters or node.handlers or not node.propagate:
            return None
        node = node.parent
    if root.filters or root.handlers != [handler] or handler.filters or levelno < handler.level:
        return None
    return installed
