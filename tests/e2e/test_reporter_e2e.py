"""`streamgate report` in the local control plane, with the real PolicyReport CRD: reports
converge as workloads are created, changed and deleted; of two reporters only the Lease's
holder writes; when the leader is killed the other takes over and goes on without duplicates.

Each reporter is scoped to this test's namespace (--report-namespace) and its own Lease, so
test runs sharing the cluster don't meet. Waits are for convergence (a deadline to fail by),
not measurements: speed is `make bench`'s."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.e2e.conftest import REGISTRY, ROOT, Kubectl

pytestmark = pytest.mark.e2e

BIN = ROOT / ".venv" / "bin" / "streamgate"
POLICY = ROOT / "examples" / "policy.yaml"
STREAMABLE = f"{REGISTRY}/demo/streamable:v1"
PLAIN = f"{REGISTRY}/demo/plain:v1"
POOL = "kubernetes.azure.com/agentpool"
LEASE_SECONDS = 6
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as err:
            last = err
        if last is not None and not isinstance(last, AssertionError):
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


class Reporters:
    def __init__(self, cluster: Path, ns: str, logs: Path) -> None:
        self.cluster, self.ns, self.logs = cluster, ns, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, identity: str, *extra: str) -> None:
        log = (self.logs / f"{identity}.log").open("wb")
        self.procs[identity] = subprocess.Popen(
            [
                str(BIN),
                "report",
                "--kubeconfig",
                str(self.cluster),
                "--policy",
                str(POLICY),
                "--report-namespace",
                self.ns,
                "--lease-namespace",
                self.ns,
                "--identity",
                identity,
                "--lease-seconds",
                str(LEASE_SECONDS),
                "--report-interval",
                "0.5",
                "--min-write-interval",
                "1",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def log(self, identity: str) -> str:
        return (self.logs / f"{identity}.log").read_text()

    def logged(self, identity: str, text: str) -> None:
        """Waits for `text` in the log (info lines reach it within 0.2 s)."""
        wait_for(
            f"{text!r} in {identity}'s log",
            lambda: True if text in self.log(identity) else None,
            timeout=10,
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def setup(
    cluster: Path, kubectl: Kubectl, policyreport_crds: Path, seeded_registry: str, tmp_path: Path
) -> Iterator[tuple[str, Reporters]]:
    ns = f"sg-report-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    reporters = Reporters(cluster, ns, tmp_path)
    try:
        yield ns, reporters
    finally:
        reporters.stop()
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def deployment(name: str, ns: str, image: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": image}], **spec},
                },
            },
        }
    )


def results(kubectl: Kubectl, ns: str) -> dict[tuple[str, str], str] | None:
    """(workload, rule) -> result of the namespace's report; None while there is none."""
    out = kubectl("get", "policyreports", "-n", ns, "-o", "json").stdout
    items = json.loads(out)["items"]
    if not items:
        return None
    assert [i["metadata"]["name"] for i in items] == [f"streamgate-{ns}"]  # never a duplicate
    (report,) = items
    got: dict[tuple[str, str], str] = {}
    for r in report["results"]:
        key = (r["resources"][0]["name"], r["rule"])
        assert key not in got, f"duplicate result {key}"
        got[key] = r["result"]
    assert sum(report["summary"].values()) == len(got)
    return got


def converge(kubectl: Kubectl, ns: str, want: dict[tuple[str, str], str]) -> None:
    def check() -> bool | None:
        got = results(kubectl, ns) or {}
        return True if {k: got.get(k) for k in want} == want else None

    wait_for(f"the report of {ns} to hold {want}", check)


def holder(kubectl: Kubectl, ns: str) -> str | None:
    out = kubectl("get", "lease", "streamgate-reporter", "-n", ns, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)["spec"].get("holderIdentity") or None


