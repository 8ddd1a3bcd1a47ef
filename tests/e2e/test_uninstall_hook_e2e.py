"""`streamgate uninstall-hook` (the chart's pre-delete Job) against the real kube-apiserver:
it deletes a release's validating and mutating webhook configurations, waits until the
apiserver no longer has them, and is a no-op when they are already gone (a retried Job)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import Kubectl
from tests.unit.test_chart import render

pytestmark = pytest.mark.e2e


def config(kind: str, name: str) -> str:
    # No webhooks in it: nothing is called, the object only has to exist.
    return json.dumps(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name, "labels": {"streamgate.io/test": "uninstall-hook"}},
            "webhooks": [],
        }
    )


def hook(cluster: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "uninstall-hook",
            "--webhook-config",
            name,
            "--kubeconfig",
            str(cluster),
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_uninstall_hook_deletes_both_configurations_and_is_idempotent(
    cluster: Path, kubectl: Kubectl
) -> None:
    name = f"sg-hooktest-{uuid.uuid4().hex[:6]}"
    other = f"sg-hooktest-other-{uuid.uuid4().hex[:6]}"
    try:
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            kubectl("create", "-f", "-", stdin=config(kind, name))
        kubectl("create", "-f", "-", stdin=config("ValidatingWebhookConfiguration", other))
        first = hook(cluster, name)
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [
            f"deleted validatingwebhookconfiguration/{name}",
            f"deleted mutatingwebhookconfiguration/{name}",
        ]
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            got = kubectl("get", kind, name, "--ignore-not-found", "-o", "name")
            assert got.stdout.strip() == "", got.stdout
        # another release's configuration is left alone
        assert kubectl("get", "validatingwebhookconfiguration", other, "-o", "name").stdout
        again = hook(cluster, name)
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == [
            f"already gone: validatingwebhookconfiguration/{name}",
            f"already gone: mutatingwebhookconfiguration/{name}",
        ]
    finally:
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            for n in (name, other):
                kubectl("delete", kind, n, "--ignore-not-found", check=False)


def test_uninstall_hook_without_a_cluster_is_one_line_and_exit_2(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        'clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]\n'
        "users: [{name: u, user: {token: x}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    out = hook(kubeconfig, "anything")
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert "uninstall-hook: cannot delete" in out.stderr


def test_the_hook_jobs_pod_is_admitted_under_pod_security_restricted(kubectl: Kubectl) -> None:
    """The chart's pre-delete Job must run in a release namespace that enforces Pod Security
    "restricted": the apiserver's own PodSecurity admission judges the Job's pod template."""
    namespace = f"sg-hookpsa-{uuid.uuid4().hex[:6]}"
    (job,) = [d for d in render(hooks=True) if d["kind"] == "Job"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "uninstall-hook", "namespace": namespace},
        "spec": {**job["spec"]["template"]["spec"], "serviceAccountName": "default"},
    }
    kubectl("create", "namespace", namespace)
    try:
        kubectl(
            "label",
            "namespace",
            namespace,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        )
        ok = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
        assert ok.returncode == 0, ok.stderr
        assert "PodSecurity" not in ok.stderr, ok.stderr  # not even a warning
        # control: the namespace really enforces it (the same pod, privilege escalation allowed)
        (c,) = pod["spec"]["containers"]
        c["securityContext"] = {**c["securityContext"], "allowPrivilegeEscalation": True}
        bad = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
        assert bad.returncode != 0 and "PodSecurity" in bad.stderr, bad.stderr
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
