"""`helm uninstall` while admissions flow through webhooks with `failurePolicy: Fail`.

What is real: helm (built from Go modules), the chart, the kube-apiserver calling a real
streamgate process over HTTPS (the chart's URL mode), the Job controller, the hook's
ServiceAccount, ClusterRole and binding, and the hook's own command with the hook pod's exact
arguments.

What the test stands in for: KWOK runs no containers, so the test plays the kubelet for the
two pods that matter. (1) The webhook Deployment's pods are the local streamgate process: when
Helm has deleted the Deployment, the test kills the process, as the pods would go. (2) The hook
Job's pod is held Pending by a node selector no node has; the test runs the pod's command and
arguments locally with a token of the pod's ServiceAccount (TokenRequest), then binds the pod to
a fake node so KWOK completes it and the Job controller marks the Job complete, which is what
Helm waits for.

With the hook, both webhook configurations are gone before Helm deletes the Deployment and no
admission fails. The control (hook off) shows Helm 3's own order leaves the configurations in
place after the Deployment is gone: every admission in that window would fail.
"""

from __future__ import annotations

import base64
import json
import secrets
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Kubectl, free_port
from tests.e2e.test_chart_install import eventually, helm
from tests.unit.test_chart import CHART

pytestmark = pytest.mark.e2e

SCOPE = "streamgate-e2e-uninstall"
HOLD = "streamgate.io/uninstall-test-hold"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    ca: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    certs = tmp_path / "certs"
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--self-signed",
            str(certs),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    running = Server(process, f"https://127.0.0.1:{port}", certs / "ca.crt")

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError((tmp_path / "serve.log").read_text())
        probe = subprocess.run(
            ["curl", "-sf", "--cacert", str(running.ca), f"{running.url}/readyz"],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    eventually(ready, timeout=30, what="streamgate serve")
    try:
        yield running
    finally:
        running.stop()
        log.close()


@dataclass
class Load:
    """Dry-run Pod creates in a namespace the release's webhooks select, back to back."""

    kubectl: Kubectl
    namespace: str
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        pod = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "load-", "namespace": self.namespace},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
            }
        )
        while not self.stop.is_set():
            out = self.kubectl("create", "--dry-run=server", "-f", "-", stdin=pod, check=False)
            self.sent += 1
            if out.returncode != 0:
                self.failures.append(out.stderr.strip())


@dataclass
class Order:
    """When the Deployment and the webhook configurations were first seen gone."""

    kubectl: Kubectl
    namespace: str
    deployment: str
    config: str
    server: Server
    gone: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def exists(self, *what: str) -> bool:
        out = self.kubectl("get", *what, "--ignore-not-found", "-o", "name", check=False)
        return out.returncode != 0 or bool(out.stdout.strip())

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            # The configurations first: were they deleted after the Deployment within this
            # pass, the Deployment is then seen gone in the same pass, not a pass later.
            checks = {
                "validating": ("validatingwebhookconfiguration", self.config),
                "mutating": ("mutatingwebhookconfiguration", self.config),
                "deployment": ("deployment", self.deployment, "-n", self.namespace),
            }
            for key, what in checks.items():
                if key not in self.gone and not self.exists(*what):
                    self.gone[key] = now
            if "deployment" in self.gone:
                self.server.stop()  # the webhook's pods are gone with their Deployment
            time.sleep(0.05)


def hook_kubeconfig(kubectl: Kubectl, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with a TokenRequest token of the hook pod's ServiceAccount."""
    token = kubectl("create", "token", account, "-n", namespace, "--duration", "10m").stdout
    view = json.loads(
        kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    cluster = view["clusters"][0]["cluster"]
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "hook", "user": {"token": token.strip()}}],
                "contexts": [{"name": "hook", "context": {"cluster": "c", "user": "hook"}}],
                "current-context": "hook",
            }
        )
    )
    return path


