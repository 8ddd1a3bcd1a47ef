"""Policy reports at scale: one namespace of N Deployments (2,000), `streamgate report` against
the local control plane with the real PolicyReport CRD (hack/policyreport-crds.sh).

Measured: the time from the reporter's start until the namespace's reports hold every
workload (its first full judgement: watches listed, images looked up, reports written), the
reports' size (bytes of each object as stored) and the writes it made; then the same after
one Deployment changes, after a tenth of them change at once (coalescing), and after a
quarter are deleted. The writes come from the reporter's log ("reports: wrote/deleted").
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, Proc, cpu_seconds, log, rss_mib
from bench.context import Ctx, policy_yaml
from bench.registry import seed_demo

CHUNK = 250  # Deployments per kubectl apply


def _kubectl(ctx: Ctx, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
    res = subprocess.run(
        ["kubectl", "--kubeconfig", str(ctx.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {res.stderr[-800:]}")
    return res.stdout


def _crds(ctx: Ctx) -> None:
    out = subprocess.run(
        [str(ROOT / "hack" / "policyreport-crds.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.strip()
    _kubectl(ctx, "apply", "--server-side", "--force-conflicts", "-f", out)
    _kubectl(ctx, "wait", "--for=condition=Established", "crd/policyreports.wgpolicyk8s.io")


def _deployment(ns: str, i: int, image: str) -> dict[str, Any]:
    name = f"app-{i:05d}"
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if i % 2:
        spec["nodeSelector"] = {"kubernetes.azure.com/agentpool": "streamub"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def _apply(ctx: Ctx, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), CHUNK):
        body = {"apiVersion": "v1", "kind": "List", "items": items[start : start + CHUNK]}
        _kubectl(ctx, "apply", "-f", "-", stdin=json.dumps(body))


def _reports(ctx: Ctx, ns: str) -> list[dict[str, Any]]:
    out = _kubectl(ctx, "get", "policyreports", "-n", ns, "-o", "json")
    return list(json.loads(out)["items"])


def _state(ctx: Ctx, ns: str) -> dict[tuple[str, str], str]:
    got = {}
    for report in _reports(ctx, ns):
        for r in report.get("results") or ():
            got[(r["resources"][0]["name"], r["rule"])] = r["result"]
    return got


def _until(what: str, check: Any, timeout: float = 600) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(1.0)  # each look reads every report (MBs): not too often
    raise RuntimeError(f"timed out waiting for {what}")


def _counts(log_path: Path) -> tuple[int, int]:
    text = log_path.read_text(errors="replace")
    return text.count("reports: wrote "), text.count("reports: deleted ")


def run(ctx: Ctx) -> dict[str, Any]:
    if ctx.kubeconfig is None or ctx.olareg is None:
        raise RuntimeError("needs the local control plane and registry")
    n = ctx.settings.report_workloads
    _crds(ctx)
    seed_demo(ctx.olareg.host, "bench-reports")
    streamable = f"{ctx.olareg.host}/bench-reports/streamable:v1"
    plain = f"{ctx.olareg.host}/bench-reports/plain:v1"
    policy = ctx.work / "reports-policy.yaml"
    policy.write_text(policy_yaml([ctx.olareg.host]))
    ns = f"sg-bench-reports-{uuid.uuid4().hex[:5]}"
    _kubectl(ctx, "create", "namespace", ns)
    out: dict[str, Any] = {"workloads": n}
    proc = Proc(
        "reporter",
        [
            *(PYTHON, "-m", "app", "report", "--kubeconfig", str(ctx.kubeconfig)),
            *("--policy", str(policy), "--report-namespace", ns, "--lease-namespace", ns),
            *("--report-interval", "1", "--log-level", "info"),
        ],
        ctx.work / "logs" / "reporter.log",
        env=ctx.app_env(),
        cwd=ctx.settings.app_root or ROOT,
    )
    try:
        t0 = time.monotonic()
        _apply(ctx, [_deployment(ns, i, plain if i % 3 == 0 else streamable) for i in range(n)])
        out["create_seconds"] = round(time.monotonic() - t0, 1)
        log(f"reports: {n} Deployments created in {out['create_seconds']} s")
        proc.start()

        first = {
            (f"app-{i:05d}", "image-streamable"): ("fail" if i % 3 == 0 else "pass")
            for i in range(n)
        }

        def complete() -> bool:
            got = _state(ctx, ns)
            return all(got.get(k) == v for k, v in first.items())

        out["first_seconds"] = round(_until("the first full reports", complete), 1)
        docs = _reports(ctx, ns)
        out["objects"] = len(docs)
        out["bytes"] = [len(json.dumps(d, separators=(",", ":"))) for d in docs]
        out["results"] = sum(len(d["results"]) for d in docs)
        out["first_writes"] = _counts(proc.log_path)[0]
        time.sleep(3)  # a few idle rounds: nothing more is written
        out["idle_writes"] = _counts(proc.log_path)[0] - out["first_writes"]

        steps = []
        for label, changed in (
            ("1 Deployment changed", [0]),
            (f"{n // 10} Deployments changed at once", list(range(3, n, 10))),
        ):
            w0, _ = _counts(proc.log_path)
            t0 = time.monotonic()
            _apply(ctx, [_deployment(ns, i, streamable if i % 3 == 0 else plain) for i in changed])
            applied = time.monotonic() - t0
            want = {
                (f"app-{i:05d}", "image-streamable"): ("pass" if i % 3 == 0 else "fail")
                for i in changed
            }

            def converged(want: dict[tuple[str, str], str] = want) -> bool:
                got = _state(ctx, ns)
                return all(got.get(k) == v for k, v in want.items())

            seconds = _until(label, converged) + applied
            steps.append(
                {
                    "label": label,
                    "seconds": round(seconds, 1),
                    "kubectl_seconds": round(applied, 1),
                    "writes": _counts(proc.log_path)[0] - w0,
                }
            )
        gone = list(range(0, n, 4))
        w0, d0 = _counts(proc.log_path)
        t0 = time.monotonic()
        for start in range(0, len(gone), CHUNK):
            names = [f"app-{i:05d}" for i in gone[start : start + CHUNK]]
            _kubectl(ctx, "delete", "deployment", "-n", ns, "--wait=false", *names)
        left = {f"app-{i:05d}" for i in range(n) if i % 4}
        deleting = time.monotonic() - t0
        seconds = deleting + _until(
            "deleted workloads' results to go",
            lambda: {k[0] for k in _state(ctx, ns)} == left,
        )
        time.sleep(3)  # writes still coming after that would show here
        w1, d1 = _counts(proc.log_path)
        steps.append(
            {
                "label": f"{len(gone)} Deployments deleted",
                "seconds": round(seconds, 1),
                "kubectl_seconds": round(deleting, 1),
                "writes": w1 - w0,
                "deletes": d1 - d0,
            }
        )
        out["steps"] = steps
        out["rss_mib"] = rss_mib(proc.pid)
        out["cpu_seconds"] = round(cpu_seconds(proc.pid), 1)
        out["seconds_total"] = round(time.monotonic() - t0, 1)
    finally:
        proc.stop()
        _kubectl(ctx, "delete", "namespace", ns, "--wait=false")
    log(
        f"reports: first full reports in {out['first_seconds']} s, {out['objects']} objects, "
        f"{sum(out['bytes']):,} bytes, {out['first_writes']} writes"
    )
    return out
