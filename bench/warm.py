"""Warm path: streamgate's /validate and /mutate beside the bare baseline, in one run.

The baseline is the bare echo app on the fastest stack (httptools + uvloop, streamgate's
default); the same app on the pure-Python stack (h11 + asyncio, the baseline before 0.2.0) is
measured in the same run for continuity."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import HOST, Proc, client_context, cpu_seconds, free_port, log, running, summary
from bench.context import Ctx, policy_yaml
from bench.load import wrk
from bench.registry import seed_demo
from bench.reviews import PUBLIC_IMAGE, bodies_file_lines, review_set

DEMO_NAMESPACE = "sgbench"
TARGETS = ("baseline", "baseline_h11", "validate", "mutate")
BASELINES = ("baseline", "baseline_h11")


def prepare_reviews(ctx: Ctx) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Path]]:
    registry = ctx.olareg.host if ctx.olareg else "streamgatebench.azurecr.io"
    reviews = review_set(registry, DEMO_NAMESPACE)
    files = {}
    for target, path in (
        ("baseline", "/validate"),
        ("baseline_h11", "/validate"),
        ("validate", "/validate"),
        ("mutate", "/mutate"),
    ):
        f = ctx.work / f"bodies-{target}.txt"
        f.write_text(bodies_file_lines(reviews, [path]))
        files[target] = f
    return reviews, files


def check_answers(url: str, ca: Path, reviews: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Send every review once to each endpoint (this also warms the caches) and check them."""
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=url, verify=client_context(ca), timeout=30) as client:
        for endpoint in ("validate", "mutate"):
            for name, review in reviews:
                resp = client.post(f"/{endpoint}", content=json.dumps(review))
                if resp.status_code != 200:
                    raise RuntimeError(f"/{endpoint} {name}: {resp.status_code} {resp.text[:300]}")
                answer = resp.json()["response"]
                if not answer["allowed"]:
                    raise RuntimeError(f"/{endpoint} {name} denied: {answer}")
                seen[f"{endpoint}:warnings"] += len(answer.get("warnings", []))
                seen[f"{endpoint}:patched"] += "patch" in answer
                for w in answer.get("warnings", []):
                    if "could not" in w or "unknown" in w:
                        seen["unknown"] += 1
    return dict(seen)


def _urls(ports: dict[str, int]) -> dict[str, str]:
    return {t: f"https://{HOST}:{ports[t if t in BASELINES else 'streamgate']}" for t in TARGETS}


