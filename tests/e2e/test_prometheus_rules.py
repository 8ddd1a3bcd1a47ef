"""The chart's alerts and Grafana dashboard against the real Prometheus tools, built from Go
modules by hack/prometheus.sh: `promtool check rules` and `promtool test rules` (every alert
fires where it should and stays quiet where it should: tests/e2e/prometheus/rules-test.yaml),
and a real Prometheus that scrapes a running streamgate after real admissions through the
apiserver, where every query of the dashboard and every series the alerts read has data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    REGISTRY,
    RELAXING_POLICY,
    ROOT,
    RUN_LABEL,
    Kubectl,
    free_port,
    local_webhook,
)

pytestmark = pytest.mark.e2e

CHART = ROOT / "chart"
RULES_TEST = Path(__file__).with_name("prometheus") / "rules-test.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
JOB = "streamgate"  # the release is "streamgate": its Service, and so the scrape job, too

# Series no healthy local run can have, and why (each is covered by promtool's unit tests).
NO_DATA_YET = {
    "streamgate_conversions_failed_total": "remediation is off in this webhook's policy (its "
    "conversions are tested in tests/integration/test_remediator.py and "
    "tests/e2e/test_remediation_e2e.py)",
    "streamgate_token_exchanges_total": "the local registries ask for no credentials: token "
    "exchanges happen only with ACR's /oauth2 endpoints (tests/integration cover them)",
}


def _bin_dir(script: str) -> Path:
    out = subprocess.run(
        [str(ROOT / "hack" / script), "--print-dir"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert out.returncode == 0, f"hack/{script} failed:\n{out.stderr[-3000:]}"
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def prom_bin() -> Path:
    return _bin_dir("prometheus.sh")


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart's PrometheusRule as rendered by helm, as a Prometheus rule file."""
    helm = _bin_dir("k8s-binaries.sh") / "helm"
    out = subprocess.run(
        [str(helm), "template", JOB, str(CHART), "--set", "prometheusRule.enabled=true",
         "-s", "templates/prometheusrule.yaml"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    doc = yaml.safe_load(out.stdout)
    assert doc["kind"] == "PrometheusRule"
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump(doc["spec"], sort_keys=False))
    return path


def promtool(prom_bin: Path, *args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [str(prom_bin / "promtool"), *args],
        capture_output=True, text=True, timeout=300, check=False, cwd=cwd,
    )  # fmt: skip
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def alerts(rules: Path) -> dict[str, str]:
    doc = yaml.safe_load(rules.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def dashboard_queries(*, rate_interval: str = "1m") -> dict[str, str]:
    """Every query of the dashboard, by "panel title / refId", with Grafana's variables as
    Grafana would fill them in for this job."""
    doc = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in doc["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", rate_interval).replace("$job", JOB)
            out[f"{panel['title']} / {target['refId']}"] = expr
    return out


def test_rules_pass_promtool_check_and_their_unit_tests(prom_bin, rules):
    assert "SUCCESS: 11 rules found" in promtool(prom_bin, "check", "rules", str(rules))
    shutil.copy(RULES_TEST, rules.parent / "rules-test.yaml")
    assert "SUCCESS" in promtool(prom_bin, "test", "rules", "rules-test.yaml", cwd=rules.parent)


def test_every_alert_has_a_firing_and_a_quiet_case(rules):
    tested = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for group in tested for case in group["alert_rule_test"]]
    for name in alerts(rules):
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"no test where {name} fires"
        assert any(not c["exp_alerts"] for c in mine), f"no test where {name} stays quiet"


def test_dashboard_queries_are_valid_promql(prom_bin, tmp_path):
    """promtool parses each query as a recording rule (what Grafana would send)."""
    queries = dashboard_queries()
    assert len(queries) >= 15
    group = {
        "name": "dashboard",
        "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries.values())],
    }
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    assert f"SUCCESS: {len(queries)} rules found" in promtool(prom_bin, "check", "rules", str(path))


# ---- a real Prometheus scraping a real streamgate ----------------------------------------


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            doc = json.load(response)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prometheus_and_webhook(
    prom_bin, rules, seeded_registry, kubectl: Kubectl, tmp_path_factory
) -> Iterator[tuple[Prometheus, str]]:
    """streamgate (hack/webhook.sh, its own policy with a registry that refuses connections)
    and Prometheus scraping it every second with the chart's rules loaded."""
    suffix = uuid.uuid4().hex[:5]
    ns = f"sg-prom-{suffix}"
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: every request fails
    policy = RELAXING_POLICY.replace(
        'acrRegistries: ["127.0.0.1:25000"]', f'acrRegistries: ["127.0.0.1:25000", "{dead}"]'
    )
    assert dead in policy, "examples/policy.yaml's acrRegistries line changed"
    policy = policy.replace(
        "  registries:\n", f'  registries:\n    "{dead}":\n      insecure: true\n', 1
    )
    kubectl("create", "namespace", ns)
    kubectl("label", "namespace", ns, f"{RUN_LABEL}={suffix}")
    state = tmp_path_factory.mktemp("prom")
    (state / "webhook").mkdir()
    try:
        with local_webhook(
            kubectl,
            state / "webhook",
            suffix,
            policy=policy,
            helm_set="policy.namespaceLabel.allowRelax=true",
            probe_namespace=ns,
        ) as hook:
            metrics = urllib.parse.urlparse(hook.metrics_url)
            port = free_port()
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {"job_name": JOB, "static_configs": [{"targets": [metrics.netloc]}]}
                ],
            }
            (state / "prometheus.yml").write_text(yaml.safe_dump(config))
            log = (state / "prometheus.log").open("w")
            proc = subprocess.Popen(
                [str(prom_bin / "prometheus"), f"--config.file={state / 'prometheus.yml'}",
                 f"--storage.tsdb.path={state / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                prom = Prometheus(f"http://127.0.0.1:{port}")
                _wait(lambda: _up(prom), 60, "Prometheus to scrape streamgate")
                _admissions(kubectl, ns, dead)
                time.sleep(4)  # a few more scrapes and rule evaluations after the admissions
                yield prom, dead
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                log.close()
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _up(prom: Prometheus) -> bool:
    try:
        return any(float(s["value"][1]) == 1 for s in prom.query(f'up{{job="{JOB}"}}'))
    except OSError:
        return False


def _pod(ns: str, name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def _admissions(kubectl: Kubectl, ns: str, dead: str) -> None:
    """Real admissions through the apiserver (server-side dry runs: nothing is left behind):
    one template many times (memo and cache hits), seeded images, a missing tag (404s), and
    a registry that refuses connections until its circuit opens."""
    pods = [_pod(ns, f"same-{i}", f"{REGISTRY}/demo/plain:v1") for i in range(4)]
    pods += [_pod(ns, "good", f"{REGISTRY}/demo/streamable:v1")]
    pods += [_pod(ns, "missing", f"{REGISTRY}/demo/missing-{uuid.uuid4().hex[:6]}:v1")]
    for pod in pods:
        kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
    # The refused registry in three rounds a few scrapes apart: rate() sees a counter grow only
    # between samples, so its error series must exist before the later rounds add to it.
    for start, end in ((0, 1), (1, 2), (2, 8)):
        for i in range(start, end):
            pod = _pod(ns, f"dead-{i}", f"{dead}/demo/app:v{i}")
            kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
        time.sleep(2.5)


def test_every_dashboard_query_has_data(prometheus_and_webhook):
    prom, _ = prometheus_and_webhook
    # Data: at least one series with a number (a ratio of two rates that did not move is NaN).
    empty = {
        name: q
        for name, q in dashboard_queries().items()
        if not any(s["value"][1] not in ("NaN", "+Inf", "-Inf") for s in prom.query(q))
    }
    assert not empty, f"dashboard queries without data: {json.dumps(empty, indent=1)}"
    decisions = {
        s["metric"]["decision"]
        for s in prom.query(dashboard_queries()["Admissions by decision / A"])
    }
    assert "warn" in decisions


def test_every_series_the_alerts_read_has_data_and_the_rules_evaluate(
    prometheus_and_webhook, rules
):
    prom, dead = prometheus_and_webhook
    missing = {}
    for name, expr in alerts(rules).items():
        for selector in re.findall(r"\b(?:streamgate_\w+|up)\{[^}]*\}", expr):
            metric = selector.split("{")[0]
            if metric in NO_DATA_YET:
                continue
            if not prom.query(selector):
                missing[name] = selector
    assert not missing, f"alerts reading series without data: {missing}"
    groups = prom.get("/api/v1/rules")["groups"]
    evaluated = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(evaluated) == set(alerts(rules))
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # The refused registry: its circuit opened and its errors are over 10% of its requests,
    # so both alerts are on their way (pending for their `for`), for that registry only.
    active = prom.get("/api/v1/alerts")["alerts"]
    for name in ("StreamgateRegistryCircuitOpen", "StreamgateRegistryErrors"):
        registries = {
            a["labels"].get("registry") for a in active if a["labels"]["alertname"] == name
        }
        assert registries == {dead}, (name, active)
    quiet = {a["labels"]["alertname"] for a in active} - {
        "StreamgateRegistryCircuitOpen",
        "StreamgateRegistryErrors",
    }
    assert not quiet, f"alerts active on a healthy webhook: {quiet}"
