"""The admission's own cost, without HTTP or TLS: µs per review through `AdmissionApp.handle`
(parse, judge, log, count, render), with the production pieces (metrics, decision log to a
file, the registry source warmed against the local olareg, a node inventory).

    python -m bench.inprocess [--registry 127.0.0.1:25000] [--seconds 3] [--profile out.pstats]
                              [--remediation]

`--remediation` judges the same reviews with `remediation: convert` on (their namespace's
decisions are then never memoised, and each not-streamable image is booked, then found booked):
the cost remediation adds to an admission. The remediator's worker runs: olareg has no
/acr/v1 endpoints, so each start fails (404) and the digest is not asked for again within
`retrySeconds`, the steady state of a namespace whose images can't be converted.

It is the quick loop for profiling a change; `make bench` measures the server as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from app.core.nodes.placement import PlacementIndex
from app.registry.source import RegistryVerdictSource
from app.telemetry.logs import configure
from app.telemetry.metrics import Metrics
from app.webhook.reload import load_policy
from app.webhook.remediator import Remediator
from app.webhook.serve import ServeSettings, build_admission
from app.webhook.server import create_app
from bench.context import policy_yaml
from bench.harness import inventory
from bench.registry import seed_demo
from bench.reviews import review_set
from bench.warm import DEMO_NAMESPACE


def _receiver(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def run(
    registry: str, seconds: float, profile: Path | None, work: Path, *, remediation: bool = False
) -> dict[str, Any]:
    policy_file = work / "policy.yaml"
    policy_file.write_text(policy_yaml([registry]) + ("remediation: convert\n" * remediation))
    policy = load_policy(policy_file)
    metrics = Metrics()
    source = RegistryVerdictSource(policy.registry, acr_hosts=policy.is_acr, observer=metrics)
    settings = ServeSettings(host="127.0.0.1", port=0, policy_path=policy_file)
    admission = build_admission(
        settings,
        verdicts=source,
        placement=PlacementIndex(inventory(60, 12), policy.pools),
        policy=policy,
        observer=metrics,
    )
    worker = None
    if remediation:
        admission.remediator = Remediator(source, admission.policy)
        worker = asyncio.create_task(admission.remediator.run())
    edge = create_app(admission)
    bodies = [json.dumps(r).encode() for _, r in review_set(registry, DEMO_NAMESPACE)]
    scope = {"type": "http", "method": "POST", "headers": []}
    results: dict[str, Any] = {}
    try:
        for endpoint in ("validate", "mutate"):
            for body in bodies:  # warm the caches, check the answers
                status, out = await edge.handle(scope, _receiver(body), endpoint)
                assert status == 200, out
            if admission.remediator is not None:
                await asyncio.wait_for(admission.remediator.wait_idle(), 30)
            profiler = cProfile.Profile() if profile else None
            n = 0
            cpu = time.process_time()
            deadline = time.perf_counter() + seconds
            if profiler:
                profiler.enable()
            while time.perf_counter() < deadline:
                for body in bodies:
                    await edge.handle(scope, _receiver(body), endpoint)
                n += len(bodies)
            if profiler:
                profiler.disable()
                profiler.dump_stats(f"{profile}.{endpoint}")
            results[endpoint] = round((time.process_time() - cpu) / n * 1e6, 1)
    finally:
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        await source.aclose()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", default="127.0.0.1:25000")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--profile", type=Path)
    p.add_argument("--remediation", action="store_true", help="with remediation: convert on")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        configure("info", "text")
        stream = (work / "decisions.log").open("a")
        logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
        seed_demo(args.registry, DEMO_NAMESPACE)
        out = asyncio.run(
            run(args.registry, args.seconds, args.profile, work, remediation=args.remediation)
        )
    print(json.dumps({"cpu_us_per_review": out}))


if __name__ == "__main__":
    main()
