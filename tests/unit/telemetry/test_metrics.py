from prometheus_client import generate_latest

from app.telemetry.metrics import Metrics


def text(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def test_counters_and_histograms_are_named_streamgate():
    m = Metrics()
    m.on_admission(
        endpoint="validate", kind="Pod", operation="CREATE", decision="warn", seconds=0.0007
    )
    m.on_verdict("streamable")
    m.on_request(registry="r.azurecr.io", endpoint="referrers", status="429", seconds=0.02)
    m.on_token(registry="r.azurecr.io", kind="exchange", outcome="ok")
    m.on_cache(cache="tags", event="hit")
    m.on_circuit(registry="r.azurecr.io", state="open")
    m.on_policy_reload("failed")
    m.on_bad_request(endpoint="mutate", code=413)
    out = text(m)
    assert (
        'streamgate_admission_requests_total{decision="warn",endpoint="validate",kind="Pod",'
        'operation="CREATE"} 1.0'
    ) in out
    assert 'streamgate_admission_duration_seconds_bucket{endpoint="validate",le="0.001"} 1.0' in out
    assert (
        'streamgate_admission_duration_seconds_bucket{endpoint="validate",le="0.0005"} 0.0' in out
    )
    assert (
        'streamgate_registry_requests_total{endpoint="referrers",registry="r.azurecr.io",'
        'status="429"} 1.0'
    ) in out
    assert 'streamgate_registry_circuit_open{registry="r.azurecr.io"} 1.0' in out
    assert 'streamgate_policy_reloads_total{result="failed"} 1.0' in out
    assert 'streamgate_bad_requests_total{code="413",endpoint="mutate"} 1.0' in out
    m.on_circuit(registry="r.azurecr.io", state="closed")
    assert 'streamgate_registry_circuit_open{registry="r.azurecr.io"} 0.0' in text(m)


def test_probes_are_read_at_scrape_time_and_never_break_a_scrape():
    m = Metrics()
    state = {"n": 1.0}
    m.watch("streamgate_test_gauge", "doc", ("k",), lambda: [({"k": "a"}, state["n"])])
    m.watch("streamgate_broken", "doc", (), lambda: 1 / 0)
    assert 'streamgate_test_gauge{k="a"} 1.0' in text(m)
    state["n"] = 7.0
    assert 'streamgate_test_gauge{k="a"} 7.0' in text(m)


def test_loop_metrics_expose_what_prometheus_client_would():
    """The lock-free admission-path metrics against prometheus_client's own, same updates."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from app.telemetry.metrics import ADMISSION_BUCKETS, LoopCounter, LoopHistogram

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = LoopCounter("t_events", "doc", ("a", "b"), registry=ours)
    histogram = LoopHistogram("t_seconds", "doc", ("e",), buckets=ADMISSION_BUCKETS, registry=ours)
    ref_counter = Counter("t_events", "doc", ["a", "b"], registry=theirs)
    ref_histogram = Histogram("t_seconds", "doc", ["e"], buckets=ADMISSION_BUCKETS, registry=theirs)
    for i, seconds in enumerate([0.0, 0.0005, 0.0007, 0.001, 0.004, 0.3, 7.0, 0.0002]):
        labels = ("x", "y") if i % 3 else ("x", "z")
        counter.inc(labels)
        ref_counter.labels(*labels).inc()
        endpoint = ("validate",) if i % 2 else ("mutate",)
        histogram.observe(endpoint, seconds)
        ref_histogram.labels(*endpoint).observe(seconds)

    def samples(registry: CollectorRegistry) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return sorted(line for line in lines if line and "_created" not in line)

    assert samples(ours) == samples(theirs)
    assert 't_seconds_bucket{e="validate",le="0.0005"} 2.0' in samples(ours)


def test_a_tenant_filling_the_registry_slots_cannot_hide_the_admins_registries():
    from app.core.policy import parse_policy
    from app.telemetry.metrics import MAX_REGISTRIES, Metrics

    policy = parse_policy({"acrRegistries": ["registry.contoso.com", "*.other.example"]})
    metrics = Metrics()
    metrics.named_registries = policy.names_registry
    for i in range(MAX_REGISTRIES + 10):
        metrics.on_request(
            registry=f"r{i}.azurecr.io", endpoint="manifest", status="200", seconds=0.01
        )
    metrics.on_request(
        registry="registry.contoso.com", endpoint="manifest", status="200", seconds=0.01
    )
    metrics.on_request(registry="x.other.example", endpoint="manifest", status="200", seconds=0.01)
    text = generate_latest(metrics.registry).decode()
    assert 'registry="registry.contoso.com"' in text
    assert 'registry="x.other.example"' not in text  # a pattern names no one registry
    assert 'registry="other"' in text


def test_build_info_and_process_collectors():
    import platform

    from app import __version__

    m = Metrics(revision="abc123def456")
    out = text(m)
    assert (
        f'streamgate_build_info{{python="{platform.python_version()}",'
        f'revision="abc123def456",version="{__version__}"}} 1.0'
    ) in out
    # The process collector reads /proc: CPU, resident memory and open file descriptors.
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert float(line.split()[1]) > 0, line


def test_watched_counters_are_counters_with_total_and_follow_the_probe():
    m = Metrics()
    hits = {"n": 3.0}
    m.watch_counter(
        "streamgate_test_lookups", "doc", ("event",), lambda: [({"event": "hits"}, hits["n"])]
    )
    m.watch("streamgate_test_entries", "doc", (), lambda: [({}, 2.0)])
    out = text(m)
    assert "# TYPE streamgate_test_lookups_total counter" in out
    assert 'streamgate_test_lookups_total{event="hits"} 3.0' in out
    assert "# TYPE streamgate_test_entries gauge" in out
    assert "streamgate_test_entries 2.0" in out
    hits["n"] = 9.0
    assert 'streamgate_test_lookups_total{event="hits"} 9.0' in text(m)
