"""Through the API server: Pod creates with and without the webhook, in the same run."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import ROOT, cpu_seconds, free_port, log, percentile, summary
from bench.context import Ctx, policy_yaml
from bench.registry import seed_demo
from bench.reviews import DEMO_IMAGES, PUBLIC_IMAGE
from bench.warm import DEMO_NAMESPACE

WEBHOOK_SH = ROOT / "hack" / "webhook.sh"
LABEL = "streamgate-bench"
ECHO_LABEL = "streamgate-bench-echo"
ONE_LABEL = "streamgate-bench-one"  # streamgate in one-call mode (chart webhook.calls: one)
# The chart's webhook names, and the names the no-op control's copy of them gets (the
# apiserver's metrics are labelled by webhook name).
WEBHOOK_NAMES = {
    "mutate.streamgate.io": "/mutate",
    "validate.streamgate.io": "/validate",
    "admit.streamgate.io": "/admit (one-call mode)",
    "mutate.echo.bench.streamgate.io": "no-op /mutate",
    "validate.echo.bench.streamgate.io": "no-op /validate",
}


class Api:
    """Just enough of a Kubernetes client: the kubeconfig's client certificate, HTTP/2."""

    def __init__(self, kubeconfig: str, work: Path) -> None:
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.server = cluster["server"]
        files = {}
        for key, name in (
            ("certificate-authority", "ca.crt"),
            ("client-certificate", "tls.crt"),
            ("client-key", "tls.key"),
        ):
            source = cluster if key == "certificate-authority" else user
            path = work / "kube" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if f"{key}-data" in source:
                path.write_bytes(base64.b64decode(source[f"{key}-data"]))
                os.chmod(path, 0o600)
            else:
                path = Path(source[key])
            files[key] = str(path)
        self.ca, self.cert, self.key = (
            files["certificate-authority"],
            files["client-certificate"],
            files["client-key"],
        )

    def client(self, concurrency: int) -> httpx.AsyncClient:
        import ssl

        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        return httpx.AsyncClient(
            base_url=self.server,
            verify=ctx,
            http2=True,
            timeout=60,
            limits=httpx.Limits(max_connections=concurrency),
        )


def pod(namespace: str, images: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "sgbench-",
            "namespace": namespace,
            "labels": {"app": "sgbench"},
        },
        "spec": {
            # A scheduler that does not exist: the pods stay Pending, nothing else runs.
            "schedulerName": "sgbench-unscheduled",
            "containers": [{"name": f"c{k}", "image": im} for k, im in enumerate(images)],
        },
    }


async def create_many(
    client: httpx.AsyncClient,
    namespace: str,
    count: int,
    concurrency: int,
    images: list[str],
    *,
    annotation_prefix: str = "streamgate.io/",
) -> tuple[list[float], float, int]:
    """Create `count` pods, `concurrency` at a time: per-create ms, wall seconds, and how many
    came back with an annotation under `annotation_prefix` (the webhook's mark)."""
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    annotated = 0

    async def one(i: int) -> None:
        nonlocal annotated
        count_images = 2 + i % 5
        picked = [images[(i + k) % len(images)] for k in range(count_images)]
        async with sem:
            t0 = time.perf_counter()
            resp = await client.post(
                f"/api/v1/namespaces/{namespace}/pods", json=pod(namespace, picked)
            )
            lat.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 201:
            raise RuntimeError(f"create in {namespace}: {resp.status_code} {resp.text[:300]}")
        annotations = resp.json()["metadata"].get("annotations") or {}
        annotated += any(k.startswith(annotation_prefix) for k in annotations)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return lat, time.perf_counter() - t0, annotated


def _webhook(cmd: str, env: dict[str, str]) -> None:
    res = subprocess.run(
        ["bash", str(WEBHOOK_SH), cmd],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=180,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"hack/webhook.sh {cmd} failed: {res.stderr[-1500:]}")


