"""Cluster safety on the real control plane (hack/cluster.sh): the chart's own webhook
configurations (URL mode, this run's release names) in front of a webhook that is down,
wedged, or waiting on a stalled registry.

* Every replica down, failurePolicy Ignore: workloads and kube-system still apply, at once.
* Replicas wedged (connections accepted, no answer), Ignore: applies after the webhook
  timeout, never later.
* failurePolicy Fail, every replica down: only the selected namespaces are blocked.
* A 5 s registry stall: kubectl never waits as long as the webhook timeout (5 s); the pod is
  admitted (Fail policy: it must be answered in time) with an "unknown" warning.

Safety for the shared cluster: every configuration this module applies selects only
namespaces labelled with this run's id (checked on the rendered objects before they are
applied) and is deleted in a `finally`; the shared `streamgate` configurations of
hack/webhook.sh are never touched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.reliability.harness import Row, ServerProcess, eventually, free_port
from tests.support.faultproxy import FaultProxy
from tests.unit.test_chart import CHART, helm_binary

pytestmark = [pytest.mark.e2e, pytest.mark.registry]

RUN = secrets.token_hex(3)
SCOPE = "streamgate-reliability"
OLAREG = "127.0.0.1:25000"
TIMEOUT = 5  # the chart's webhook timeoutSeconds


@pytest.fixture(scope="module")
def namespaces(kubectl: Any) -> Iterator[dict[str, str]]:
    names = {"in": f"sgrel-in-{RUN}", "out": f"sgrel-out-{RUN}"}
    try:
        for name in names.values():
            kubectl("create", "namespace", name)
        kubectl("label", "namespace", names["in"], f"{SCOPE}={RUN}")
        yield names
    finally:
        for name in names.values():
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def render(release: str, url: str, ca: bytes, *, failure_policy: str, timeout: int) -> str:
    values = {
        "deployment": {"enabled": False},
        "webhook": {
            "url": url,
            "caBundle": base64.b64encode(ca).decode(),
            "failurePolicy": failure_policy,
            "timeoutSeconds": timeout,
            "namespaceSelectorExpressions": [{"key": SCOPE, "operator": "In", "values": [RUN]}],
        },
    }
    out = subprocess.run(
        [helm_binary(), "template", release, str(CHART), "-n", "streamgate-system", "-f", "-"],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/streamgate-helm-cache"},
    )
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    # Never apply anything that could select someone else's namespace.
    scoped = {"key": SCOPE, "operator": "In", "values": [RUN]}
    for doc in docs:
        assert doc["kind"].endswith("WebhookConfiguration"), doc["kind"]
        assert doc["metadata"]["name"].startswith(release)
        for hook in doc["webhooks"]:
            assert scoped in hook["namespaceSelector"]["matchExpressions"], hook
            assert hook["failurePolicy"] == failure_policy
    return out.stdout


@contextlib.contextmanager
def webhook_configs(
    kubectl: Any,
    url: str,
    ca: bytes,
    *,
    failure_policy: str,
    timeout: int = TIMEOUT,
    until: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """The chart's configurations for `url`. The apiserver picks them up within ~1 s; `until`
    (a probe that shows them in use) is asked until true, else a fixed wait."""
    release = f"sgrel-{RUN}-{secrets.token_hex(2)}"
    manifest = render(release, url, ca, failure_policy=failure_policy, timeout=timeout)
    try:
        kubectl("apply", "-f", "-", stdin=manifest)
        if until is None:
            time.sleep(1.5)
        else:
            eventually(until, timeout=30, interval=0.5, what="the webhook configurations in use")
        yield release
    finally:
        kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=manifest, check=False
        )


def pod(name: str, image: str = "busybox:1.36") -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": image}]},
        }
    )


def deployment(name: str, images: list[str]) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [
                            {"name": f"c{i}", "image": image} for i, image in enumerate(images)
                        ]
                    },
                },
            },
        }
    )


def timed(kubectl: Any, *args: str, stdin: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    out = kubectl(*args, stdin=stdin, check=False, timeout=90)
    return out, time.monotonic() - started


@pytest.fixture(scope="module")
def dead_url() -> str:
    """A port nobody listens on: every replica down."""
    return f"https://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def some_ca(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from app.certs.tls import issue_self_signed

    return issue_self_signed(tmp_path_factory.mktemp("ca"), ["127.0.0.1"]).ca.read_bytes()


def test_all_replicas_down_ignore_lets_everything_apply(
    kubectl: Any, namespaces: dict[str, str], dead_url: str, some_ca: bytes, record: Row
) -> None:
    record.area = "cluster safety"
    record.tried = (
        "every webhook replica down, failurePolicy Ignore: a Pod and a Deployment in a selected "
        "namespace, a Pod in kube-system (server dry run)"
    )
    ns = namespaces["in"]
    timings = []
    with webhook_configs(kubectl, dead_url, some_ca, failure_policy="Ignore"):
        for args, stdin in (
            (("apply", "-n", ns, "-f", "-"), pod(f"down-{RUN}")),
            (("apply", "-n", ns, "-f", "-"), deployment(f"down-{RUN}", ["busybox:1.36"])),
            (("apply", "-n", "kube-system", "--dry-run=server", "-f", "-"), pod(f"sys-{RUN}")),
        ):
            out, seconds = timed(kubectl, *args, stdin=stdin)
            timings.append(seconds)
            assert out.returncode == 0, out.stderr
            assert seconds < 5, seconds
    record.cases = len(timings)
    record.observed = (
        f"all applied; slowest kubectl {max(timings):.1f} s (connection refused is immediate)"
    )


def test_wedged_replicas_ignore_applies_within_the_timeout(
    kubectl: Any, namespaces: dict[str, str], some_ca: bytes, record: Row
) -> None:
    record.area = "cluster safety"
    record.tried = (
        "webhook replicas wedged (connections accepted, never answered), failurePolicy Ignore, "
        "timeoutSeconds 3"
    )
    ns = namespaces["in"]
    wedged = FaultProxy(f"127.0.0.1:{free_port()}", layer="tcp").start()
    wedged.set("hang")
    try:
        with webhook_configs(
            kubectl, f"https://{wedged.host}", some_ca, failure_policy="Ignore", timeout=3
        ):
            out, seconds = timed(kubectl, "apply", "-n", ns, "-f", "-", stdin=pod(f"wedged-{RUN}"))
    finally:
        wedged.stop()
    assert out.returncode == 0, out.stderr
    # mutating then validating, each given up after 3 s
    assert seconds < 2 * 3 + 3, seconds
    record.cases = 1
    record.observed = f"applied after {seconds:.1f} s (two webhooks, 3 s timeout each, then Ignore)"


def test_fail_policy_blocks_only_the_selected_namespaces(
    kubectl: Any, namespaces: dict[str, str], dead_url: str, some_ca: bytes, record: Row
) -> None:
    record.area = "cluster safety"
    record.tried = (
        "every replica down, failurePolicy Fail: Pod and Deployment in the selected namespace; Pod "
        "in another namespace and in kube-system"
    )
    selected, other = namespaces["in"], namespaces["out"]
    outcomes = {}

    def refused() -> bool:
        probe = f"probe-{secrets.token_hex(3)}"
        out = kubectl(
            "apply", "-n", selected, "--dry-run=server", "-f", "-", stdin=pod(probe), check=False
        )
        return "failed calling webhook" in out.stderr

    with webhook_configs(kubectl, dead_url, some_ca, failure_policy="Fail", until=refused):
        blocked, _ = timed(kubectl, "apply", "-n", selected, "-f", "-", stdin=pod(f"fail-{RUN}"))
        blocked_deploy, _ = timed(
            kubectl,
            "apply",
            "-n",
            selected,
            "-f",
            "-",
            stdin=deployment(f"fail-{RUN}", ["busybox:1.36"]),
        )
        free, _ = timed(kubectl, "apply", "-n", other, "-f", "-", stdin=pod(f"free-{RUN}"))
        system, _ = timed(
            kubectl,
            "apply",
            "-n",
            "kube-system",
            "--dry-run=server",
            "-f",
            "-",
            stdin=pod(f"sys-{RUN}"),
        )
        outcomes = {
            "selected Pod": blocked.returncode,
            "selected Deployment": blocked_deploy.returncode,
            "other namespace": free.returncode,
            "kube-system": system.returncode,
        }
        assert blocked.returncode != 0 and "failed calling webhook" in blocked.stderr, (
            blocked.stderr
        )
        assert blocked_deploy.returncode != 0 and "failed calling webhook" in blocked_deploy.stderr
        assert free.returncode == 0, free.stderr
        assert system.returncode == 0, system.stderr
    # and once the configurations are gone (the apiserver notices within ~1 s), the selected
    # namespace is open again
    eventually(lambda: not refused(), timeout=30, interval=0.5, what="the namespace open again")
    after, _ = timed(
        kubectl, "apply", "-n", selected, "--dry-run=server", "-f", "-", stdin=pod(f"after-{RUN}")
    )
    assert after.returncode == 0, after.stderr
    record.cases = len(outcomes) + 1
    record.observed = (
        "selected namespace: Pod and Deployment refused (failed calling webhook); other namespace "
        "and kube-system applied; open again after the configurations were deleted"
    )


@pytest.fixture(scope="module")
def stalled(
    seeded_registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, FaultProxy]]:
    """streamgate (default 2 s registry deadline) asking olareg through a proxy."""
    proxy = FaultProxy(OLAREG).start()
    policy = {
        "mode": "warn",
        "acrRegistries": [proxy.host],
        "registry": {"registries": {proxy.host: {"insecure": True}}},
    }
    target = ServerProcess(tmp_path_factory.mktemp("stall"), policy).start()
    yield target, proxy
    target.stop()
    proxy.stop()


def test_registry_stall_never_outlasts_the_webhook_timeout(
    kubectl: Any, namespaces: dict[str, str], stalled: tuple[ServerProcess, FaultProxy], record: Row
) -> None:
    record.area = "cluster safety"
    record.tried = (
        f"a 5 s registry stall behind streamgate (registry deadline 2 s), failurePolicy Fail, "
        f"timeoutSeconds {TIMEOUT}: kubectl apply of a Pod, a 2-image Deployment, a dry run"
    )
    target, proxy = stalled
    ns = namespaces["in"]
    ca = target.certs.ca.read_bytes()
    timings = {}
    proxy.set("stall", delay=5.0)
    try:

        def judged() -> bool:
            image = f"{proxy.host}/demo/probe-{secrets.token_hex(3)}:v1"
            out = kubectl(
                "apply", "-n", ns, "--dry-run=server", "-f", "-", stdin=pod(f"probe-{RUN}", image),
                check=False,
            )  # fmt: skip
            return "not checked" in out.stderr

        with webhook_configs(kubectl, target.url, ca, failure_policy="Fail", until=judged):
            for name, args, stdin in (
                (
                    "Pod",
                    ("apply", "-n", ns, "-f", "-"),
                    pod(f"stall-{RUN}", f"{proxy.host}/demo/plain:v1"),
                ),
                (
                    "Deployment, 2 images",
                    ("apply", "-n", ns, "-f", "-"),
                    deployment(
                        f"stall-{RUN}",
                        [f"{proxy.host}/demo/multiarch:v1", f"{proxy.host}/demo/late:v1"],
                    ),
                ),
                (
                    "dry run",
                    ("apply", "-n", ns, "--dry-run=server", "-f", "-"),
                    pod(f"stall2-{RUN}", f"{proxy.host}/demo/other-referrer:v1"),
                ),
            ):
                out, seconds = timed(kubectl, *args, stdin=stdin)
                timings[name] = seconds
                assert out.returncode == 0, out.stderr  # Fail policy: answered in time
                assert "not checked: registry timed out; allowed" in out.stderr, out.stderr
                assert seconds < TIMEOUT, f"{name}: kubectl waited {seconds:.1f} s"
    finally:
        proxy.set("pass")
    record.cases = len(timings)
    record.observed = (
        "admitted with 'not checked: registry timed out' warnings; kubectl took "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + f" (webhook timeout {TIMEOUT} s)"
    )
