"""Kyverno side by side: Pod creates through the apiserver, one at a time, with no webhook,
the no-op webhook, streamgate (two-call and one-call mode) and Kyverno, interleaved, in the
same run; added latency against no webhook, CPU per create of each webhook process (and of
the apiserver + etcd beside it) and RSS.

Kyverno is built from its Go module by hack/kyverno.sh (cached outside the repository), its
CRDs are applied from the module cache, and it runs out of cluster as a local process
(`--kubeconfig --serverIP`), its webhooks limited by its ConfigMap's namespaceSelector to
the run's labelled namespace and forced to failurePolicy Ignore. Everything it registered is
removed at the end, whatever happened: the local control plane is shared.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.apiserver import (
    ECHO_LABEL,
    LABEL,
    ONE_LABEL,
    WEBHOOK_SH,
    Api,
    EchoWebhook,
    _namespaces_gone,
    _webhook,
    create_many,
    pooled_difference,
)
from bench.common import ROOT, Proc, cpu_seconds, free_port, log, percentile, rss_mib
from bench.context import Ctx, policy_yaml
from bench.registry import seed_demo
from bench.reviews import DEMO_IMAGES, PUBLIC_IMAGE
from bench.warm import DEMO_NAMESPACE

KYVERNO_SH = ROOT / "hack" / "kyverno.sh"
KYVERNO_LABEL = "streamgate-bench-kyverno"
# The annotation the benchmark's ClusterPolicy adds (its mutate rule).
KYVERNO_ANNOTATION = "bench.streamgate.io/kyverno"
POLICY_NAME = "sgbench-kyverno"
# Every webhook configuration Kyverno's admission controller registers is named so.
WEBHOOK_PREFIX = "kyverno-"
# The sides, in the order of the first round; later rounds rotate it.
SIDES = ("off", "echo", "on", "one", "kyverno")
SIDE_LABELS = {
    "off": "no webhook",
    "echo": "no-op webhook (two calls)",
    "on": "streamgate, two-call mode (as shipped)",
    "one": "streamgate, one-call mode",
    "kyverno": "Kyverno",
}
# The sides whose mark (an annotation) shows they judged a create.
JUDGES = ("on", "one", "kyverno")
# The targets of issue 19, streamgate against Kyverno.
P50_RATIO_TARGET = 0.25
CPU_RATIO_TARGET = 0.1


def cluster_policy(registry: str) -> dict[str, Any]:
    """The ClusterPolicy: on Pods, an Audit validate rule that every container's image comes
    from `registry`, and a mutate rule adding an annotation (what streamgate does: judge the
    images, mark the pod)."""
    match = {"any": [{"resources": {"kinds": ["Pod"], "operations": ["CREATE"]}}]}
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "background": False,
            "failurePolicy": "Ignore",
            "rules": [
                {
                    "name": "images-from-registry",
                    "match": match,
                    "validate": {
                        "failureAction": "Audit",
                        "message": f"images should come from {registry}",
                        "pattern": {"spec": {"containers": [{"image": f"{registry}/*"}]}},
                    },
                },
                {
                    "name": "annotate",
                    "match": match,
                    "mutate": {
                        "patchStrategicMerge": {
                            "metadata": {"annotations": {f"+({KYVERNO_ANNOTATION})": "seen"}}
                        }
                    },
                },
            ],
        },
    }


def config_map(namespace: str, runid: str) -> dict[str, Any]:
    """Kyverno's ConfigMap: its resource webhooks only for namespaces labelled
    `KYVERNO_LABEL=<runid>` (the shared cluster's other namespaces are never sent to it)."""
    selector = {"matchExpressions": [{"key": KYVERNO_LABEL, "operator": "In", "values": [runid]}]}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kyverno", "namespace": namespace},
        "data": {"webhooks": json.dumps({"namespaceSelector": selector})},
    }


