"""Fixtures for the reliability tests (docs/reliability.md).

`STREAMGATE_RELIABILITY=long` switches every test to its long run (`make reliability`);
the default is the short run `make test` does. Each test fills in a `Row` through the
`record` fixture; with `STREAMGATE_RELIABILITY_RESULTS=<file>` the rows are written there
with the test's outcome, and `hack/reliability-report.py` turns them into the table.

The local control plane and registries come from the same fixtures the e2e and integration
tests use (`cluster`, `kubectl`, `seeded_registry`, `registry_env`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import cluster, kubectl, seeded_registry
from tests.integration.conftest import registry_env
from tests.reliability.harness import Row, write_row

__all__ = ["cluster", "kubectl", "registry_env", "seeded_registry"]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[Row]:
    """The test's row in the reliability report: set `area`, `tried`, `cases`, `observed`."""
    row = Row(area=request.node.module.__name__.rsplit(".", 1)[-1], tried=request.node.name)
    row.nodeid = request.node.nodeid
    request.node.reliability_row = row
    row.seconds = time.monotonic()
    yield row


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    row: Row | None = getattr(item, "reliability_row", None)
    if row is None:
        return
    if report.when == "call" or (report.when == "setup" and report.failed):
        if hasattr(report, "wasxfail"):
            row.outcome = "xfailed" if report.skipped else "xpassed"
        else:
            row.outcome = "passed" if report.passed else "skipped" if report.skipped else "failed"
        if report.failed and not row.observed:
            row.observed = str(report.longrepr).strip().splitlines()[-1][:200]
        row.seconds = round(time.monotonic() - row.seconds, 1)
        write_row(row)
