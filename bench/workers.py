"""Two workers: does a shared listening socket (uvicorn --workers) or one SO_REUSEPORT
socket per process spread the few long-lived connections an apiserver keeps?"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections import Counter
from typing import Any

from bench.common import HOST, cpu_seconds, free_port, log, running, summary
from bench.context import Ctx, policy_yaml
from bench.load import wrk
from bench.scale import harness
from bench.warm import check_answers, prepare_reviews

APISERVER_CONNECTIONS = 4


def _holders(port: int) -> Counter[int]:
    """Established connections to `port`, by the pid holding the server side."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found: Counter[int] = Counter()
    for line in out.splitlines():
        m = re.search(r"pid=(\d+)", line)
        if m:
            found[int(m[1])] += 1
    return found


def trial(url: str, port: int, pids: list[int], bodies: Any, seconds: float) -> dict[str, Any]:
    cpu0 = {p: cpu_seconds(p) for p in pids}
    seen: list[Counter[int]] = []

    def sample() -> None:
        time.sleep(min(0.5, seconds / 3))
        seen.append(_holders(port))

    t = threading.Thread(target=sample)
    t.start()
    res = wrk(url, bodies, seconds=seconds, connections=APISERVER_CONNECTIONS)
    t.join()
    cpu = {p: cpu_seconds(p) - cpu0[p] for p in pids}
    total = sum(cpu.values()) or 1.0
    conns = seen[0] if seen else Counter()
    return {
        "rps": res["rps"],
        "connections": [conns.get(p, 0) for p in pids],
        "cpu_share": [round(100 * cpu[p] / total, 1) for p in pids],
    }


def run(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    reviews, files = prepare_reviews(ctx)
    policy = ctx.work / "policy-workers.yaml"
    policy.write_text(policy_yaml([ctx.olareg.host] if ctx.olareg else []))
    seconds = 1.0 if s.quick else 2.0
    setups = []
    for label, mode in (
        ("1 worker", "one"),
        ("2 workers, shared socket (uvicorn --workers 2)", "shared"),
        ("2 workers, SO_REUSEPORT socket each", "reuseport"),
    ):
        port = free_port()
        procs = []
        listener = None
        if mode == "one":
            procs = [harness(ctx, "workers-one", port, str(policy), [])]
        elif mode == "shared":
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, port))
            listener.listen(2048)
            listener.set_inheritable(True)
            fd = listener.fileno()
            for i in range(2):
                p = harness(ctx, f"workers-shared-{i}", port, str(policy), ["--fd", str(fd)])
                p.pass_fds = (fd,)
                procs.append(p)
        else:
            procs = [
                harness(ctx, f"workers-reuseport-{i}", port, str(policy), ["--reuse-port"])
                for i in range(2)
            ]
        url = f"https://{HOST}:{port}"
        try:
            with running(*procs):
                for p in procs:  # each one listening (a ready one answers for both)
                    deadline = time.monotonic() + 120
                    while "harness: listening" not in p.tail(400):
                        if not p.alive() or time.monotonic() > deadline:
                            raise RuntimeError(f"{p.name} did not start:\n{p.tail()}")
                        time.sleep(0.1)
                    p.wait_https(url + "/readyz", ctx.certs.ca, timeout=120)
                if listener is not None:
                    listener.close()  # the workers hold it now
                    listener = None
                for _ in range(8):  # warm both workers' caches over fresh connections
                    check_answers(url, ctx.certs.ca, reviews)
                pids = [p.pid for p in procs]
                trials = [
                    trial(url, port, pids, files["validate"], seconds)
                    for _ in range(s.worker_trials)
                ]
        finally:
            if listener is not None:
                listener.close()
        two = len(procs) == 2
        idle = sum(1 for t in trials if two and min(t["connections"]) == 0)
        splits = Counter("/".join(map(str, sorted(t["connections"], reverse=True))) for t in trials)
        row: dict[str, Any] = {
            "label": label,
            "mode": mode,
            "trials": len(trials),
            "idle_trials": idle if two else "n/a",
            "splits": ", ".join(f"{k} ×{v}" for k, v in splits.most_common()) if two else "4",
            "busier_share": summary([max(t["cpu_share"]) for t in trials]) if two else None,
            "rps": summary([t["rps"] for t in trials]),
            "raw": trials,
        }
        setups.append(row)
        log(
            f"workers {label}: {row['splits']}, idle {row['idle_trials']}, "
            f"{row['rps']['median']} req/s"
        )
    shared = next(r for r in setups if r["mode"] == "shared")
    reuse = next(r for r in setups if r["mode"] == "reuseport")
    one = next(r for r in setups if r["mode"] == "one")
    gain = (reuse["rps"]["median"] or 0) / (one["rps"]["median"] or 1)
    conclusion = (
        f"With {APISERVER_CONNECTIONS} connections, a shared socket left one worker idle in "
        f"{shared['idle_trials']} of {shared['trials']} trials and SO_REUSEPORT in "
        f"{reuse['idle_trials']} of {reuse['trials']}; two workers gave {gain:.2f}× the req/s of"
        " one on this 2-core machine (wrk shares the cores). Each worker keeps its own registry"
        " cache and its own node and namespace watches, and a connection stays with the worker"
        " that accepted it, so the chart runs **one worker per pod and scales with replicas**:"
        " the apiserver spreads its connections over the Service's endpoints, and every pod's"
        " cache and watches serve all of its traffic."
    )
    return {
        "connections": APISERVER_CONNECTIONS,
        "trials": s.worker_trials,
        "seconds": seconds,
        "setups": setups,
        "conclusion": conclusion,
    }
