"""The load generator: Debian's `wrk` with bench/wrk/reviews.lua (installed when missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.common import loadavg, log

SCRIPT = Path(__file__).parent / "wrk" / "reviews.lua"


class LoadError(RuntimeError):
    pass


def ensure_wrk() -> str:
    """The path of `wrk`; as root, `apt-get install wrk` when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise LoadError("wrk is missing: apt-get install wrk (Debian package), then run again")
    log("installing wrk (Debian package)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise LoadError(f"{' '.join(cmd)} failed: {res.stderr[-2000:]}")
    found = shutil.which("wrk")
    if not found:
        raise LoadError("wrk still missing after apt-get install wrk")
    return found


def wrk(
    url: str,
    bodies: Path,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    rate: float | None = None,
) -> dict[str, Any]:
    """One wrk run; requests/s, latency percentiles in ms, errors, the load average."""
    cmd = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        str(bodies),
        str(rate or 0),
        str(threads),
    ]
    load_before = loadavg()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if res.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({res.returncode}): {res.stdout[-1500:]} {res.stderr[-1500:]}")
    raw = json.loads(line[len("WRKJSON ") :])
    lat = raw["latency_us"]
    seconds_run = raw["duration_us"] / 1e6
    errors = raw["errors"]
    return {
        "rps": round(raw["requests"] / seconds_run, 1),
        "requests": raw["requests"],
        "seconds": round(seconds_run, 2),
        "offered_rps": rate,
        "connections": connections,
        "p50_ms": lat["50"] / 1000,
        "p90_ms": lat["90"] / 1000,
        "p99_ms": lat["99"] / 1000,
        "p999_ms": lat["99.9"] / 1000,
        "max_ms": lat["max"] / 1000,
        "mean_ms": round(lat["mean"] / 1000, 3),
        "errors": sum(errors.values()),
        "error_kinds": {k: v for k, v in errors.items() if v},
        "load_before": load_before,
        "load_after": loadavg(),
    }
