"""Kubernetes API faults while the watches run, against the real local control plane.

The shared kube-apiserver is never restarted: `streamgate serve` (its own process) reaches it
through `tests.support.faultproxy` (tcp layer), whose outage refuses connections and cuts
the open ones, and whose `drop()` resets every connection as a restarting apiserver would.
Meanwhile admissions must keep being answered from the last inventory and namespace modes,
and the watches must come back afterwards and pick up what changed during the outage.

A 410 Gone is the apiserver's own: a watch from a resourceVersion older than its watch cache.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cluster.nodes import NodeWatcher
from app.cluster.reflector import ReflectorSettings
from tests.reliability.harness import LONG, Answer, Row, ServerProcess, eventually, pod
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

AKS = "kubernetes.azure.com/agentpool"
MODE = "streamgate.io/mode"
OUTAGE = 20.0 if LONG else 4.0


def proxied_kubeconfig(cluster: Path, proxy: FaultProxy, out: Path) -> Path:
    config = yaml.safe_load(cluster.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://{proxy.host}"
    out.write_text(yaml.safe_dump(config))
    return out


def apiserver(cluster: Path) -> str:
    config = yaml.safe_load(cluster.read_text())
    return str(config["clusters"][0]["cluster"]["server"]).removeprefix("https://")


@pytest.fixture
def namespace(kubectl: Any) -> Iterator[str]:
    name = f"sgrel-api-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, f"{MODE}=enforce")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


STREAMABLE = "127.0.0.1:25000/demo/streamable:v1"
POLICY = {
    "mode": "warn",
    "acrRegistries": ["127.0.0.1:25000"],
    "registry": {"registries": {"127.0.0.1:25000": {"insecure": True}}},
}


def on_arm(target: ServerProcess, namespace: str) -> Answer:
    """A streamable image on a pod that can only land on the arm64 pool (which can't stream):
    denied in enforce, a warning in warn."""
    spec = {"nodeSelector": {AKS: "arm"}}
    return target.admit(pod("p", [STREAMABLE], **spec), namespace=namespace)


@pytest.mark.usefixtures("seeded_registry")
def test_apiserver_unreachable_then_restarted(
    cluster: Path,
    kubectl: Any,
    namespace: str,
    tmp_path: Path,
    record: Row,
) -> None:
    record.area = "Kubernetes API faults"
    record.tried = (
        f"apiserver unreachable for {OUTAGE:.0f} s (connections refused, open ones cut) while "
        "the node, runtime-class and namespace watches run; a namespace relabelled meanwhile; "
        "then every connection reset (a restart)"
    )
    proxy = FaultProxy(apiserver(cluster), layer="tcp").start()
    kubeconfig = proxied_kubeconfig(cluster, proxy, tmp_path / "kubeconfig")
    target = ServerProcess(tmp_path / "sg", POLICY, kubeconfig=kubeconfig).start()
    answers = 0
    try:
        target.wait_ready()
        before = on_arm(target, namespace)
        assert not before.allowed and "arm64" in before.message, before.text  # enforce, pools known

        proxy.outage()
        kubectl("label", "namespace", namespace, f"{MODE}=warn", "--overwrite")
        started = time.monotonic()
        slowest = 0.0
        while time.monotonic() - started < OUTAGE:
            during = on_arm(target, namespace)
            answers += 1
            slowest = max(slowest, during.seconds)
            assert not during.allowed and "arm64" in during.message, during.text
            time.sleep(0.2)
        probe = target.probe_after(time.time())
        assert probe["inventory"]["ready"] and probe["inventory"]["nodes"] > 0
        assert probe["inventory"]["last_error"], "the outage went unnoticed"
        assert probe["inventory"]["age"] >= OUTAGE - 1
        assert target.client().get("/readyz").status_code == 200

        proxy.restore()
        back = time.monotonic()
        after = eventually(
            lambda: (a := on_arm(target, namespace)).allowed and a,
            timeout=40,
            interval=0.3,
            what="the relabelled namespace (warn) to be seen after the outage",
        )
        recovered = time.monotonic() - back
        assert "arm64" in after.text
        # The node watch resumed too: the API was heard from recently. (`last_error` keeps the
        # outage's error until the next full list, by design: the watch resumes, no relist.)
        eventually(
            lambda: target.probe_after(time.time())["inventory"]["age"] < 30,
            timeout=40,
            what="the node watch to hear from the API again",
        )

        proxy.drop()  # every connection reset at once, the listener stays: a restart
        kubectl("label", "namespace", namespace, f"{MODE}=enforce", "--overwrite")
        reset = time.monotonic()  # after kubectl's own time
        eventually(
            lambda: not on_arm(target, namespace).allowed,
            timeout=40,
            interval=0.3,
            what="the namespace change after the connections were reset",
        )
        restarted = time.monotonic() - reset
        # A reset right after a recovery is a fresh failure: the watches come back within the
        # first backoff step, not after the backoff the outage had built up (up to 30 s).
        assert restarted < 5, f"the watches took {restarted:.1f} s to come back after a reset"
        answers += 3
    finally:
        target.stop()
        proxy.stop()
    record.cases = answers
    record.observed = (
        f"{answers} admissions during the outage answered from the last inventory and modes "
        f"(slowest {slowest * 1000:.0f} ms), /readyz stayed 200; the change made meanwhile "
        f"was seen {recovered:.1f} s after the API came back; after the reset "
        f"{restarted:.1f} s"
    )


SILENT = {
    "hang": (
        "apiserver black-holed: open connections cut, new ones accepted and never answered",
        6.0,
    ),
    "partition": (
        "apiserver vanished: open connections go silent (no FIN, no RST), new ones hang",
        10.0,
    ),
}


@pytest.mark.parametrize("fault", ["hang", "partition"])
@pytest.mark.usefixtures("seeded_registry")
def test_apiserver_silent(
    fault: str, kubectl: Any, namespace: str, tmp_path: Path, record: Row
) -> None:
    """Nothing comes back: the client's own timeouts must notice. A new connection's TLS
    handshake gives up after the connect timeout (5 s); a watch that went silent only after the
    read timeout (watch timeout + 30 s): about a minute, so that one runs in the long run."""
    if fault == "partition" and not LONG:
        pytest.skip("a silent watch is noticed after ~60 s: long run (make reliability)")
    tried, seconds = SILENT[fault]
    record.area = "Kubernetes API faults"
    record.tried = f"{tried}, for {seconds:.0f} s; a namespace relabelled meanwhile"
    proxy = FaultProxy(apiserver(kubectl.kubeconfig), layer="tcp").start()
    kubeconfig = proxied_kubeconfig(kubectl.kubeconfig, proxy, tmp_path / "kubeconfig")
    target = ServerProcess(tmp_path / "sg", POLICY, kubeconfig=kubeconfig).start()
    answers = 0
    try:
        target.wait_ready()
        proxy.set(fault)
        started = time.monotonic()
        kubectl("label", "namespace", namespace, f"{MODE}=warn", "--overwrite")
        while time.monotonic() - started < seconds:
            assert not on_arm(target, namespace).allowed  # the last modes, still enforce
            answers += 1
            time.sleep(0.5)
        proxy.set("pass")
        back = time.monotonic()
        eventually(
            lambda: on_arm(target, namespace).allowed, timeout=150, interval=0.5, what="recovery"
        )
        recovered = time.monotonic() - back
    finally:
        target.stop()
        proxy.stop()
    record.cases = answers
    record.observed = (
        f"{answers} admissions answered from the last state throughout; the change was seen "
        f"{recovered:.0f} s after the API came back ({time.monotonic() - started:.0f} s after "
        "it went silent)"
    )
    # hang: a TLS handshake timeout (5 s), a backoff step, a list and a watch; still far from
    # the ~60 s a missing handshake timeout would take.
    bound = 15 if fault == "hang" else 60 + 30
    assert recovered < bound, record.observed


def test_watch_from_an_expired_resource_version_relists(
    cluster: Path, kubectl: Any, caplog: pytest.LogCaptureFixture, record: Row
) -> None:
    """The apiserver's own 410: a watch from resourceVersion 1 is older than its watch cache."""
    record.area = "Kubernetes API faults"
    record.tried = "watch resumed from an expired resourceVersion (the apiserver answers 410 Gone)"
    caplog.set_level(logging.INFO, logger="app.cluster.reflector")
    watcher = NodeWatcher.from_config(
        str(cluster),
        settings=ReflectorSettings(watch_timeout_seconds=5, backoff_initial=0.2, backoff_max=1.0),
    )
    watcher.start()
    rc = f"sgrel-gone-{secrets.token_hex(3)}"
    try:
        assert watcher.wait_ready(15), watcher.last_error
        # Nodes change all the time (KWOK heartbeats): resourceVersion 1 is long out of the
        # watch cache. (Runtime classes hardly change: their cache still replays from 1.)
        nodes = watcher._reflectors[0]
        listed = caplog.text.count("nodes: listed")

        def relisted_after_410() -> bool:
            if (
                "nodes: resourceVersion expired; listing again" in caplog.text
                and caplog.text.count("nodes: listed") > listed
            ):
                return True
            # The current watch ends; the next starts from "1". Asked again until it takes:
            # events the ending watch had read already may still move resource_version on.
            nodes.resource_version = "1"
            nodes.interrupt()
            return False

        eventually(
            relisted_after_410,
            timeout=20,
            interval=1.0,
            what="the node watch to get 410 and list again",
        )
        kubectl("create", "-f", "-", stdin=yaml.safe_dump({
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": rc}, "handler": "runc",
        }))  # fmt: skip
        eventually(
            lambda: rc in watcher.snapshot().runtime_classes, timeout=15, what="a new runtime class"
        )
        assert watcher.place({"nodeSelector": {AKS: "arm"}}).known
    finally:
        watcher.stop()
        kubectl("delete", "runtimeclass", rc, "--ignore-not-found", "--wait=false", check=False)
    record.cases = 2
    record.observed = (
        "410 Gone (too old resource version) → listed again at once, then watching: a runtime "
        "class created afterwards was seen, placement kept answering"
    )
