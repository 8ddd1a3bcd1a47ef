"""`make bench` code runs: one short iteration of the warm path (real servers, real wrk),
written out as docs/benchmarks.md would be. The figures of a smoke run mean nothing."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from bench import run

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None and os.geteuid() != 0,
    reason="wrk is missing and cannot be installed without root",
)


@needs_wrk
def test_one_short_iteration_writes_the_report(tmp_path):
    out = tmp_path / "out"
    code = run.main(
        ["--smoke", "--sections", "warm", "--out", str(out), "--work", str(tmp_path / "work")]
    )
    assert code == 0, (tmp_path / "work").glob("logs/*")
    results = json.loads((out / "benchmarks.json").read_text())
    warm = results["sections"]["warm"]
    for target in ("baseline", "validate", "mutate"):
        sat = warm["saturation"][target]
        assert sat["rps"]["median"] > 0
        assert all(r["errors"] == 0 for r in sat["raw"]), sat["raw"]
    assert warm["answers"]["mutate:patched"] == len(warm["reviews"])
    text = (out / "benchmarks.md").read_text()
    assert "## Warm path" in text and "smoke run" in text


def test_profile_summary_and_figures(tmp_path):
    from bench.common import summary
    from bench.warm import summarize_profile

    raw = tmp_path / "raw.txt"
    raw.write_text(
        "<module> (app/__main__.py:5);AdmissionApp.__call__ (app/server.py:113);"
        "parse_review (app/review.py:90) 3\n"
        "<module> (app/__main__.py:5);AdmissionApp.__call__ (app/server.py:113);"
        "Admission.answer (app/admission.py:138);_log_decision (app/admission.py:242) 1\n"
        "Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 5\n"
    )
    prof = summarize_profile(raw)
    assert prof["samples"] == 4
    shares = dict(prof["inclusive"])
    assert shares["parse_review"] == 75.0
    assert shares["  decision log line (_log_decision)"] == 25.0
    assert summary([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}
