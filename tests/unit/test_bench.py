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
    for target in ("baseline", "baseline_h11", "validate", "mutate"):
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
        "<module> (app/__main__.py:5);AdmissionApp.__call__ (app/webhook/server.py:113);"
        "parse_review (app/webhook/review.py:90) 3\n"
        "<module> (app/__main__.py:5);AdmissionApp.__call__ (app/webhook/server.py:113);"
        "Admission.answer (app/webhook/admission.py:138);"
        "_log_decision (app/webhook/admission.py:242) 1\n"
        "Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 5\n"
    )
    prof = summarize_profile(raw)
    assert prof["samples"] == 4
    shares = dict(prof["inclusive"])
    assert shares["parse_review"] == 75.0
    assert shares["  decision log line (DecisionLog.write)"] == 25.0
    assert summary([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}


def test_added_latency_pools_every_round_and_gives_an_interval():
    """The API server's added p99 is the p99 of all creates of one side minus the other's,
    with a bootstrap interval around it; one round's p99 is nearly its maximum."""
    import random

    from bench.apiserver import _load, pooled_difference
    from bench.report import _apiserver

    rng = random.Random(3)
    # Rounds of 100 creates: "on" is "off" shifted by 4 ms, with one slow outlier per round.
    sides: dict[str, list[dict[str, object]]] = {"on": [], "off": [], "echo": []}
    for r in range(4):
        base = [rng.uniform(4.0, 6.0) for _ in range(100)]
        for key, shift in (("on", 4.0), ("off", 0.0), ("echo", 2.0)):
            lat = [v + shift for v in base]
            lat[r] = 40.0 + 10 * r
            sides[key].append(
                {
                    "p50_ms": 0,
                    "p99_ms": 0,
                    "rate": 1,
                    "annotated": 0,
                    "pods": 100,
                    "latencies_ms": lat,
                }
            )
    load = _load(1, sides)
    added = load["pooled_added_p99_ms"]
    assert 3.0 <= added["value"] <= 5.0, added
    assert added["low"] <= added["value"] <= added["high"], added
    assert load["on"]["creates"] == 400
    assert 1.5 <= load["pooled_beyond_noop_p50_ms"]["value"] <= 2.5, load
    same = pooled_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 50)
    assert same["value"] == 0 and same["low"] <= 0 <= same["high"]
    load["webhook_cpu_ms_per_create"] = {"on": 0.52, "echo": 0.41}
    text = "\n".join(_apiserver({"rounds": 4, "apiserver_version": "v1", "loads": [load]}))
    assert "400 creates per side" in text and "90 % interval" in text, text
    assert "streamgate 0.52 ms, the no-op webhook 0.41 ms" in text, text


def test_one_call_mode_is_a_side_of_its_own_and_judged_against_the_no_op():
    from bench.apiserver import _load
    from bench.report import _apiserver, _summary

    sides: dict[str, list[dict[str, object]]] = {k: [] for k in ("on", "off", "echo", "one")}
    for _ in range(2):
        for key, shift in (("on", 4.0), ("off", 0.0), ("echo", 2.0), ("one", 1.0)):
            lat = [5.0 + shift + i / 100 for i in range(100)]
            sides[key].append(
                {
                    "p50_ms": 0,
                    "p99_ms": 0,
                    "rate": 1,
                    "annotated": 0,
                    "pods": 100,
                    "latencies_ms": lat,
                }
            )
    load = _load(1, sides)
    assert 0.5 <= load["pooled_added_one_p50_ms"]["value"] <= 1.5, load
    assert -1.5 <= load["pooled_one_vs_noop_p50_ms"]["value"] <= -0.5, load
    load["webhook_cpu_ms_per_create"] = {"on": 0.5, "echo": 0.4, "one": 0.3}
    text = "\n".join(_apiserver({"rounds": 2, "apiserver_version": "v1", "loads": [load]}))
    assert "with streamgate in one-call mode (/admit only)" in text, text
    assert "streamgate in one-call mode 0.3 ms" in text, text
    rows = "\n".join(_summary({"apiserver": {"loads": [load]}}))
    assert (
        "one-call mode: streamgate's added p50" in rows
        and "| met |" in rows.split("one-call mode")[1].splitlines()[0]
    ), rows


def test_pythons_finds_this_interpreter_and_reports_every_version():
    import sys

    from bench.pythons import fastest, interpreter
    from bench.report import _pythons

    this = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = interpreter(this)
    assert found is not None
    assert interpreter("2.99") is None
    versions = {
        "3.11": {
            "python": "3.11.7",
            "rps": {"median": 100.0, "min": 90.0, "max": 110.0, "runs": [90.0, 100.0, 110.0]},
            "cpu_us_per_request": {"median": 200.0, "min": 190.0, "max": 210.0, "runs": [1, 2]},
            "half_load_p99_ms": {"median": 1.5, "min": 1.5, "max": 1.5, "runs": [1.5]},
        },
        "3.12": {
            "python": "3.12.1",
            "rps": {"median": 120.0, "min": 120.0, "max": 120.0, "runs": [120.0]},
            "cpu_us_per_request": {"median": 150.0, "min": 150.0, "max": 150.0, "runs": [150.0]},
            "half_load_p99_ms": {"median": 1.2, "min": 1.2, "max": 1.2, "runs": [1.2]},
        },
        "3.13": {"error": "pip install failed: no wheel"},
    }
    assert fastest(versions) == "3.12"
    text = "\n".join(_pythons({"versions": versions, "fastest": "3.12"}))
    assert "| 3.11.7 | 100 [90–110] | 200 [190–210] | 1.5 ms |" in text, text  # noqa: RUF001 (the report writes an en dash)
    assert "| 3.13 | not measured: pip install failed: no wheel | | |" in text, text
    assert "Least CPU per request: Python 3.12." in text
