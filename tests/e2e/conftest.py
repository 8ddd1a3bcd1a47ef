"""The real local control plane (hack/cluster.sh) and kubectl, for end-to-end tests.

`cluster` starts etcd, kube-apiserver, controller-manager, scheduler and KWOK with AKS-shaped
node pools (building the binaries on first use) and yields the kubeconfig path. A cluster
that was already up (a developer's) is left running; one this session started is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.telemetry.logs import FLUSH_SECONDS

ROOT = Path(__file__).parents[2]
CLUSTER = ROOT / "hack" / "cluster.sh"


def _cluster_up_already() -> bool:
    out = subprocess.run([str(CLUSTER), "status"], capture_output=True, text=True, check=False)
    return out.returncode == 0 and "ready" in out.stdout and "not running" not in out.stdout


def kubeconfig_path() -> Path:
    out = subprocess.run([str(CLUSTER), "env"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().split("=", 1)[1])


@pytest.fixture(scope="session")
def cluster() -> Iterator[Path]:
    was_up = _cluster_up_already()
    subprocess.run([str(CLUSTER), "up"], check=True, stdout=subprocess.DEVNULL)
    try:
        yield kubeconfig_path()
    finally:
        if not was_up and not os.environ.get("STREAMGATE_KEEP_CLUSTER"):
            subprocess.run([str(CLUSTER), "down"], check=False, stdout=subprocess.DEVNULL)


class Kubectl:
    """kubectl against the local cluster; returns CompletedProcess with text output."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)


@pytest.fixture(scope="session")
def kubectl(cluster: Path) -> Kubectl:
    return Kubectl(cluster)


WEBHOOK = ROOT / "hack" / "webhook.sh"
REGISTRY = "127.0.0.1:25000"
MODES = ("enforce", "warn", "audit", "off")
RUN_LABEL = "streamgate.io/test-run"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def seeded_registry() -> str:
    """olareg on 127.0.0.1:25000, seeded with the demo images; returns host:port."""
    from tests.support.registries import ensure_registries, run_seeder

    env = ensure_registries()
    run_seeder(env.olareg.seeder_args())
    return REGISTRY


class LocalWebhook:
    """The running webhook: its decision log, metrics URL, and one fresh namespace per mode.
    Only namespaces labelled `streamgate.io/test-run=<suffix>` are sent to it, so test runs
    sharing one cluster each judge their own namespaces."""

    def __init__(self, log: Path, suffix: str, metrics_port: int) -> None:
        self.log = log
        self.suffix = suffix
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.run_label = f"{RUN_LABEL}={suffix}"

    def ns(self, mode: str) -> str:
        return f"sg-{mode}-{self.suffix}"

    def log_text(self) -> str:
        """The decision log so far: info lines reach the file within FLUSH_SECONDS."""
        time.sleep(2 * FLUSH_SECONDS)
        return self.log.read_text()


# The session webhook's policy: the demo's, plus the one setting its per-mode namespaces need:
# their labels (audit, off) make the mode less strict than the policy's warn, which a policy
# must allow (docs/policy.md, "Namespace labels"); tests/e2e/test_tenant_optouts_e2e.py runs
# its own webhook with the default.
RELAXING_POLICY = (ROOT / "examples" / "policy.yaml").read_text() + (
    "namespaceLabel:\n  allowRelax: true\n"
)


