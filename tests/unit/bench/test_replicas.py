"""The replicas section's pure parts: reading each replica's counters from its metrics, the
per-replica figures, the verdict and the report."""

from __future__ import annotations

from bench import replicas
from bench.report import _replicas, _summary

METRICS = """\
# HELP streamgate_registry_requests_total HTTP requests to registries
# TYPE streamgate_registry_requests_total counter
streamgate_registry_requests_total{registry="r:1",endpoint="manifests",status="200"} 40.0
streamgate_registry_requests_total{registry="r:1",endpoint="referrers",status="200"} 20.0
streamgate_registry_requests_total{registry="r:2",endpoint="manifests",status="200"} 7.0
streamgate_registry_requests_created{registry="r:1",endpoint="manifests",status="200"} 1.7e9
# TYPE streamgate_admission_requests_total counter
streamgate_admission_requests_total{endpoint="validate",decision="allow"} 12.0
streamgate_admission_requests_total{endpoint="mutate",decision="allow"} 3.0
"""


def test_counter_sum_adds_the_matching_total_series_only():
    assert replicas.counter_sum(METRICS, "streamgate_registry_requests") == 67.0
    assert replicas.counter_sum(METRICS, "streamgate_registry_requests", registry="r:1") == 60.0
    assert replicas.counter_sum(METRICS, "streamgate_admission_requests", endpoint="mutate") == 3.0
    assert replicas.counter_sum(METRICS, "streamgate_missing") == 0.0


def test_per_replica_figures_are_differences_between_scrapes():
    before = METRICS
    after = METRICS.replace("} 40.0", "} 100.0").replace("} 12.0", "} 32.0")
    got = replicas.per_replica([before, METRICS], [after, METRICS], "r:1", 30)
    assert got[0] == {"admissions": 20.0, "registry_requests": 60.0, "requests_per_image": 2.0}
    assert got[1] == {"admissions": 0.0, "registry_requests": 0.0, "requests_per_image": 0.0}


def test_the_verdict_names_the_bound_either_way():
    assert replicas.verdict(2.67).startswith("within the bound: at most 2.67")
    assert replicas.verdict(4.5).startswith("**over the bound**: 4.5")
    assert replicas.verdict(None) == "not measured"


def test_the_report_shows_each_replica_and_the_summary_row():
    rep = {"admissions": 16.0, "registry_requests": 80.0, "requests_per_image": 2.67}
    section = {
        "replicas": 3,
        "admissions": 50,
        "images": 30,
        "runs": [
            {
                "replicas": [rep, rep, {**rep, "requests_per_image": 4.1}],
                "mean_requests_per_image": 7.2,
                "max_requests_per_image": 9,
                "p50_ms": 1232.4,
                "p99_ms": 2167.0,
            }
        ],
        "by_kind": {"plain": {"min": 6, "max": 9, "mean": 8.4}},
        "worst_replica_per_image": 4.1,
        "within_bound": False,
    }
    text = "\n".join(_replicas(section))
    assert (
        "| 1 | 16 / 16 / 16 | 80 / 80 / 80 | 2.67 / 2.67 / 4.1 | 7.2 / 9 | 1232 / 2167 ms |" in text
    )
    assert "| plain | 6 | 8.4 | 9 |" in text and "**over the bound**: 4.1" in text
    rows = "\n".join(_summary({"replicas": section}))
    assert "worst replica 4.1 | **not met** |" in rows, rows