def test_reports_converge_and_one_leader_writes_and_a_successor_takes_over(kubectl, setup):
    ns, reporters = setup
    on_streaming = {"nodeSelector": {POOL: "streamub"}}
    kubectl("apply", "-f", "-", stdin=deployment("web", ns, STREAMABLE, **on_streaming))
    kubectl("apply", "-f", "-", stdin=deployment("legacy", ns, PLAIN, **on_streaming))
    reporters.start("alpha")
    reporters.start("beta")

    # created: one report, each workload's four results
    converge(
        kubectl,
        ns,
        {
            ("web", "image-streamable"): "pass",
            ("web", "pools-can-stream"): "pass",
            ("web", "digest-pin"): "pass",
            ("web", "pull-secrets"): "pass",
            ("legacy", "image-streamable"): "fail",
        },
    )
    leader = wait_for("a lease holder", lambda: holder(kubectl, ns))
    other = "beta" if leader == "alpha" else "alpha"
    reporters.logged(leader, "reports: wrote")
    assert "reports: wrote" not in reporters.log(other)  # only the leader writes
    assert "leads" not in reporters.log(other)

    # updated: the fix applied, the result follows
    kubectl("apply", "-f", "-", stdin=deployment("legacy", ns, STREAMABLE, **on_streaming))
    converge(kubectl, ns, {("legacy", "image-streamable"): "pass"})
    # a pull secret: warn with the fix
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=deployment(
            "legacy", ns, STREAMABLE, imagePullSecrets=[{"name": "acr"}], **on_streaming
        ),
    )
    converge(kubectl, ns, {("legacy", "pull-secrets"): "warn"})
    # deleted: its results go
    kubectl("delete", "deployment", "web", "-n", ns)
    wait_for(
        "web's results to go",
        lambda: True if not any(k[0] == "web" for k in results(kubectl, ns) or {}) else None,
    )
    assert "reports: wrote" not in reporters.log(other)

    # the leader dies without giving the lease up: the other takes over once it runs out
    reporters.procs[leader].send_signal(signal.SIGKILL)
    reporters.procs[leader].wait(10)
    wait_for(
        f"{other} to hold the lease",
        lambda: True if holder(kubectl, ns) == other else None,
        timeout=LEASE_SECONDS * 4,
    )
    reporters.logged(other, f"{other} leads (taken over from {leader})")
    kubectl("apply", "-f", "-", stdin=deployment("late", ns, PLAIN, **on_streaming))
    converge(
        kubectl, ns, {("late", "image-streamable"): "fail", ("legacy", "pull-secrets"): "warn"}
    )
    reporters.logged(other, "reports: wrote")
    got = results(kubectl, ns)
    assert got is not None and {k[0] for k in got} == {"legacy", "late"}

    # every workload gone: the report goes too
    kubectl("delete", "deployment", "legacy", "late", "-n", ns)
    wait_for(
        "the report to be deleted",
        lambda: True if results(kubectl, ns) is None else None,
    )
    reporters.logged(other, f"reports: deleted {ns}/streamgate-{ns}")


def test_a_stopped_leader_gives_the_lease_up_and_openreports_are_written_too(kubectl, setup):
    ns, reporters = setup
    kubectl("apply", "-f", "-", stdin=deployment("web", ns, PLAIN))
    reporters.start("solo", "--reports-api", "openreports")

    def report() -> dict[str, Any] | None:
        out = kubectl("get", "reports.openreports.io", "-n", ns, "-o", "json").stdout
        items = json.loads(out)["items"]
        return items[0] if items else None

    got = wait_for("the openreports Report", report)
    assert (got["metadata"]["name"], got["source"]) == (f"streamgate-{ns}", "streamgate")
    assert {(r["rule"], r["result"]) for r in got["results"]} >= {("image-streamable", "fail")}
    assert results(kubectl, ns) is None  # no PolicyReport: the API asked for only
    assert holder(kubectl, ns) == "solo"
    reporters.procs["solo"].terminate()
    assert reporters.procs["solo"].wait(15) == 0
    assert holder(kubectl, ns) is None  # released: a successor need not wait
    assert "released by solo" in reporters.log("solo")


def test_serve_with_reports_writes_them_beside_the_webhook(kubectl, setup, cluster, tmp_path):
    """`serve --reports` (what the chart runs with reports.enabled): the same reporter over the
    webhook's own Admission."""
    from tests.e2e.conftest import free_port

    ns, _ = setup
    kubectl("apply", "-f", "-", stdin=deployment("legacy", ns, PLAIN))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN),
                "serve",
                "--self-signed",
                str(tmp_path / "certs"),
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--policy",
                str(POLICY),
                "--kubeconfig",
                str(cluster),
                "--reports",
                "--report-namespace",
                ns,
                "--lease-namespace",
                ns,
                "--report-interval",
                "0.5",
                "--min-write-interval",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        converge(kubectl, ns, {("legacy", "image-streamable"): "fail"})
        assert holder(kubectl, ns) is not None
        assert "policy reports on: wgpolicyk8s.io/v1alpha2" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
    assert holder(kubectl, ns) is None  # the server's stop gave the Lease up