class EchoWebhook:
    """The control: the warm-path baseline (bench/baseline.py, parses the review and answers
    `allowed: true`) registered as both webhooks, through the chart's own configurations
    (URL mode), for namespaces labelled `ECHO_LABEL=<run>`. What it adds to a create is
    what any webhook adds here; streamgate's figure beyond it is its own."""

    def __init__(self, ctx: Ctx, runid: str) -> None:
        self.ctx, self.runid = ctx, runid
        self.port = free_port()
        self.proc = ctx.baseline(f"echo-webhook-{runid}", self.port)
        self.manifest = ctx.work / f"echo-webhook-{runid}.yaml"

    def _render(self) -> str:
        helm = (
            subprocess.run(
                ["bash", str(ROOT / "hack" / "k8s-binaries.sh"), "--print-dir"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        ca = base64.b64encode(self.ctx.certs.ca.read_bytes()).decode()
        out = subprocess.run(
            [
                f"{helm}/helm",
                "template",
                f"sgbench-echo-{self.runid}",
                str(ROOT / "chart"),
                "--set",
                "deployment.enabled=false",
                "--set",
                f"webhook.url=https://127.0.0.1:{self.port}",
                "--set",
                f"webhook.caBundle={ca}",
                "--set",
                f"webhook.namespaceSelectorExpressions[0].key={ECHO_LABEL}",
                "--set",
                "webhook.namespaceSelectorExpressions[0].operator=In",
                "--set-string",
                f"webhook.namespaceSelectorExpressions[0].values[0]={self.runid}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.replace(
            "name: mutate.streamgate.io", "name: mutate.echo.bench.streamgate.io"
        ).replace("name: validate.streamgate.io", "name: validate.echo.bench.streamgate.io")

    def up(self) -> None:
        self.proc.start()
        self.proc.wait_https(f"https://127.0.0.1:{self.port}/healthz", self.ctx.certs.ca)
        self.manifest.write_text(self._render())
        self._kubectl("apply")

    def down(self) -> None:
        if self.manifest.exists():
            self._kubectl("delete", "--ignore-not-found")
        self.proc.stop()

    def _kubectl(self, *verb: str) -> None:
        res = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.ctx.kubeconfig), *verb, "-f", str(self.manifest)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(verb)} (echo webhook): {res.stderr[-800:]}")


def _admission_seconds(metrics_port: int) -> dict[str, tuple[float, float]]:
    """endpoint -> (sum, count) of streamgate_admission_duration_seconds."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    out: dict[str, list[float]] = {}
    for m in re.finditer(
        r'^streamgate_admission_duration_seconds_(sum|count)\{endpoint="(\w+)"\} (\S+)$',
        text,
        re.M,
    ):
        out.setdefault(m[2], [0.0, 0.0])[0 if m[1] == "sum" else 1] = float(m[3])
    return {k: (v[0], v[1]) for k, v in out.items()}


async def _apiserver_webhook_seconds(client: httpx.AsyncClient) -> dict[str, tuple[float, float]]:
    """webhook name -> (sum, count) of the apiserver's own time per call to it (CREATE)."""
    text = (await client.get("/metrics")).text
    out: dict[str, list[float]] = {}
    for m in re.finditer(
        r"^apiserver_admission_webhook_admission_duration_seconds_(sum|count)"
        r'\{name="([\w.]+)",operation="CREATE",rejected="false"[^}]*\} (\S+)$',
        text,
        re.M,
    ):
        if m[2] in WEBHOOK_NAMES:
            out.setdefault(WEBHOOK_NAMES[m[2]], [0.0, 0.0])[0 if m[1] == "sum" else 1] += float(
                m[3]
            )
    return {k: (v[0], v[1]) for k, v in out.items()}


def _mean_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    return {
        k: round(
            1000 * (v[0] - before.get(k, (0, 0))[0]) / max(1.0, v[1] - before.get(k, (0, 0))[1]), 3
        )
        for k, v in after.items()
    }


def run(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    if ctx.kubeconfig is None:
        return {"error": "the local control plane (hack/cluster.sh) is not running"}
    if ctx.olareg is None:
        return {"error": "the local registry (hack/registries.sh) is not running"}
    if "STREAMGATE_ONLY_LABEL" not in WEBHOOK_SH.read_text():
        # Without it the bench's webhook would judge every namespace of a shared cluster.
        return {"skipped": "hack/webhook.sh cannot limit the webhook to labelled namespaces"}
    seed_demo(ctx.olareg.host, DEMO_NAMESPACE)
    images = [f"{ctx.olareg.host}/{DEMO_NAMESPACE}/{n}:v1" for n in DEMO_IMAGES] + [PUBLIC_IMAGE]
    runid = uuid.uuid4().hex[:8]
    on_ns, off_ns = f"sgbench-on-{runid}", f"sgbench-off-{runid}"
    echo_ns = f"sgbench-echo-{runid}"
    one_ns = f"sgbench-one-{runid}"
    echo = EchoWebhook(ctx, runid)
    policy = ctx.work / "policy-apiserver.yaml"
    policy.write_text(policy_yaml([ctx.olareg.host]))
    metrics_port = free_port()
    env = {
        "STREAMGATE_WEBHOOK_DIR": str(ctx.work / "webhook"),
        "STREAMGATE_WEBHOOK_PORT": str(free_port()),
        "STREAMGATE_METRICS_PORT": str(metrics_port),
        "STREAMGATE_RELEASE": f"sgbench-{runid}",
        "STREAMGATE_ONLY_LABEL": f"{LABEL}={runid}",
        "STREAMGATE_POLICY": str(policy),
    }
    one_metrics_port = free_port()
    env_one = {
        **env,
        "STREAMGATE_WEBHOOK_DIR": str(ctx.work / "webhook-one"),
        "STREAMGATE_WEBHOOK_PORT": str(free_port()),
        "STREAMGATE_METRICS_PORT": str(one_metrics_port),
        "STREAMGATE_RELEASE": f"sgbench-one-{runid}",
        "STREAMGATE_ONLY_LABEL": f"{ONE_LABEL}={runid}",
        "STREAMGATE_HELM_SET": "webhook.calls=one webhook.reinvocationPolicy=IfNeeded",
    }
    api = Api(ctx.kubeconfig, ctx.work)

    async def main() -> dict[str, Any]:
        async with api.client(s.api_concurrency) as client:
            version = (await client.get("/version")).json().get("gitVersion", "")
            await _namespaces_gone(client, within=300)  # an earlier run's, still deleting
            for ns, labels in (
                (on_ns, {LABEL: runid}),
                (off_ns, {}),
                (echo_ns, {ECHO_LABEL: runid}),
                (one_ns, {ONE_LABEL: runid}),
            ):
                resp = await client.post(
                    "/api/v1/namespaces",
                    json={
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": ns, "labels": labels},
                    },
                )
                resp.raise_for_status()
            try:
                _webhook("up", env)
                _webhook("up", env_one)
                echo.up()
                # Until the apiserver sees the new configurations, creates pass unjudged.
                for judged in (on_ns, one_ns):
                    for _ in range(100):
                        _, _, annotated = await create_many(client, judged, 5, 5, images)
                        if annotated == 5:
                            break
                        await asyncio.sleep(0.2)
                    else:
                        raise RuntimeError("the webhook never annotated a pod in " + judged)
                for ns in (on_ns, off_ns, echo_ns, one_ns):  # warm-up: caches, connections
                    await create_many(client, ns, 50, s.api_concurrency, images)
                loads = [(1, s.api_sequential_pods), (s.api_concurrency, s.api_pods)]
                rounds: dict[int, dict[str, list[dict[str, Any]]]] = {}
                # Each webhook process's CPU while its namespace's creates run: what it does
                # per create, beside the apiserver's side of the call.
                pids = {
                    "on": int((ctx.work / "webhook" / "streamgate.pid").read_text()),
                    "one": int((ctx.work / "webhook-one" / "streamgate.pid").read_text()),
                    "echo": echo.proc.pid,
                }
                cpu: dict[int, dict[str, list[float]]] = {}
                m0 = {
                    **_admission_seconds(metrics_port),
                    **_admission_seconds(one_metrics_port),
                }
                seen_by_apiserver: dict[int, dict[str, float]] = {}
                for concurrency, pods in loads:
                    a0 = await _apiserver_webhook_seconds(client)
                    per_round = max(1, pods // s.api_rounds)
                    rounds[concurrency] = {"on": [], "off": [], "echo": [], "one": []}
                    cpu[concurrency] = {"on": [0.0, 0], "echo": [0.0, 0], "one": [0.0, 0]}
                    for r in range(s.api_rounds):
                        order = [("on", on_ns), ("off", off_ns), ("echo", echo_ns), ("one", one_ns)]
                        for key, ns in order[r % 4 :] + order[: r % 4]:
                            cpu0 = cpu_seconds(pids[key]) if key in pids else 0.0
                            lat, wall, annotated = await create_many(
                                client, ns, per_round, concurrency, images
                            )
                            if key in pids:
                                cpu[concurrency][key][0] += cpu_seconds(pids[key]) - cpu0
                                cpu[concurrency][key][1] += per_round
                            rounds[concurrency][key].append(
                                {
                                    "p50_ms": percentile(lat, 50),
                                    "p99_ms": percentile(lat, 99),
                                    "rate": per_round / wall,
                                    "annotated": annotated,
                                    "pods": per_round,
                                    "latencies_ms": lat,
                                }
                            )
                        log(
                            f"apiserver {concurrency} at a time, round {r + 1}: with "
                            f"{rounds[concurrency]['on'][-1]['p99_ms']:.1f} ms p99, no-op webhook "
                            f"{rounds[concurrency]['echo'][-1]['p99_ms']:.1f} ms p99, without "
                            f"{rounds[concurrency]['off'][-1]['p99_ms']:.1f} ms p99"
                        )
                    seen_by_apiserver[concurrency] = _mean_ms(
                        a0, await _apiserver_webhook_seconds(client)
                    )
                m1 = {
                    **_admission_seconds(metrics_port),
                    **_admission_seconds(one_metrics_port),
                }
            finally:
                echo.down()
                _webhook("down", env_one)
                _webhook("down", env)
            lat, _, annotated = await create_many(
                client, on_ns, max(1, s.api_pods // s.api_rounds), s.api_concurrency, images
            )
            down = {
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "annotated": annotated,
            }
            for ns in (on_ns, off_ns, echo_ns, one_ns):
                await client.delete(f"/api/v1/namespaces/{ns}")
            # The namespace controller deletes thousands of pods for a while after: wait, so
            # the next section does not measure beside that work.
            gone = await _namespaces_gone(client, within=300)
        webhook = {
            e: round(
                1000
                * (m1[e][0] - m0.get(e, (0, 0))[0])
                / max(1.0, m1[e][1] - m0.get(e, (0, 0))[1]),
                3,
            )
            for e in m1
        }
        return {
            "version": version,
            "cleanup_seconds": gone,
            "rounds": rounds,
            "cpu_ms_per_create": {
                c: {k: round(1000 * v[0] / max(1, v[1]), 3) for k, v in sides.items()}
                for c, sides in cpu.items()
            },
            "down": down,
            "webhook_ms": webhook,
            "seen_by_apiserver": seen_by_apiserver,
        }

    got = asyncio.run(main())
    out: dict[str, Any] = {
        "apiserver_version": got["version"],
        "cleanup_seconds": got["cleanup_seconds"],
        "rounds": s.api_rounds,
        "down": got["down"],
        "webhook_latency": ", ".join(
            f"mean {v} ms per /{k}" for k, v in sorted(got["webhook_ms"].items())
        ),
        "loads": [
            {
                **_load(concurrency, rounds),
                "apiserver_ms_per_call": got["seen_by_apiserver"][concurrency],
                "webhook_cpu_ms_per_create": got["cpu_ms_per_create"][concurrency],
            }
            for concurrency, rounds in got["rounds"].items()
        ],
    }
    return out


async def _namespaces_gone(client: httpx.AsyncClient, within: float) -> float:
    """Waits until no benchmark namespace is left (deleted ones terminate while their pods
    go); returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        listed = (await client.get("/api/v1/namespaces")).json().get("items") or []
        left = [n for n in listed if n["metadata"]["name"].startswith("sgbench-")]
        if not left:
            break
        await asyncio.sleep(1.0)
    else:
        log(f"apiserver: benchmark namespaces still terminating after {within:.0f} s")
    return round(time.monotonic() - started, 1)


def _load(concurrency: int, rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One load's figures: each side's median over the rounds, and the added latency as the
    median of the per-round differences (rounds alternate which side goes first)."""
    out: dict[str, Any] = {"concurrency": concurrency, "pods_per_round": rounds["on"][0]["pods"]}
    sides = [key for key in ("on", "off", "echo", "one") if key in rounds]
    for key in sides:
        out[key] = {
            k: summary([x[k] for x in rounds[key]], 2) for k in ("p50_ms", "p99_ms", "rate")
        }
        out[key]["annotated"] = sum(x["annotated"] for x in rounds[key])
    pooled = {key: [v for x in rounds[key] for v in x["latencies_ms"]] for key in rounds}
    for name, (a, b) in {
        "added": ("on", "off"),  # streamgate against no webhook
        "added_by_noop": ("echo", "off"),  # any webhook against no webhook
        "beyond_noop": ("on", "echo"),  # streamgate against the no-op webhook
        "added_one": ("one", "off"),  # streamgate in one-call mode against no webhook
        "one_vs_noop": ("one", "echo"),  # one-call streamgate against the two-call no-op
    }.items():
        if a not in rounds or b not in rounds:
            continue
        for q in ("p50_ms", "p99_ms"):
            out[f"{name}_{q}"] = summary(
                [x[q] - y[q] for x, y in zip(rounds[a], rounds[b], strict=True)], 2
            )
            out[f"pooled_{name}_{q}"] = pooled_difference(pooled[a], pooled[b], float(q[1:3]))
    for key in sides:
        out[key]["pooled_p50_ms"] = round(percentile(pooled[key], 50), 2)
        out[key]["pooled_p99_ms"] = round(percentile(pooled[key], 99), 2)
        out[key]["creates"] = len(pooled[key])
    return out


def pooled_difference(
    a: list[float], b: list[float], q: float, resamples: int = 1000, seed: int = 9
) -> dict[str, Any]:
    """The q-th percentile of all of `a`'s creates minus all of `b`'s, with a 90 % bootstrap
    interval: a p99 over one round's ~130 creates is its second-highest value, so the
    per-round figures swing by ±10 ms; pooling every round's creates gives the estimate."""
    rng = random.Random(seed)
    diffs = sorted(
        percentile(rng.choices(a, k=len(a)), q) - percentile(rng.choices(b, k=len(b)), q)
        for _ in range(resamples)
    )
    return {
        "value": round(percentile(a, q) - percentile(b, q), 2),
        "low": round(diffs[int(0.05 * resamples)], 2),
        "high": round(diffs[int(0.95 * resamples) - 1], 2),
    }
