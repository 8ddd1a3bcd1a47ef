"""Decision lines written straight to the handler are the lines `logging` would write."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time

import pytest

from app.core.evaluate import ContainerReport, Decision, Problem, Severity
from app.core.images import parse_image
from app.core.policy import Mode
from app.core.verdicts import ImageVerdict, Verdict
from app.core.workloads import Container
from app.telemetry import logs
from app.webhook.decisionlog import DecisionLog
from app.webhook.review import AdmissionRequest


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


@contextlib.contextmanager
def buffered_logger(path, interval: float):
    """A logger writing through a BufferedStreamHandler into a block-buffered file."""
    with path.open("w", buffering=1 << 16) as stream:
        handler = logs.BufferedStreamHandler(stream, interval=interval)
        handler.setFormatter(logs.TextFormatter())
        logger = logging.getLogger(f"test.buffered.{path.name}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            yield logger, handler
        finally:
            logger.removeHandler(handler)
            handler.close()


def test_info_lines_wait_and_warnings_are_written_at_once(tmp_path):
    path = tmp_path / "log"
    with buffered_logger(path, interval=3600) as (logger, handler):
        logger.info("first")
        assert path.read_text() == ""  # still in the stream's buffer
        logger.warning("second")  # written at once, with what was pending
        assert "first" in path.read_text() and "second" in path.read_text()
        logger.info("third")
        assert "third" not in path.read_text()
        handler.flush()  # what logging.shutdown does at exit
        assert "third" in path.read_text()


def test_pending_lines_reach_the_file_within_the_interval(tmp_path):
    path = tmp_path / "log"
    started = time.monotonic()  # the flusher first looks one interval after its start
    with buffered_logger(path, interval=0.5) as (logger, _):
        logger.info("buffered line")
        text = path.read_text()
        if time.monotonic() - started < 0.5:  # else a stalled machine let the flusher run
            assert text == ""  # still in the stream's buffer
        for _ in range(300):
            if "buffered line" in path.read_text():
                break
            time.sleep(0.01)
        assert "buffered line" in path.read_text()


def test_a_conversion_remediation_booked_is_a_field_of_its_image(configured):
    from app.core.remediation import STARTED

    buf = configured("json")
    booked = Decision(
        allowed=True,
        mode=Mode.WARN,
        problems=(Problem("notStreamable", Severity.WARN, f"c0: x: {STARTED}", "c0"),),
        reports=(
            ContainerReport(
                Container("containers", 0, "c0", "r.azurecr.io/a:1"),
                parse_image("r.azurecr.io/a:1"),
                ImageVerdict(Verdict.NOT_STREAMABLE, STARTED, digest="sha256:" + "1" * 64),
            ),
            DECISION.reports[0],
        ),
    )
    DecisionLog().write(request("web"), "validate", booked, "warn", 0.001)
    logging.getLogger().handlers[0].flush()
    images = json.loads(buf.getvalue().splitlines()[-1])["images"]
    assert images[0]["conversion"] == "started" and images[0]["reason"] == STARTED
    assert "conversion" not in images[1]
