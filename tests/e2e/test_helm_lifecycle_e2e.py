"""The chart's life with Helm 3 and Helm 4 (both built from Go modules by
hack/k8s-binaries.sh) against the real local kube-apiserver: install the previous chart
version (0.1.0, taken from this repository's history at test time), upgrade to the current
chart with changed values, roll back, uninstall.

The pods are KWOK's (no containers run), so the checks are on the objects the apiserver
stores. The release's webhooks select only a namespace label no namespace carries, so other
tests sharing the cluster never call its (fake) pods; the pre-delete hook is off here (its Job
would complete without running: tests/e2e/test_uninstall_under_load_e2e.py tests it).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Kubectl
from tests.unit.test_chart import CHART, ROOT

pytestmark = pytest.mark.e2e

# The first commit of the 0.2.0 changes (CHANGELOG gained "## 0.2.0"): its parent is 0.1.0.
FIRST_0_2_0 = "## 0.2.0"


def binary(name: str) -> str:
    out = subprocess.run(
        [str(ROOT / "hack" / "k8s-binaries.sh"), "--print-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return str(Path(out.stdout.strip().splitlines()[-1]) / name)


def previous_chart(into: Path) -> Path:
    """chart/ as of the 0.1.0 release, from git history (a shallow clone can't run this)."""
    found = subprocess.run(
        ["git", "log", "--format=%H", "-S", FIRST_0_2_0, "--", "CHANGELOG.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    commits = found.stdout.split()
    assert found.returncode == 0 and commits, (
        "the previous chart comes from git history: this test needs a full clone "
        f"(git log: {found.stderr.strip() or 'no commit added ' + FIRST_0_2_0})"
    )
    archive = subprocess.run(
        ["git", "archive", "--format=tar", f"{commits[-1]}^", "chart"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "chart"


def chart_version(chart: Path) -> str:
    for line in (chart / "Chart.yaml").read_text().splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no version in {chart}/Chart.yaml")


class Helm:
    def __init__(self, name: str, kubeconfig: Path, home: Path) -> None:
        self.path = binary(name)
        self.kubeconfig = kubeconfig
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, values: dict[str, Any] | None = None) -> str:
        cmd = [self.path, "--kubeconfig", str(self.kubeconfig), *args]
        if values is not None:
            cmd += ["--values", "-"]
        out = subprocess.run(
            cmd,
            input=json.dumps(values or {}),
            capture_output=True,
            text=True,
            timeout=300,
            env=self.env,
            check=False,
        )
        assert out.returncode == 0, f"{Path(self.path).name} {' '.join(args)}:\n{out.stderr}"
        return out.stdout


@pytest.mark.parametrize("helm_name", ["helm", "helm4"])
def test_install_previous_upgrade_rollback_uninstall(
    cluster: Path, kubectl: Kubectl, tmp_path: Path, helm_name: str
) -> None:
    helm = Helm(helm_name, cluster, tmp_path)
    major = helm("version", "--template", "{{.Version}}").strip()
    assert major.startswith("v3." if helm_name == "helm" else "v4."), major
    old = previous_chart(tmp_path / "previous")
    assert (chart_version(old), chart_version(CHART)) == ("0.1.0", "0.2.0")
    run = secrets.token_hex(3)
    release, ns = f"sglc{run}", f"sg-lifecycle-{run}"
    scope = [{"key": "streamgate-e2e-lifecycle", "operator": "In", "values": [run]}]
    values: dict[str, Any] = {"webhook": {"namespaceSelectorExpressions": scope}}
    kubectl("create", "namespace", ns)

    def deployment() -> dict[str, Any]:
        (item,) = kubectl.json("get", "deployments", "-n", ns)["items"]
        return dict(item)

    def webhook_timeouts() -> list[int]:
        config = kubectl.json(
            "get", "validatingwebhookconfigurations", "-l", f"app.kubernetes.io/instance={release}"
        )["items"]
        return [w["timeoutSeconds"] for c in config for w in c["webhooks"]]

    try:
        helm("install", release, str(old), "-n", ns, values=values)
        first = deployment()
        assert first["metadata"]["labels"]["helm.sh/chart"] == "streamgate-0.1.0"
        assert first["spec"]["replicas"] == 2
        assert set(webhook_timeouts()) == {5}

        changed = {
            **values,
            "replicas": 3,
            "webhook": {**values["webhook"], "timeoutSeconds": 4},
            "uninstallHook": {"enabled": False},
        }
        helm("upgrade", release, str(CHART), "-n", ns, values=changed)
        second = deployment()
        assert second["metadata"]["labels"]["helm.sh/chart"] == "streamgate-0.2.0"
        assert second["spec"]["replicas"] == 3
        assert set(webhook_timeouts()) == {4}
        history = json.loads(helm("history", release, "-n", ns, "-o", "json"))
        assert [h["chart"] for h in history] == ["streamgate-0.1.0", "streamgate-0.2.0"]

        helm("rollback", release, "1", "-n", ns)
        third = deployment()
        assert third["metadata"]["labels"]["helm.sh/chart"] == "streamgate-0.1.0"
        assert third["spec"]["replicas"] == 2
        assert set(webhook_timeouts()) == {5}

        helm("uninstall", release, "-n", ns, "--no-hooks")
        left = kubectl(
            "get",
            "all,configmaps,secrets,serviceaccounts,roles,rolebindings",
            "-n",
            ns,
            "-l",
            f"app.kubernetes.io/instance={release}",
            "-o",
            "name",
        ).stdout.split()
        cluster_left = kubectl(
            "get",
            "validatingwebhookconfigurations,mutatingwebhookconfigurations,"
            "clusterroles,clusterrolebindings",
            "-l",
            f"app.kubernetes.io/instance={release}",
            "-o",
            "name",
        ).stdout.split()
        assert left == [] and cluster_left == [], (left, cluster_left)
    finally:
        subprocess.run(
            [helm.path, "--kubeconfig", str(cluster), "uninstall", release, "-n", ns, "--no-hooks"],
            capture_output=True,
            env=helm.env,
            check=False,
        )
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