def kyverno_args(
    binary: str, kubeconfig: str, namespace: str, port: int, metrics_port: int
) -> list[str]:
    """The admission controller out of cluster: its webhook server on 127.0.0.1:`port`, the
    webhook configurations pointing there, every listener on the loopback, failurePolicy
    Ignore forced on every webhook it registers, its certificates in Secrets of `namespace`
    (named as its chart names them)."""
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--serverIP=127.0.0.1:{port}",
        "--webhookServerHost=127.0.0.1",
        f"--webhookServerPort={port}",
        "--metricsHost=127.0.0.1",
        f"--metricsPort={metrics_port}",
        "--controllerRuntimeMetricsAddress=0",
        f"--caSecretName=kyverno-svc.{namespace}.svc.kyverno-tls-ca",
        f"--tlsSecretName=kyverno-svc.{namespace}.svc.kyverno-tls-pair",
        "--forceFailurePolicyIgnore=true",
        "--webhookTimeout=10",
        "--disableLogColor",
        "--v=1",
    ]


def kyverno_env(namespace: str) -> dict[str, str]:
    return {
        "KYVERNO_NAMESPACE": namespace,
        "KYVERNO_POD_NAME": "sgbench-kyverno",
        "KYVERNO_SERVICEACCOUNT_NAME": "kyverno",
        "KYVERNO_DEPLOYMENT": "kyverno",
        "KYVERNO_SVC": "kyverno-svc",
        "INIT_CONFIG": "kyverno",
        "METRICS_CONFIG": "kyverno-metrics",
    }


def kyverno_webhooks(names: list[str]) -> list[str]:
    """Of `kubectl get -o name` lines, the webhook configurations Kyverno registered."""
    return [n for n in names if n.split("/", 1)[-1].startswith(WEBHOOK_PREFIX)]


def side_figures(
    latencies: dict[str, list[float]], cpu_ms: dict[str, float], base: str = "off"
) -> dict[str, Any]:
    """One run's figures per side: pooled p50/p99, added p50/p99 against `base` (with a 90 %
    bootstrap interval) and CPU ms per create."""
    out: dict[str, Any] = {}
    for side, lat in latencies.items():
        row: dict[str, Any] = {
            "creates": len(lat),
            "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2),
        }
        if side != base:
            row["added_p50_ms"] = pooled_difference(lat, latencies[base], 50)
            row["added_p99_ms"] = pooled_difference(lat, latencies[base], 99)
        if side in cpu_ms:
            row["cpu_ms_per_create"] = cpu_ms[side]
        out[side] = row
    return out


def unjudged(marked: dict[str, int], creates: int) -> list[str]:
    """The judging sides that did not mark every create of a run (a webhook that stopped
    answering, failing open, would look cheap): named so the targets are not judged."""
    return [
        f"{SIDE_LABELS[side]} marked {marked.get(side, 0)} of {creates} creates"
        for side in JUDGES
        if marked.get(side, 0) != creates
    ]


def ratios(sides: dict[str, Any], ours: str) -> dict[str, float | None]:
    """streamgate (`ours`) against Kyverno in one run: added p50 and CPU per create."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b and b > 0 else None

    k, s = sides.get("kyverno", {}), sides.get(ours, {})
    return {
        "added_p50": ratio(
            (s.get("added_p50_ms") or {}).get("value"), (k.get("added_p50_ms") or {}).get("value")
        ),
        "cpu": ratio(s.get("cpu_ms_per_create"), k.get("cpu_ms_per_create")),
    }


def judge(runs: list[dict[str, Any]], ours: str) -> dict[str, Any]:
    """The targets over the runs: met only if met in every run (worst run counts); not judged
    at all if a run had a side that did not judge every create."""
    if any(r.get("unjudged") for r in runs):
        return {"added_p50_ratio": None, "cpu_ratio": None, "p50_met": None, "cpu_met": None}
    got = [r["ratios"][ours] for r in runs if ours in r.get("ratios", {})]
    p50 = [g["added_p50"] for g in got]
    cpu = [g["cpu"] for g in got]
    worst_p50 = None if not p50 or None in p50 else max(x for x in p50 if x is not None)
    worst_cpu = None if not cpu or None in cpu else max(x for x in cpu if x is not None)
    return {
        "added_p50_ratio": worst_p50,
        "cpu_ratio": worst_cpu,
        "p50_met": None if worst_p50 is None else worst_p50 <= P50_RATIO_TARGET,
        "cpu_met": None if worst_cpu is None else worst_cpu <= CPU_RATIO_TARGET,
    }


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cluster_pids() -> dict[str, int]:
    """kube-apiserver's and etcd's pids from hack/cluster.sh's pid files."""
    pids = {}
    base = Path(os.environ.get("STREAMGATE_CACHE", Path.home() / ".cache" / "streamgate"))
    for name in ("kube-apiserver", "etcd"):
        path = base / "cluster" / "pids" / f"{name}.pid"
        try:
            pids[name] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _tool(args: list[str], what: str, timeout: float = 120) -> str:
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed: {(res.stderr or res.stdout)[-1500:]}")
    return res.stdout