@contextlib.contextmanager
def local_webhook(
    kubectl: Kubectl,
    state: Path,
    suffix: str,
    *,
    policy: str,
    helm_set: str = "",
    probe_namespace: str,
) -> Iterator[LocalWebhook]:
    """hack/webhook.sh up with `policy` (YAML text) and chart values `helm_set`, sent only
    namespaces labelled with this run's label; down at the end."""
    (state / "policy-source.yaml").write_text(policy)
    metrics_port = free_port()
    env = {
        **os.environ,
        "STREAMGATE_WEBHOOK_DIR": str(state),
        "STREAMGATE_WEBHOOK_PORT": str(free_port()),
        "STREAMGATE_METRICS_PORT": str(metrics_port),
        "STREAMGATE_RELEASE": f"sg-test-{suffix}",
        "STREAMGATE_ONLY_LABEL": f"{RUN_LABEL}={suffix}",
        "STREAMGATE_POLICY": str(state / "policy-source.yaml"),
        "STREAMGATE_HELM_SET": helm_set,
    }
    subprocess.run([str(WEBHOOK), "up"], check=True, env=env)
    try:
        hook = LocalWebhook(state / "streamgate.log", suffix, metrics_port)
        _wait_until_admitting(kubectl, probe_namespace)
        yield hook
    finally:
        subprocess.run([str(WEBHOOK), "down"], check=False, env=env)


@pytest.fixture(scope="session")
def webhook(
    cluster: Path, seeded_registry: str, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalWebhook]:
    """streamgate running locally, wired into the cluster by the chart's webhook objects
    (hack/webhook.sh), with one new namespace per mode labelled streamgate.io/mode=<mode>."""
    suffix = uuid.uuid4().hex[:5]
    for mode in MODES:
        kubectl("create", "namespace", f"sg-{mode}-{suffix}")
        kubectl(
            "label",
            "namespace",
            f"sg-{mode}-{suffix}",
            f"streamgate.io/mode={mode}",
            f"{RUN_LABEL}={suffix}",
        )
    try:
        with local_webhook(
            kubectl,
            tmp_path_factory.mktemp("webhook"),
            suffix,
            policy=RELAXING_POLICY,
            helm_set="policy.namespaceLabel.allowRelax=true",
            probe_namespace=f"sg-warn-{suffix}",
        ) as hook:
            yield hook
    finally:
        for mode in MODES:
            kubectl("delete", "namespace", f"sg-{mode}-{suffix}", "--wait=false", check=False)


def _wait_until_admitting(kubectl: Kubectl, namespace: str, timeout: float = 30) -> None:
    """Webhook configurations take effect within a second or so: probe with a dry run."""
    probe = (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: probe, namespace: {namespace}}}\n"
        f"spec: {{containers: [{{name: c, image: {REGISTRY}/demo/plain:v1}}]}}\n"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = kubectl("apply", "--dry-run=server", "-f", "-", stdin=probe, check=False)
        if "Warning:" in out.stderr:
            return
        time.sleep(0.5)
    raise AssertionError("the webhook did not start answering the apiserver")


POLICYREPORT_CRDS = ROOT / "hack" / "policyreport-crds.sh"
REPORT_CRDS = (
    "policyreports.wgpolicyk8s.io",
    "clusterpolicyreports.wgpolicyk8s.io",
    "reports.openreports.io",
    "clusterreports.openreports.io",
)


@pytest.fixture(scope="session")
def policyreport_crds(kubectl: Kubectl) -> Path:
    """The wgpolicyk8s.io and openreports.io CRDs, from the API projects' Go modules
    (hack/policyreport-crds.sh), installed in the shared cluster. CRDs are cluster-wide and
    other tests may use them: applied idempotently, never deleted."""
    out = subprocess.run(
        [str(POLICYREPORT_CRDS)], capture_output=True, text=True, timeout=600, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"hack/policyreport-crds.sh failed:\n{out.stderr}")
    crds = Path(out.stdout.strip())
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds), timeout=120)
    kubectl("wait", "--for=condition=Established", *(f"crd/{n}" for n in REPORT_CRDS))
    return crds


@pytest.fixture(scope="module")
def front() -> Iterator[Any]:
    """A module's own ACR front (tests/support/acr_front.py) before olareg, checking the tokens
    itself: ACR auth, the referrers API and the /acr/v1 conversion endpoints together, with
    request counts of its own (conversions started)."""
    from tests.support.registries import ensure_registries, start_acr_front

    env = ensure_registries()
    started = start_acr_front(env, upstream=env.olareg_acr, enforce_auth=True)
    yield started
    started.stop()