def play_kubelet_for_the_hook(
    kubectl: Kubectl, namespace: str, instance: str, tmp_path: Path, ran: list[str]
) -> None:
    """Wait for the hook Job's pod, run its command as its ServiceAccount, bind it to a node."""
    selector = f"app.kubernetes.io/instance={instance},app.kubernetes.io/name=streamgate-uninstall"

    def pending_pod() -> dict[str, Any] | None:
        items = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
        return items[0] if items else None

    pod = eventually(pending_pod, timeout=60, what="the hook Job's pod")
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["nodeSelector"].get(HOLD), spec  # held Pending until the command ran
    kubeconfig = hook_kubeconfig(
        kubectl, namespace, spec["serviceAccountName"], tmp_path / "hook-kubeconfig"
    )
    args = [
        f"--kubeconfig={kubeconfig}" if a == "--kubeconfig=in-cluster" else a
        for a in container["args"]
    ]
    assert container["command"] == ["streamgate", "uninstall-hook"], container
    out = subprocess.run(
        [sys.executable, "-m", "app", "uninstall-hook", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    ran.append(f"$ streamgate uninstall-hook {shlex.join(args)}\n{out.stdout}{out.stderr}")
    assert out.returncode == 0, ran[-1]
    node = kubectl(
        "get",
        "nodes",
        "-l",
        "kubernetes.azure.com/agentpool=streamub",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod["metadata"]["name"], "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
    path = tmp_path / "binding.json"
    path.write_text(json.dumps(binding))
    kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/binding",
        "-f",
        str(path),
    )


@pytest.mark.parametrize("with_hook", [True, False], ids=["hook", "no-hook"])
def test_uninstall_under_load_with_fail(
    cluster: Path, kubectl: Kubectl, server: Server, tmp_path: Path, with_hook: bool
) -> None:
    run = secrets.token_hex(3)
    release, home, target = f"sgul{run}", f"sg-ul-{run}", f"sg-ul-load-{run}"
    values = {
        "webhook": {
            "url": server.url,
            "caBundle": base64.b64encode(server.ca.read_bytes()).decode(),
            "failurePolicy": "Fail",
            "namespaceSelectorExpressions": [{"key": SCOPE, "operator": "In", "values": [run]}],
        },
        "uninstallHook": {"enabled": with_hook},
        # No node has this label: the pods stay Pending until the test binds the hook's.
        "nodeSelector": {HOLD: run},
    }
    kubectl("create", "namespace", home)
    kubectl("create", "namespace", target)
    kubectl("label", "namespace", target, f"{SCOPE}={run}")
    load = Load(kubectl, target)
    ran: list[str] = []
    try:
        helm(cluster, "install", release, str(CHART), "-n", home, values=values)
        config = json.loads(
            kubectl(
                "get",
                "validatingwebhookconfigurations",
                "-l",
                f"app.kubernetes.io/instance={release}",
                "-o",
                "json",
            ).stdout
        )["items"][0]["metadata"]["name"]
        deployment = json.loads(kubectl("get", "deployments", "-n", home, "-o", "json").stdout)[
            "items"
        ][0]["metadata"]["name"]
        order = Order(kubectl, home, deployment, config, server)
        loader = threading.Thread(target=load.run, daemon=True)
        loader.start()
        eventually(lambda: load.sent >= 5, timeout=60, what="admissions through the webhook")
        assert load.failures == [], load.failures  # the webhook answers them (Fail is set)
        watcher = threading.Thread(target=order.run, daemon=True)
        watcher.start()
        kubelet = None
        if with_hook:
            kubelet = threading.Thread(
                target=play_kubelet_for_the_hook,
                args=(kubectl, home, release, tmp_path, ran),
                daemon=True,
            )
            kubelet.start()
        uninstall = helm(
            cluster, "uninstall", release, "-n", home, "--timeout", "120s", check=False
        )
        if kubelet is not None:
            kubelet.join(30)
        eventually(lambda: len(order.gone) == 3, timeout=30, what="everything gone")
        sent = load.sent
        eventually(lambda: load.sent >= sent + 5, timeout=30, what="admissions after uninstall")
        load.stop.set()
        order.stop.set()
        loader.join(30)
        watcher.join(10)
        assert uninstall.returncode == 0, uninstall.stdout + uninstall.stderr
        if with_hook:
            assert ran and "deleted validatingwebhookconfiguration/" in ran[0], ran
            assert order.gone["validating"] < order.gone["deployment"], order.gone
            assert order.gone["mutating"] < order.gone["deployment"], order.gone
            assert load.failures == [], load.failures
        else:
            # Helm 3's own order: the Deployment goes first and the configurations after it;
            # from the Deployment's deletion until theirs, every covered admission fails.
            assert order.gone["deployment"] <= order.gone["validating"], order.gone
            assert order.gone["deployment"] <= order.gone["mutating"], order.gone
        assert load.sent > 10
    finally:
        load.stop.set()
        helm(cluster, "uninstall", release, "-n", home, "--no-hooks", check=False)
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            kubectl(
                "delete",
                kind,
                "-l",
                f"app.kubernetes.io/instance={release}",
                "--ignore-not-found",
                check=False,
            )
        kubectl("delete", "namespace", home, target, "--wait=false", check=False)