def run(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    reviews, files = prepare_reviews(ctx)
    registries = []
    if ctx.olareg:
        seed_demo(ctx.olareg.host, DEMO_NAMESPACE)
        registries = [ctx.olareg.host]
    policy = ctx.work / "policy-warm.yaml"
    policy.write_text(policy_yaml(registries))
    ports = {"streamgate": free_port(), "baseline": free_port(), "baseline_h11": free_port()}
    sg = ctx.streamgate(
        "warm-streamgate",
        ports["streamgate"],
        policy,
        metrics_port=free_port(),
        kubeconfig=ctx.kubeconfig,
    )
    base = ctx.baseline("warm-baseline", ports["baseline"])
    base_h11 = ctx.baseline("warm-baseline-h11", ports["baseline_h11"], http="h11", loop="asyncio")
    urls = _urls(ports)
    out: dict[str, Any] = {
        "reviews": [
            {
                "name": n,
                "bytes": len(json.dumps(r, separators=(",", ":"))),
                "containers": len(_containers(r)),
            }
            for n, r in reviews
        ],
        "registry": ctx.olareg.host if ctx.olareg else None,
        "node_inventory": "local control plane" if ctx.kubeconfig else None,
        "public_image": PUBLIC_IMAGE,
        "connections": s.connections,
        "seconds_per_run": s.seconds,
    }
    with running(sg, base, base_h11):
        sg.wait_https(urls["validate"] + "/readyz", ctx.certs.ca)
        base.wait_https(urls["baseline"] + "/healthz", ctx.certs.ca)
        base_h11.wait_https(urls["baseline_h11"] + "/healthz", ctx.certs.ca)
        out["answers"] = check_answers(urls["validate"], ctx.certs.ca, reviews)
        pids = {
            "baseline": base.pid,
            "baseline_h11": base_h11.pid,
            "validate": sg.pid,
            "mutate": sg.pid,
        }

        def one(
            target: str, rate: float | None = None, seconds: float | None = None
        ) -> dict[str, Any]:
            cpu0 = cpu_seconds(pids[target])
            res = wrk(
                urls[target],
                files[target],
                seconds=seconds or s.seconds,
                connections=s.connections,
                rate=rate,
            )
            res["server_cpu_us_per_request"] = round(
                (cpu_seconds(pids[target]) - cpu0) * 1e6 / max(res["requests"], 1), 1
            )
            return res

        # Saturation: every connection sends as fast as it can; targets interleaved per run so
        # that noise from the rest of the machine falls on all of them alike.
        sat: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
        for r in range(s.runs):
            for t in TARGETS:
                sat[t].append(one(t))
            log(
                f"warm saturation run {r + 1}/{s.runs}: "
                + ", ".join(f"{t} {sat[t][-1]['rps']:.0f}/s" for t in TARGETS)
            )
        sat_rps = {t: summary([x["rps"] for x in sat[t]])["median"] for t in TARGETS}
        # The offered-load sweep (half of saturation is the headline point).
        sweep: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
        fractions = sorted(set(s.sweep_fractions) | {0.5})
        for frac in fractions:
            repeats = s.runs if frac == 0.5 else s.sweep_runs
            for _ in range(repeats):
                for t in TARGETS:
                    res = one(t, rate=max(1.0, round(frac * sat_rps[t])))
                    res["fraction"] = frac
                    sweep[t].append(res)
            log(f"warm sweep {frac:.2f} of saturation done")
        out["profile"] = (
            profile(ctx, sg, urls["validate"], files["validate"]) if not s.quick else None
        )
        out["server_rss_mib_after"] = _rss(sg.pid)
    out["saturation"] = {
        t: {
            "rps": summary([x["rps"] for x in sat[t]]),
            "p50_ms": summary([x["p50_ms"] for x in sat[t]], 2),
            "p99_ms": summary([x["p99_ms"] for x in sat[t]], 2),
            "cpu_us_per_request": summary([x["server_cpu_us_per_request"] for x in sat[t]]),
            "raw": sat[t],
        }
        for t in TARGETS
    }
    half = {t: [x for x in sweep[t] if x["fraction"] == 0.5] for t in TARGETS}
    out["half_load"] = {
        t: {
            "offered_rps": half[t][0]["offered_rps"] if half[t] else None,
            "achieved_rps": summary([x["rps"] for x in half[t]]),
            "p50_ms": summary([x["p50_ms"] for x in half[t]], 2),
            "p99_ms": summary([x["p99_ms"] for x in half[t]], 2),
            "p999_ms": summary([x["p999_ms"] for x in half[t]], 2),
        }
        for t in TARGETS
    }
    out["sweep"] = sweep
    base_rps = out["saturation"]["baseline"]["rps"]["median"] or 1
    h11_rps = out["saturation"]["baseline_h11"]["rps"]["median"] or 1
    out["ratio_to_baseline"] = {
        t: round(out["saturation"][t]["rps"]["median"] / base_rps, 2)
        for t in ("baseline_h11", "validate", "mutate")
    }
    out["ratio_to_h11_baseline"] = {
        t: round(out["saturation"][t]["rps"]["median"] / h11_rps, 2) for t in ("validate", "mutate")
    }
    return out


def _rss(pid: int) -> float | None:
    from bench.common import rss_mib

    try:
        return rss_mib(pid)
    except OSError:
        return None


def _containers(review: dict[str, Any]) -> list[Any]:
    obj = review["request"]["object"]
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
    return list(spec["containers"])


# ---- profile ------------------------------------------------------------------------------

# Frames whose inclusive share is reported (a function name as py-spy prints it).
KEY_FRAMES = (
    ("whole request in the app (AdmissionApp.__call__)", "AdmissionApp.__call__"),
    ("parse_review", "parse_review"),
    ("Admission.answer", "Admission.answer"),
    (
        "  verdict look-ups (Admission.lookup + tasks)",
        "Admission.lookup|_call (app/registry/singleflight",
    ),
    ("  evaluate", "evaluate (app/core/evaluate.py"),
    ("  placement", "place (app/"),
    ("  decision log line (DecisionLog.write)", "_log_decision|DecisionLog.write"),
    ("  metrics (prometheus_client)", "prometheus_client"),
    ("render", "render (app/webhook/review.py"),
    ("response send (uvicorn + TLS write)", "_send (app/webhook/server.py"),
    # httptools' parser calls back into HttpToolsProtocol from data_received; h11 is Python.
    ("HTTP parsing (httptools callbacks or h11)", "HttpToolsProtocol.data_received|h11/"),
    # uvloop's socket and TLS plumbing is native (no Python frame: it shows as the self time
    # of `Runner.run`); what is left in Python is the ssl module's SSLObject.
    ("TLS read (SSLObject.read; asyncio's read path)", "SSLObject.read|_read_ready"),
)


def ensure_py_spy() -> str | None:
    from bench.common import PYTHON

    exe = Path(PYTHON).parent / "py-spy"
    if not exe.exists():
        log("installing py-spy into the virtualenv")
        res = subprocess.run(
            [PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "py-spy"],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            log(f"py-spy install failed: {res.stderr[-500:]}")
            return None
    return str(exe)


def profile(ctx: Ctx, sg: Proc, url: str, bodies: Path) -> dict[str, Any] | None:
    spy = ensure_py_spy()
    if spy is None:
        return None
    seconds = 8
    raw = ctx.work / "profile-validate.txt"
    load = subprocess.Popen(
        [
            "wrk",
            "-t1",
            f"-c{ctx.settings.connections}",
            f"-d{seconds + 3}s",
            "-s",
            str(Path(__file__).parent / "wrk" / "reviews.lua"),
            url,
            "--",
            str(bodies),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    res = subprocess.run(
        [
            spy,
            "record",
            "-p",
            str(sg.pid),
            "-d",
            str(seconds),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(raw),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    load.wait()
    if res.returncode != 0 or not raw.exists():
        log(f"py-spy failed: {res.stderr[-500:]}")
        return None
    return summarize_profile(raw)


def summarize_profile(raw: Path) -> dict[str, Any]:
    import re

    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        if "MainThread" not in frames[0] and "<module>" not in stack:
            continue  # idle helper threads
        total += count
        self_time[re.sub(r":\d+\)", ")", frames[-1])] += count
        for label, pattern in KEY_FRAMES:
            if any(p in f for p in pattern.split("|") for f in frames):
                inclusive[label] += count
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "top_self": [(f, pct(c)) for f, c in self_time.most_common(15)],
        "inclusive": [(label, pct(inclusive[label])) for label, _ in KEY_FRAMES],
    }
