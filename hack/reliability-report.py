#!/usr/bin/env python3
"""Regenerate the results table of docs/reliability.md from a reliability run.

    hack/reliability-report.py RESULTS.jsonl [--junit RUN.xml] [--doc docs/reliability.md]

RESULTS.jsonl holds one row per test, written by tests/reliability/conftest.py when
STREAMGATE_RELIABILITY_RESULTS is set (area, what was tried, cases, what was observed,
outcome, seconds). Tests outside tests/reliability that the run includes (the restricted Pod
Security test of tests/e2e/test_chart_install.py) come from the JUnit XML. Only the text
between the `<!-- results:begin -->` and `<!-- results:end -->` markers is replaced.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
AREAS = [
    "fuzz",
    "registry faults",
    "Kubernetes API faults",
    "cluster safety",
    "soak",
    "security",
]
# Tests outside tests/reliability that belong in the table: JUnit name -> (area, tried).
EXTERNAL = {
    "test_pods_admitted_under_pod_security_restricted": (
        "security",
        "restricted Pod Security Standard: the chart installed into a namespace labelled "
        "pod-security.kubernetes.io/enforce=restricted (tests/e2e/test_chart_install.py)",
        "both pods admitted and scheduled, no FailedCreate; control: a plain busybox pod is "
        "refused there",
    ),
}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(results: Path) -> list[dict[str, object]]:
    """One row per test: a test run again (to add or redo one) replaces its earlier row."""
    rows: dict[str, dict[str, object]] = {}
    for n, line in enumerate(results.read_text().splitlines()):
        if line.strip():
            row = json.loads(line)
            rows.pop(str(row.get("nodeid") or n), None)
            rows[str(row.get("nodeid") or n)] = row
    return list(rows.values())


def _external(junit: Path | None) -> list[dict[str, object]]:
    if junit is None or not junit.exists():
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        if name not in EXTERNAL:
            continue
        area, tried, observed = EXTERNAL[name]
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped") is not None
        outcome = "failed" if problem is not None else "skipped" if skipped else "passed"
        if problem is not None:
            observed = problem.get("message", "")[:200]
        out.append(
            {
                "area": area,
                "tried": tried,
                "cases": 1,
                "observed": observed,
                "outcome": outcome,
                "seconds": round(float(case.get("time", 0)), 1),
            }
        )
    return out


def table(rows: list[dict[str, object]]) -> str:
    order = {area: i for i, area in enumerate(AREAS)}
    rows = sorted(rows, key=lambda r: order.get(str(r["area"]), len(AREAS)))
    lines = [
        "| Area | What was tried | Cases | Outcome | s |",
        "|---|---|--:|---|--:|",
    ]
    for row in rows:
        outcome = str(row.get("outcome") or "not run")
        mark = {
            "passed": "pass",
            "failed": "**FAIL**",
            "skipped": "skipped",
            "xfailed": "**known problem** (xfail)",
            "xpassed": "fixed? (xpass)",
        }.get(outcome, outcome)
        lines.append(
            f"| {_cell(row['area'])} | {_cell(row['tried'])} | {int(row.get('cases') or 0):,} "
            f"| {mark}: {_cell(row.get('observed', ''))} | {row.get('seconds', '')} |"
        )
    return "\n".join(lines)


def header(rows: list[dict[str, object]]) -> str:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    passed = sum(1 for r in rows if r.get("outcome") == "passed")
    failed = sum(1 for r in rows if r.get("outcome") == "failed")
    total = sum(float(r.get("seconds") or 0) for r in rows)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Last `make reliability` run: {when}, commit `{commit}`, {os.cpu_count()} cores "
        f"({platform.machine()}), shared with other test runs; {len(rows)} tests, {passed} "
        f"passed, {failed} failed, {total / 60:.0f} minutes of test time."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--junit", type=Path)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    rows = _rows(args.results) + _external(args.junit)
    if not rows:
        print(f"reliability-report: no results in {args.results}", file=sys.stderr)
        return 1
    doc = args.doc.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"reliability-report: {args.doc} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    args.doc.write_text(f"{head}{BEGIN}\n{header(rows)}\n\n{table(rows)}\n{END}{tail}")
    print(f"reliability-report: {len(rows)} rows written to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
