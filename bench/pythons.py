"""Python versions: streamgate's warm /validate on CPython 3.11, 3.12 and 3.13, same harness.

Each interpreter gets its own virtualenv outside the repository (~/.cache/streamgate/bench),
with the project's pinned dependencies (constraints.txt) installed from the package index
the machine's pip is configured with; the server runs this checkout's `app` (cwd first on
sys.path). Runs are interleaved across versions so that the rest of the machine's noise falls
on all of them alike. A version whose interpreter is missing or whose install fails is
reported with the reason, not left out silently."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.common import HOST, ROOT, Proc, cpu_seconds, free_port, log, running, summary
from bench.context import Ctx, policy_yaml
from bench.load import wrk
from bench.registry import seed_demo
from bench.warm import DEMO_NAMESPACE, prepare_reviews

VERSIONS = ("3.11", "3.12", "3.13")
CACHE = Path(os.environ.get("STREAMGATE_CACHE", Path.home() / ".cache" / "streamgate")) / "bench"


def interpreter(version: str) -> str | None:
    """`python3.X` on PATH if it runs, else the newest pyenv build of that version."""
    candidates = []
    found = shutil.which(f"python{version}")
    if found:
        candidates.append(found)
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(str(root / "versions" / f"{version}.*" / "bin" / "python3")))[
        ::-1
    ]
    for path in candidates:
        ok = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if ok.returncode == 0 and ok.stdout.strip() == version:
            return path
    return None


def virtualenv(version: str, python: str) -> tuple[str | None, str]:
    """(the venv's python, its full version) or (None, why): created once, reinstalled when
    constraints.txt or pyproject.toml changed."""
    venv = CACHE / f"venv-py{version}"
    stamp = venv / ".stamp"
    want = (ROOT / "constraints.txt").read_text() + (ROOT / "pyproject.toml").read_text()
    py = venv / "bin" / "python"
    if not (stamp.exists() and stamp.read_text() == want and py.exists()):
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-U", "pip"],
            [
                str(py),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--constraint",
                str(ROOT / "constraints.txt"),
                str(ROOT),
            ],
        ]
        for step in steps:
            res = subprocess.run(step, capture_output=True, text=True, check=False, timeout=900)
            if res.returncode != 0:
                tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
                return None, f"{' '.join(step[:4])} failed: {' | '.join(tail)}"
        stamp.write_text(want)
    full = subprocess.run(
        [str(py), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return str(py), full


def run(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    _, files = prepare_reviews(ctx)
    registries = []
    if ctx.olareg:
        seed_demo(ctx.olareg.host, DEMO_NAMESPACE)
        registries = [ctx.olareg.host]
    policy = ctx.work / "policy-pythons.yaml"
    policy.write_text(policy_yaml(registries))
    out: dict[str, Any] = {"versions": {}}
    servers: dict[str, tuple[Proc, str]] = {}
    for version in VERSIONS:
        python = interpreter(version)
        if python is None:
            out["versions"][version] = {"error": f"no python{version} on this machine"}
            continue
        venv_python, full = virtualenv(version, python)
        if venv_python is None:
            out["versions"][version] = {"error": full}
            continue
        port = free_port()
        proc = ctx.streamgate(f"py{version}", port, policy, python=venv_python)
        servers[version] = (proc, f"https://{HOST}:{port}/validate")
        out["versions"][version] = {"python": full}
    if not servers:
        return out
    with running(*(p for p, _ in servers.values())):
        for proc, url in servers.values():
            proc.wait_https(url.removesuffix("/validate") + "/readyz", ctx.certs.ca)
        raw: dict[str, list[dict[str, Any]]] = {v: [] for v in servers}
        for r in range(s.runs):
            order = list(servers)
            order = order[r % len(order) :] + order[: r % len(order)]
            for version in order:
                proc, url = servers[version]
                cpu0 = cpu_seconds(proc.pid)
                res = wrk(url, files["validate"], seconds=s.seconds, connections=s.connections)
                res["server_cpu_us_per_request"] = round(
                    (cpu_seconds(proc.pid) - cpu0) * 1e6 / max(res["requests"], 1), 1
                )
                raw[version].append(res)
            log(
                f"pythons run {r + 1}/{s.runs}: "
                + ", ".join(f"{v} {raw[v][-1]['rps']:.0f}/s" for v in servers)
            )
        half: dict[str, list[dict[str, Any]]] = {v: [] for v in servers}
        for version, (_, url) in servers.items():
            rate = max(1.0, round(0.5 * (summary([x["rps"] for x in raw[version]])["median"])))
            for _ in range(max(1, s.runs // 2)):
                half[version].append(
                    wrk(
                        url,
                        files["validate"],
                        seconds=s.seconds,
                        connections=s.connections,
                        rate=rate,
                    )
                )
    for version in servers:
        out["versions"][version].update(
            {
                "rps": summary([x["rps"] for x in raw[version]]),
                "cpu_us_per_request": summary(
                    [x["server_cpu_us_per_request"] for x in raw[version]]
                ),
                "half_load_p99_ms": summary([x["p99_ms"] for x in half[version]], 2),
            }
        )
    out["fastest"] = fastest(out["versions"])
    return out


def fastest(versions: dict[str, dict[str, Any]]) -> str | None:
    """The version with the least CPU per request (the figure that decides cost per pod)."""
    measured = {
        v: d["cpu_us_per_request"]["median"]
        for v, d in versions.items()
        if "cpu_us_per_request" in d and d["cpu_us_per_request"]["median"] is not None
    }
    return min(measured, key=lambda v: measured[v]) if measured else None
