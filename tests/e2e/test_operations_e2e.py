"""Operating streamgate against the real control plane: /metrics after real admissions, and
the policy file changed under the running server."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import REGISTRY

pytestmark = pytest.mark.e2e

PLAIN = f"{REGISTRY}/demo/plain:v1"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name, **labels) -> float:
    want = tuple(sorted(labels.items()))
    return sum(
        v for (n, lbl), v in samples.items() if n == name and all(item in lbl for item in want)
    )


def pod(ns: str, image: str = PLAIN) -> tuple[str, str]:
    name = f"m-{uuid.uuid4().hex[:6]}"
    return name, json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "app", "image": image}]},
        }
    )


def test_metrics_count_real_admissions(webhook, kubectl):
    before = scrape(webhook.metrics_url)
    for _ in range(3):
        _, manifest = pod(webhook.ns("warn"))
        kubectl("apply", "-f", "-", stdin=manifest)
    _, manifest = pod(webhook.ns("enforce"))
    kubectl("apply", "-f", "-", stdin=manifest, check=False)
    after = scrape(webhook.metrics_url)
    name = "streamgate_admission_requests_total"
    grew = value(after, name, endpoint="validate", kind="Pod", decision="warn") - value(
        before, name, endpoint="validate", kind="Pod", decision="warn"
    )
    assert grew >= 3
    assert value(after, name, endpoint="validate", decision="deny") > value(
        before, name, endpoint="validate", decision="deny"
    )
    assert value(after, "streamgate_admission_duration_seconds_count", endpoint="mutate") > 0
    assert value(after, "streamgate_image_verdicts_total", verdict="not-streamable") >= 4
    # The registry was asked at least once (referrers), and the cache answered later asks.
    assert value(after, "streamgate_registry_requests_total", registry=REGISTRY) > 0
    assert value(after, "streamgate_cache_lookups_total", event="hits") > 0
    assert 1 <= value(after, "streamgate_cache_entries", cache="tags") <= 10000  # bounded LRU
    # Pods of one template: /validate of each and the later /mutates reuse one decision.
    memo = "streamgate_decision_memo_lookups_total"
    assert value(after, memo, event="hits") > value(before, memo, event="hits")
    assert 1 <= value(after, "streamgate_decision_memo_entries") <= 2048
    # Build, process and certificate metrics (the alerts in chart/ rely on them).
    assert value(after, "streamgate_build_info") == 1
    assert value(after, "streamgate_ready") == 1
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "process_open_fds") > 0
    assert value(after, "streamgate_certificate_expiry_timestamp_seconds") > time.time() + 86400
    # Node pools by streaming ability, from the live inventory (2 AKS-style pools stream...).
    assert value(after, "streamgate_node_pools", streaming="yes") >= 2
    assert value(after, "streamgate_node_pools", streaming="no") >= 7
    assert 0 <= value(after, "streamgate_inventory_age_seconds") < 120


def _wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_policy_file_changed_under_the_running_server(webhook, kubectl):
    policy = webhook.log.parent / "policy.yaml"
    original = policy.read_text()
    unlabelled = f"plain-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", unlabelled)
    kubectl("label", "namespace", unlabelled, webhook.run_label)
    try:
        _, manifest = pod(unlabelled)
        assert kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest).returncode == 0

        policy.write_text(original.replace("mode: warn", "mode: enforce"))
        assert _wait_for(
            lambda: (
                value(scrape(webhook.metrics_url), "streamgate_policy_reloads_total", result="ok")
                >= 1
            )
        )
        denied = kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest, check=False)
        assert denied.returncode != 0 and "denied the request" in denied.stderr

        failed_before = value(
            scrape(webhook.metrics_url), "streamgate_policy_reloads_total", result="failed"
        )
        policy.write_text("mode: [not, a, mode\n")
        assert _wait_for(
            lambda: (
                value(
                    scrape(webhook.metrics_url), "streamgate_policy_reloads_total", result="failed"
                )
                > failed_before
            )
        )
        still = kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest, check=False)
        assert still.returncode != 0, "the last good policy (enforce) must stay in force"
        assert "policy reload refused" in webhook.log_text()
    finally:
        policy.write_text(original)
        _wait_for(
            lambda: (
                kubectl(
                    "apply", "--dry-run=server", "-f", "-", stdin=pod(unlabelled)[1], check=False
                ).returncode
                == 0
            )
        )
        kubectl("delete", "namespace", unlabelled, "--wait=false", check=False)
