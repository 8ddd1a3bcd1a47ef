"""Cold path: N admissions at once over M images nobody asked about yet."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any

import httpx

from bench.common import (
    HOST,
    PYTHON,
    Proc,
    client_context,
    free_port,
    log,
    percentile,
    running,
    summary,
)
from bench.context import Ctx, policy_yaml
from bench.registry import push_cold, seed_demo
from bench.reviews import pod_review
from bench.warm import DEMO_NAMESPACE


def pods_over(images: list[str], n: int) -> list[dict[str, Any]]:
    """n Pod reviews, 2–6 containers each, together covering every image many times."""
    out = []
    k = 0
    for i in range(n):
        count = 2 + i % 5
        picked = []
        for _ in range(count):
            picked.append(images[k % len(images)])
            k += 1
        out.append(pod_review(picked, app=f"cold{i}"))
    return out


async def fire(
    url: str, ctx: Ctx, reviews: list[dict[str, Any]]
) -> list[tuple[float, dict[str, Any]]]:
    """Every review at once, each on its own (already open) connection."""
    n = len(reviews)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(
        base_url=url, verify=client_context(ctx.certs.ca), limits=limits, timeout=30
    ) as client:
        await asyncio.gather(*(client.get("/healthz") for _ in range(n)))  # open n connections
        bodies = [json.dumps(r).encode() for r in reviews]

        async def one(body: bytes) -> tuple[float, dict[str, Any]]:
            t0 = time.perf_counter()
            resp = await client.post("/validate", content=body)
            took = (time.perf_counter() - t0) * 1000
            resp.raise_for_status()
            return took, resp.json()["response"]

        return await asyncio.gather(*(one(b) for b in bodies))


def run(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    if ctx.olareg is None:
        return {"error": "the local registry (hack/registries.sh) is not running"}
    olareg = ctx.olareg
    seed_demo(olareg.host, DEMO_NAMESPACE)
    proxy_port = free_port()
    proxy_host = f"{HOST}:{proxy_port}"
    proxy = Proc(
        "delayproxy",
        [
            PYTHON,
            "-m",
            "bench.delayproxy",
            "--port",
            str(proxy_port),
            "--upstream",
            olareg.host,
            "--delay-ms",
            str(s.cold_delay_ms),
        ],
        ctx.work / "logs" / "delayproxy.log",
    )
    policy = ctx.work / "policy-cold.yaml"
    policy.write_text(policy_yaml([olareg.host, proxy_host]))
    runid = uuid.uuid4().hex[:6]
    cases = [
        ("local olareg", olareg.host),
        (f"olareg + {s.cold_delay_ms:g} ms per request", proxy_host),
    ]
    result: dict[str, Any] = {"admissions": s.cold_admissions, "images": s.cold_images, "cases": []}
    by_kind: dict[str, list[int]] = {}
    which: dict[str, Counter[str]] = {}
    with running(proxy):
        for label, registry in cases:
            port = free_port()
            sg = ctx.streamgate(f"cold-{registry.replace(':', '-')}", port, policy)
            url = f"https://{HOST}:{port}"
            per_run: list[dict[str, Any]] = []
            with running(sg):
                sg.wait_https(url + "/readyz", ctx.certs.ca)
                # One known image first: connections to the registry are open, as in a
                # server that has been running (olareg is anonymous: no tokens to warm).
                warm = pods_over([f"{registry}/{DEMO_NAMESPACE}/streamable:v1"], 1)
                asyncio.run(fire(url, ctx, warm))
                for r in range(s.cold_runs):
                    prefix = f"sgcold/{runid}/{'d' if registry == proxy_host else 'n'}{r}"
                    pushed = push_cold(olareg.host, prefix, s.cold_images)
                    kinds = {f"{prefix}/img{i:03d}": kind for i, (_, kind) in enumerate(pushed)}
                    images = [f"{registry}/{ref}" for ref, _ in pushed]
                    reviews = pods_over(images, s.cold_admissions)
                    offset = olareg.offset()
                    answers = asyncio.run(fire(url, ctx, reviews))
                    time.sleep(0.5)  # olareg writes its log line after answering
                    counts = olareg.requests_by_repo(offset, prefix)
                    per_image = [sum(counts.get(repo, Counter()).values()) for repo in kinds]
                    for repo, kind in kinds.items():
                        c = counts.get(repo, Counter())
                        by_kind.setdefault(kind, []).append(sum(c.values()))
                        which.setdefault(kind, Counter())[
                            ", ".join(f"{k} ×{v}" for k, v in sorted(c.items()))
                        ] += 1
                    lat = [a for a, _ in answers]
                    unknown = sum(
                        1
                        for _, resp in answers
                        for w in resp.get("warnings", [])
                        if "timed out" in w or "could not" in w
                    )
                    per_run.append(
                        {
                            "p50_ms": percentile(lat, 50),
                            "p90_ms": percentile(lat, 90),
                            "p99_ms": percentile(lat, 99),
                            "max_ms": max(lat),
                            "max_requests_per_image": max(per_image),
                            "mean_requests_per_image": sum(per_image) / len(per_image),
                            "total_requests": sum(per_image),
                            "unknown_warnings": unknown,
                        }
                    )
                    log(
                        f"cold {label} run {r + 1}: p50 {per_run[-1]['p50_ms']:.0f} ms, "
                        f"max {per_run[-1]['max_ms']:.0f} ms, requests/image max "
                        f"{per_run[-1]['max_requests_per_image']}"
                    )
            result["cases"].append(
                {
                    "label": label,
                    **{
                        k: summary([x[k] for x in per_run], 1)
                        for k in (
                            "p50_ms",
                            "p90_ms",
                            "p99_ms",
                            "max_ms",
                            "max_requests_per_image",
                            "mean_requests_per_image",
                            "total_requests",
                            "unknown_warnings",
                        )
                    },
                }
            )
    result["by_kind"] = {
        kind: {
            "min": min(v),
            "max": max(v),
            "which": "; ".join(
                f"{w} ({n} images)" if len(which[kind]) > 1 else w
                for w, n in which[kind].most_common(3)
            ),
        }
        for kind, v in by_kind.items()
    }
    single = [n for k, v in by_kind.items() if k != "multiarch" for n in v]
    result["single_arch_max_requests"] = max(single) if single else None
    result["multiarch_max_requests"] = max(by_kind.get("multiarch", [0]))
    result["max_requests_per_image"] = max(n for v in by_kind.values() for n in v)
    return result
