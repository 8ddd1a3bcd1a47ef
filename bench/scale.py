"""Scale of state: memory and latency with 100,000 cached verdicts and 5,000 nodes."""

from __future__ import annotations

from typing import Any

from bench.common import HOST, PYTHON, ROOT, Proc, free_port, log, rss_mib, running, summary
from bench.context import Ctx, policy_yaml
from bench.load import wrk
from bench.warm import check_answers, prepare_reviews


def harness(ctx: Ctx, name: str, port: int, policy: str, extra: list[str]) -> Proc:
    args = [
        PYTHON,
        "-m",
        "bench.harness",
        "--port",
        str(port),
        "--cert",
        str(ctx.certs.cert),
        "--key",
        str(ctx.certs.key),
        "--policy",
        policy,
        *extra,
    ]
    return Proc(
        name,
        args,
        ctx.work / "logs" / f"{name}.log",
        env=ctx.app_env(),
        cwd=ctx.settings.app_root or ROOT,
    )


def _setup_seconds(proc: Proc) -> float:
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("harness: state ready in "):
            return float(line.split()[-1].rstrip("s"))
    return float("nan")


def run(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    reviews, files = prepare_reviews(ctx)
    registry = ctx.olareg.host if ctx.olareg else "127.0.0.1:25000"
    policy = ctx.work / "policy-scale.yaml"
    policy.write_text(
        policy_yaml([ctx.olareg.host] if ctx.olareg else [], max_entries=s.scale_verdicts + 1000)
    )
    warm = ctx.results.get("warm", {})
    sat = (warm.get("saturation") or {}).get("validate", {}).get("rps", {}).get("median")
    rate = round(min(300.0, sat / 2)) if sat else 200.0
    nodes = ["--nodes", str(s.scale_nodes), "--pools", str(s.scale_pools)]
    fill = ["--fill-verdicts", str(s.scale_verdicts), "--fill-registry", registry]
    configs = [
        ("empty caches, no inventory", []),
        (f"{s.scale_verdicts:,} verdicts cached", fill),
        (f"{s.scale_nodes:,} nodes in {s.scale_pools} pools", nodes),
        ("both", [*fill, *nodes]),
    ]
    rows: list[dict[str, Any]] = []
    for label, extra in configs:
        port = free_port()
        proc = harness(ctx, f"scale-{len(rows)}", port, str(policy), extra)
        url = f"https://{HOST}:{port}"
        with running(proc):
            proc.wait_https(url + "/readyz", ctx.certs.ca, timeout=180)
            check_answers(url, ctx.certs.ca, reviews)
            runs = [
                wrk(url, files["validate"], seconds=s.seconds, connections=s.connections, rate=rate)
                for _ in range(s.runs)
            ]
            rss = [rss_mib(proc.pid)]
            rows.append(
                {
                    "label": label,
                    "rss_mib": summary(rss),
                    "p50_ms": summary([r["p50_ms"] for r in runs], 2),
                    "p99_ms": summary([r["p99_ms"] for r in runs], 2),
                    "setup_seconds": round(_setup_seconds(proc), 2),
                    "raw": runs,
                }
            )
        log(f"scale {label}: RSS {rss[0]} MiB, p99 {rows[-1]['p99_ms']['median']} ms")
    base, both = rows[0]["p99_ms"]["median"], rows[-1]["p99_ms"]["median"]
    return {
        "verdicts": s.scale_verdicts,
        "nodes": s.scale_nodes,
        "pools": s.scale_pools,
        "rate": rate,
        "rows": rows,
        "p99_growth_ms": round(both - base, 2) if base is not None and both is not None else None,
        "rss_growth_mib": round(rows[-1]["rss_mib"]["median"] - rows[0]["rss_mib"]["median"], 1),
    }