class Kyverno:
    """Kyverno's admission controller as a local process, with what it needs on the cluster
    (its CRDs, its namespace and ConfigMap, the benchmark's ClusterPolicy), and the clean-up."""

    def __init__(self, ctx: Ctx, runid: str, registry: str) -> None:
        assert ctx.kubeconfig is not None
        self.ctx, self.runid, self.registry = ctx, runid, registry
        self.kubeconfig = ctx.kubeconfig
        self.namespace = f"sgbench-kyverno-{runid}"  # its own: certificates, lease, ConfigMap
        self.port, self.metrics_port = free_port(), free_port()
        self.crd_dir = Path("")
        self.created_crds: list[str] = []
        self.proc: Proc | None = None
        self.version = _tool(["bash", str(KYVERNO_SH), "--version"], "hack/kyverno.sh").strip()

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        res = subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])}: {res.stderr[-800:]}")
        return res.stdout

    def build(self) -> str:
        log(f"kyverno: ensuring the {self.version} binary (hack/kyverno.sh; first build 5–15 min)")
        binary = _tool(["bash", str(KYVERNO_SH)], "hack/kyverno.sh", timeout=1800)
        self.crd_dir = Path(
            _tool(["bash", str(KYVERNO_SH), "--crd-dir"], "hack/kyverno.sh --crd-dir").strip()
        )
        return binary.strip().splitlines()[-1]

    def remove_webhooks(self) -> list[str]:
        """Deletes every Kyverno webhook configuration; returns those still there after."""
        left: list[str] = []
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            names = kyverno_webhooks(self.kubectl("get", kind, "-o", "name").split())
            if names:
                self.kubectl("delete", "--ignore-not-found", *names)
            left += kyverno_webhooks(self.kubectl("get", kind, "-o", "name").split())
        return left

    def up(self, binary: str) -> None:
        stale = self.remove_webhooks()  # a crashed earlier run's, if any
        if stale:
            raise RuntimeError(f"Kyverno webhook configurations cannot be removed: {stale}")
        before = set(self.kubectl("get", "crd", "-o", "name").split())
        self.kubectl("apply", "--server-side", "--force-conflicts", "-R", "-f", str(self.crd_dir))
        after = set(self.kubectl("get", "crd", "-o", "name").split())
        self.created_crds = sorted(after - before)
        if self.created_crds:
            self.kubectl(
                "wait", "--for=condition=Established", "--timeout=120s", *self.created_crds
            )
        self.kubectl("create", "namespace", self.namespace)
        self.kubectl("apply", "-f", "-", stdin=json.dumps(config_map(self.namespace, self.runid)))
        self.proc = Proc(
            "kyverno",
            kyverno_args(binary, self.kubeconfig, self.namespace, self.port, self.metrics_port),
            self.ctx.work / "logs" / "kyverno.log",
            env=kyverno_env(self.namespace),
        ).start()
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(cluster_policy(self.registry)))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"kyverno exited:\n{self.proc.tail(30)}")
            ready = self.kubectl(
                "get",
                "clusterpolicy",
                POLICY_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )
            if ready.strip() == "True":
                return
            time.sleep(1)
        raise RuntimeError(f"Kyverno's ClusterPolicy not Ready after 180 s:\n{self.proc.tail(30)}")

    def reports(self, namespace: str) -> int:
        """Kyverno's admission reports (EphemeralReports) in `namespace`."""
        out = self.kubectl(
            "get", "ephemeralreports.reports.kyverno.io", "-n", namespace, "-o", "name", check=False
        )
        return len(out.split())

    def down(self) -> list[str]:
        """Removes everything; returns the problems (never raises: runs in `finally`)."""
        problems: list[str] = []

        def attempt(what: str, fn: Any) -> None:
            try:
                fn()
            except Exception as err:  # clean up as much as possible, report the rest
                problems.append(f"{what}: {err}")

        attempt(
            "delete the ClusterPolicy",
            lambda: self.kubectl("delete", "clusterpolicy", POLICY_NAME, "--ignore-not-found"),
        )
        if self.proc is not None:
            attempt("stop kyverno", self.proc.stop)
        try:
            left = self.remove_webhooks()
            if left:
                problems.append(f"Kyverno webhook configurations left: {left}")
        except Exception as err:
            problems.append(f"remove Kyverno's webhook configurations: {err}")
        attempt(
            "delete its namespace",
            lambda: self.kubectl(
                "delete", "namespace", self.namespace, "--ignore-not-found", "--wait=false"
            ),
        )
        if self.created_crds:
            attempt(
                "delete its CRDs",
                lambda: self.kubectl(
                    "delete", "--ignore-not-found", "--wait=false", *self.created_crds
                ),
            )
        return problems


