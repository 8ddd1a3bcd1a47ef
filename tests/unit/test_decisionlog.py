"""Decision lines written straight to the handler are the lines `logging` would write."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from app import logs
from app.decisionlog import DecisionLog
from app.evaluate import ContainerReport, Decision, Problem, Severity
from app.images import parse_image
from app.policy import Mode
from app.review import AdmissionRequest
from app.verdicts import ImageVerdict, Verdict
from app.workloads import Container


@pytest.fixture
def configured():
    """`logs.configure` into a buffer; the process's logging state restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logs._State.installed)
    buf = io.StringIO()

    def configure(fmt: str) -> io.StringIO:
        logs.configure("info", fmt, stream=buf)
        return buf

    yield configure
    for handler in root.handlers:
        handler.close()
    root.handlers[:], level, logs._State.installed = saved
    root.setLevel(level)


def request(name: str = "web-1\nFORGED line") -> AdmissionRequest:
    return AdmissionRequest(
        api_version="admission.k8s.io/v1",
        uid="u-1",
        group="",
        kind="Pod",
        sub_resource="",
        operation="CREATE",
        namespace="shop",
        name=name,
        obj={},
        old_obj=None,
        dry_run=False,
        user="system:serviceaccount:kube-system:replicaset-controller",
    )


DECISION = Decision(
    allowed=True,
    mode=Mode.WARN,
    problems=(Problem("notStreamable", Severity.WARN, "c1: not streamable", "c1"),),
    reports=(
        ContainerReport(
            Container("containers", 0, "c0", "r.azurecr.io/a:1"),
            parse_image("r.azurecr.io/a:1"),
            ImageVerdict(Verdict.STREAMABLE),
        ),
        ContainerReport(
            Container("containers", 1, "c1", "r.azurecr.io/b has space"),
            None,
            ImageVerdict(Verdict.UNKNOWN, "invalid image"),
        ),
    ),
)

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def both_ways(buf: io.StringIO, name: str = "web-1\nFORGED line") -> tuple[str, str]:
    """One line written directly, then the same decision through `logging` (a filter on the
    logger makes the direct path step aside)."""
    log = DecisionLog()
    log.write(request(name), "validate", DECISION, "warn", 0.00042)
    log.logger.addFilter(lambda record: True)
    try:
        assert logs.direct_handler(log.logger, logging.INFO) is None
        log.write(request(name), "validate", DECISION, "warn", 0.00042)
    finally:
        log.logger.filters.clear()
    logging.getLogger().handlers[0].flush()
    direct, through_logging = buf.getvalue().splitlines()
    return direct, through_logging


@pytest.mark.parametrize(
    "name", ["web-1\nFORGED line", "", "web-1", "has space", "tab\tx", "{outcome}%s", "ünï"]
)
def test_text_line_is_the_formatters_line(configured, name):
    direct, through_logging = both_ways(configured("text"), name)
    assert STAMP.match(direct) and STAMP.match(through_logging)
    assert STAMP.sub("", direct) == STAMP.sub("", through_logging)
    # two lines in all (both_ways unpacks them): a name cannot start a line of its own
    assert "FORGED" not in direct or "web-1\\nFORGED line" in direct
    assert "images=[" in direct and 'problems=["notStreamable"]' in direct
    assert direct.endswith(" ms=0.42")


def test_json_line_is_the_formatters_object(configured):
    direct, through_logging = (json.loads(x) for x in both_ways(configured("json")))
    assert direct.pop("time") and through_logging.pop("time")
    assert direct == through_logging
    assert direct["images"][1]["image"] == "r.azurecr.io/b has space"
    assert direct["problems"] == ["notStreamable"] and direct["ms"] == 0.42


def test_info_lines_are_buffered_and_warnings_flushed_at_once():
    buf = io.StringIO()
    handler = logs.BufferedStreamHandler(buf, interval=3600)
    handler.setFormatter(logs.TextFormatter())
    logger = logging.getLogger("test.buffered")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.warning("first")  # flushes what is pending too
        logger.info("second")
        assert "first" in buf.getvalue()
        # StringIO has no buffer to flush: the handler's pending mark is what tells
        assert handler._pending
        handler.flush()
        assert not handler._pending
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_pending_lines_reach_the_file_within_the_interval(tmp_path):
    path = tmp_path / "log"
    with path.open("w", buffering=1 << 16) as stream:
        handler = logs.BufferedStreamHandler(stream, interval=0.05)
        handler.setFormatter(logs.TextFormatter())
        logger = logging.getLogger("test.interval")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            logger.info("buffered line")
            assert path.read_text() == ""  # still in the stream's buffer
            for _ in range(100):
                if "buffered line" in path.read_text():
                    break
                time.sleep(0.01)
            assert "buffered line" in path.read_text()
        finally:
            logger.removeHandler(handler)
            handler.close()
