"""Registry load with replicas: 3 streamgate processes behind one address (a round-robin TCP
balancer, bench/roundrobin.py, as a Service spreads connections), N concurrent admissions
over M never-seen images. Each replica caches on its own, so each asks the registry about
each image it is sent; the figure is how often, per image and per replica."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from typing import Any

import httpx

from bench.cold import fire, pods_over
from bench.common import HOST, PYTHON, Proc, free_port, log, percentile, running, summary
from bench.context import Ctx, policy_yaml
from bench.registry import push_cold, seed_demo
from bench.warm import DEMO_NAMESPACE

# The bound: more than about this many registry requests per image per replica
# under load would be worth fixing.
PER_REPLICA_BOUND = 3.0

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def counter_sum(metrics: str, name: str, **match: str) -> float:
    """The sum of the samples of counter `name` (its `_total` series) in a Prometheus text
    exposition whose labels include every `match` pair."""
    total = 0.0
    for m in _SAMPLE.finditer(metrics):
        if m["name"] != f"{name}_total":
            continue
        labels = dict(_LABEL.findall(m["labels"] or ""))
        if all(labels.get(k) == v for k, v in match.items()):
            total += float(m["value"])
    return total


def per_replica(
    before: list[str], after: list[str], registry: str, images: int
) -> list[dict[str, float]]:
    """Each replica's admissions answered and registry requests made between two scrapes of
    its /metrics, and its requests per image of the run."""
    out = []
    for b, a in zip(before, after, strict=True):
        reqs = counter_sum(a, "streamgate_registry_requests", registry=registry) - counter_sum(
            b, "streamgate_registry_requests", registry=registry
        )
        adm = counter_sum(a, "streamgate_admission_requests") - counter_sum(
            b, "streamgate_admission_requests"
        )
        out.append(
            {
                "admissions": adm,
                "registry_requests": reqs,
                "requests_per_image": round(reqs / images, 2) if images else 0.0,
            }
        )
    return out


def verdict(worst_per_replica: float | None) -> str:
    """The report's sentence on the issue's bound."""
    if worst_per_replica is None:
        return "not measured"
    if worst_per_replica <= PER_REPLICA_BOUND:
        return (
            f"within the bound: at most {worst_per_replica:g} registry requests per image per"
            f" replica (≤ {PER_REPLICA_BOUND:g})"
        )
    return (
        f"**over the bound**: {worst_per_replica:g} registry requests per image per replica"
        f" (more than {PER_REPLICA_BOUND:g})"
    )


def _scrape(ports: list[int]) -> list[str]:
    return [httpx.get(f"http://{HOST}:{p}/metrics", timeout=5).text for p in ports]


def run(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    if ctx.olareg is None:
        return {"error": "the local registry (hack/registries.sh) is not running"}
    olareg = ctx.olareg
    seed_demo(olareg.host, DEMO_NAMESPACE)
    policy = ctx.work / "policy-replicas.yaml"
    policy.write_text(policy_yaml([olareg.host]))
    ports = [free_port() for _ in range(s.replicas)]
    metrics_ports = [free_port() for _ in range(s.replicas)]
    front = free_port()
    replicas = [
        ctx.streamgate(f"replica-{i}", port, policy, metrics_port=mport)
        for i, (port, mport) in enumerate(zip(ports, metrics_ports, strict=True))
    ]
    balancer = Proc(
        "roundrobin",
        [PYTHON, "-m", "bench.roundrobin", "--port", str(front)]
        + [a for p in ports for a in ("--upstream", f"{HOST}:{p}")],
        ctx.work / "logs" / "roundrobin.log",
    )
    url = f"https://{HOST}:{front}"
    runid = uuid.uuid4().hex[:6]
    runs: list[dict[str, Any]] = []
    by_kind: dict[str, list[int]] = {}
    with running(*replicas, balancer):
        for proc, port in zip(replicas, ports, strict=True):
            proc.wait_https(f"https://{HOST}:{port}/readyz", ctx.certs.ca)
        balancer.wait_https(url + "/readyz", ctx.certs.ca)
        # A known image through each replica first: its registry connection is open.
        warm = pods_over([f"{olareg.host}/{DEMO_NAMESPACE}/streamable:v1"], s.replicas)
        asyncio.run(fire(url, ctx, warm))
        for r in range(s.replicas_runs):
            prefix = f"sgreplicas/{runid}/r{r}"
            pushed = push_cold(olareg.host, prefix, s.cold_images)
            kinds = {f"{prefix}/img{i:03d}": kind for i, (_, kind) in enumerate(pushed)}
            reviews = pods_over([f"{olareg.host}/{ref}" for ref, _ in pushed], s.cold_admissions)
            before = _scrape(metrics_ports)
            offset = olareg.offset()
            answers = asyncio.run(fire(url, ctx, reviews))
            time.sleep(0.5)  # olareg writes its log line after answering
            after = _scrape(metrics_ports)
            counts = olareg.requests_by_repo(offset, prefix)
            per_image = [sum(counts.get(repo, Counter()).values()) for repo in kinds]
            for repo, kind in kinds.items():
                by_kind.setdefault(kind, []).append(sum(counts.get(repo, Counter()).values()))
            each = per_replica(before, after, olareg.host, len(kinds))
            lat = [a for a, _ in answers]
            runs.append(
                {
                    "replicas": each,
                    "registry_log_total": sum(per_image),
                    "max_requests_per_image": max(per_image),
                    "mean_requests_per_image": round(sum(per_image) / len(per_image), 2),
                    "worst_replica_per_image": max(x["requests_per_image"] for x in each),
                    "p50_ms": percentile(lat, 50),
                    "p99_ms": percentile(lat, 99),
                }
            )
            log(
                f"replicas run {r + 1}: registry requests per image "
                f"{runs[-1]['mean_requests_per_image']} (all replicas), per replica "
                + ", ".join(f"{x['requests_per_image']:g}" for x in each)
            )
    worst = max(x["worst_replica_per_image"] for x in runs) if runs else None
    return {
        "replicas": s.replicas,
        "admissions": s.cold_admissions,
        "images": s.cold_images,
        "runs": runs,
        "mean_requests_per_image": summary([x["mean_requests_per_image"] for x in runs], 2),
        "max_requests_per_image": max((x["max_requests_per_image"] for x in runs), default=None),
        "p50_ms": summary([x["p50_ms"] for x in runs], 1),
        "p99_ms": summary([x["p99_ms"] for x in runs], 1),
        "by_kind": {
            kind: {"min": min(v), "max": max(v), "mean": round(sum(v) / len(v), 2)}
            for kind, v in by_kind.items()
        },
        "worst_replica_per_image": worst,
        "within_bound": worst is not None and worst <= PER_REPLICA_BOUND,
    }