def run(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    if ctx.kubeconfig is None:
        return {"error": "the local control plane (hack/cluster.sh) is not running"}
    if ctx.olareg is None:
        return {"error": "the local registry (hack/registries.sh) is not running"}
    if "STREAMGATE_ONLY_LABEL" not in WEBHOOK_SH.read_text():
        return {"skipped": "hack/webhook.sh cannot limit the webhook to labelled namespaces"}
    seed_demo(ctx.olareg.host, DEMO_NAMESPACE)
    images = [f"{ctx.olareg.host}/{DEMO_NAMESPACE}/{n}:v1" for n in DEMO_IMAGES] + [PUBLIC_IMAGE]
    runid = uuid.uuid4().hex[:8]
    ns = {side: f"sgbench-kv{side}-{runid}" for side in SIDES}
    labels = {
        "off": {},
        "echo": {ECHO_LABEL: runid},
        "on": {LABEL: runid},
        "one": {ONE_LABEL: runid},
        "kyverno": {KYVERNO_LABEL: runid},
    }
    marks = {
        "off": "",
        "echo": "",
        "on": "streamgate.io/",
        "one": "streamgate.io/",
        "kyverno": KYVERNO_ANNOTATION,
    }
    policy = ctx.work / "policy-kyverno.yaml"
    policy.write_text(policy_yaml([ctx.olareg.host]))
    env = {
        "STREAMGATE_WEBHOOK_DIR": str(ctx.work / "kv-webhook"),
        "STREAMGATE_WEBHOOK_PORT": str(free_port()),
        "STREAMGATE_METRICS_PORT": str(free_port()),
        "STREAMGATE_RELEASE": f"sgbench-kv-{runid}",
        "STREAMGATE_ONLY_LABEL": f"{LABEL}={runid}",
        "STREAMGATE_POLICY": str(policy),
    }
    env_one = {
        **env,
        "STREAMGATE_WEBHOOK_DIR": str(ctx.work / "kv-webhook-one"),
        "STREAMGATE_WEBHOOK_PORT": str(free_port()),
        "STREAMGATE_METRICS_PORT": str(free_port()),
        "STREAMGATE_RELEASE": f"sgbench-kv-one-{runid}",
        "STREAMGATE_ONLY_LABEL": f"{ONE_LABEL}={runid}",
        "STREAMGATE_HELM_SET": "webhook.calls=one webhook.reinvocationPolicy=IfNeeded",
    }
    kyverno = Kyverno(ctx, runid, ctx.olareg.host)
    binary = kyverno.build()
    echo = EchoWebhook(ctx, runid)
    api = Api(ctx.kubeconfig, ctx.work)
    rounds = len(SIDES)  # each side goes first once per run
    per_round = max(1, s.kyverno_pods // rounds)

    async def main() -> dict[str, Any]:
        async with api.client(4) as client:
            version = (await client.get("/version")).json().get("gitVersion", "")
            await _namespaces_gone(client, within=300)
            problems: list[str] = []
            runs: list[dict[str, Any]] = []
            reports = 0
            try:
                for side in SIDES:
                    resp = await client.post(
                        "/api/v1/namespaces",
                        json={
                            "apiVersion": "v1",
                            "kind": "Namespace",
                            "metadata": {"name": ns[side], "labels": labels[side]},
                        },
                    )
                    resp.raise_for_status()
                _webhook("up", env)
                _webhook("up", env_one)
                echo.up()
                kyverno.up(binary)
                assert kyverno.proc is not None
                for side in JUDGES:  # until each judges its namespace
                    for _ in range(150):
                        _, _, probe = await create_many(
                            client, ns[side], 2, 1, images, annotation_prefix=marks[side]
                        )
                        if probe == 2:
                            break
                        await asyncio.sleep(0.2)
                    else:
                        raise RuntimeError(f"{SIDE_LABELS[side]} never marked a pod in {ns[side]}")
                for side in SIDES:  # warm-up: caches, connections, Kyverno's policy engine
                    await create_many(
                        client, ns[side], 30, 1, images, annotation_prefix=marks[side]
                    )
                pids = {
                    "on": int((ctx.work / "kv-webhook" / "streamgate.pid").read_text()),
                    "one": int((ctx.work / "kv-webhook-one" / "streamgate.pid").read_text()),
                    "echo": echo.proc.pid,
                    "kyverno": kyverno.proc.pid,
                    **{f"cluster:{k}": v for k, v in _cluster_pids().items()},
                }
                for r in range(s.kyverno_runs):
                    lat: dict[str, list[float]] = {side: [] for side in SIDES}
                    cpu: dict[str, dict[str, float]] = {side: {} for side in SIDES}
                    marked = dict.fromkeys(SIDES, 0)
                    whole0 = {k: cpu_seconds(p) for k, p in pids.items()}
                    for rnd in range(rounds):
                        order = SIDES[rnd % rounds :] + SIDES[: rnd % rounds]
                        for side in order:
                            c0 = {k: cpu_seconds(p) for k, p in pids.items()}
                            got, _, m = await create_many(
                                client,
                                ns[side],
                                per_round,
                                1,
                                images,
                                annotation_prefix=marks[side],
                            )
                            c1 = {k: cpu_seconds(p) for k, p in pids.items()}
                            lat[side] += got
                            marked[side] += m
                            for k in pids:
                                cpu[side][k] = cpu[side].get(k, 0.0) + c1[k] - c0[k]
                    whole1 = {k: cpu_seconds(p) for k, p in pids.items()}
                    n = per_round * rounds
                    own = {
                        side: round(1000 * cpu[side][side] / n, 3) for side in SIDES if side in pids
                    }
                    figures = side_figures(lat, own)
                    for side in SIDES:
                        figures[side]["marked"] = marked[side]
                        figures[side]["cluster_cpu_ms_per_create"] = round(
                            1000
                            * sum(v for k, v in cpu[side].items() if k.startswith("cluster:"))
                            / n,
                            3,
                        )
                        if side in pids:
                            figures[side]["whole_run_cpu_ms_per_create"] = round(
                                1000 * (whole1[side] - whole0[side]) / n, 3
                            )
                            figures[side]["rss_mib"] = rss_mib(pids[side])
                    runs.append(
                        {
                            "sides": figures,
                            "ratios": {o: ratios(figures, o) for o in ("on", "one")},
                            "unjudged": unjudged(marked, n),
                        }
                    )
                    log(
                        f"kyverno run {r + 1}: added p50 "
                        + ", ".join(
                            f"{side} {figures[side]['added_p50_ms']['value']:+.2f} ms"
                            for side in SIDES
                            if side != "off"
                        )
                        + "; CPU ms/create "
                        + ", ".join(f"{k} {v:g}" for k, v in own.items())
                    )
                reports = kyverno.reports(ns["kyverno"])
            finally:
                problems += kyverno.down()
                for what, fn in (
                    ("no-op webhook down", echo.down),
                    ("one-call streamgate down", lambda: _webhook("down", env_one)),
                    ("streamgate down", lambda: _webhook("down", env)),
                ):
                    try:
                        fn()
                    except Exception as err:
                        problems.append(f"{what}: {err}")
                for side in SIDES:
                    await client.delete(f"/api/v1/namespaces/{ns[side]}")
                gone = await _namespaces_gone(client, within=300)
                for p in problems:
                    log(f"kyverno clean-up: {p}")
        return {
            "apiserver_version": version,
            "runs": runs,
            "reports": reports,
            "cleanup_seconds": gone,
            "cleanup_problems": problems,
        }

    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the clean-up in `main` runs
    # and no Kyverno webhook stays registered on the shared cluster.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        got = asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, previous)
    creates = per_round * rounds
    return {
        **got,
        "kyverno_version": kyverno.version,
        "creates_per_side_and_run": creates,
        "rounds": rounds,
        "targets": {o: judge(got["runs"], o) for o in ("on", "one")},
    }
