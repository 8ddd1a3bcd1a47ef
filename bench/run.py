"""`make bench`: run every section, write docs/benchmarks.{md,json,png}.

    python -m bench.run                      # everything (~20 min on 2 cores, more the
                                             # first time: hack/kyverno.sh builds Kyverno)
    python -m bench.run --sections warm,cold # some sections
    python -m bench.run --smoke --out DIR    # one short iteration (tests/unit/test_bench.py)

Needs wrk (installed with apt-get when missing), the local registry (hack/registries.sh) and,
for the API-server and Kyverno sections, the local control plane (hack/cluster.sh); py-spy and
matplotlib are installed into the virtualenv when missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.common import ROOT, loadavg, log, machine
from bench.context import Ctx, Settings
from bench.load import ensure_wrk
from bench.registry import olareg

SECTIONS = (
    "warm",
    "cold",
    "apiserver",
    "scale",
    "workers",
    "pythons",
    "kyverno",
    "replicas",
    "reports",
)


def _kubeconfig(start: bool) -> str | None:
    cluster = ROOT / "hack" / "cluster.sh"
    status = subprocess.run(["bash", str(cluster), "status"], capture_output=True, check=False)
    if status.returncode != 0:
        if not start:
            return None
        log("starting the local control plane (hack/cluster.sh up)")
        up = subprocess.run(
            ["bash", str(cluster), "up"], capture_output=True, text=True, check=False
        )
        if up.returncode != 0:
            log(f"hack/cluster.sh up failed: {up.stderr[-1500:]}")
            return None
    env = subprocess.run(
        ["bash", str(cluster), "env"], capture_output=True, text=True, check=True
    ).stdout
    return env.strip().split("=", 1)[1]


def _section(name: str) -> Callable[[Ctx], dict[str, Any]]:
    from bench import apiserver, cold, kyverno, pythons, replicas, reports, scale, warm, workers

    return {
        "warm": warm.run,
        "cold": cold.run,
        "apiserver": apiserver.run,
        "scale": scale.run,
        "workers": workers.run,
        "pythons": pythons.run,
        "kyverno": kyverno.run,
        "replicas": replicas.run,
        "reports": reports.run,
    }[name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--smoke", action="store_true", help="one short iteration of each section")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where benchmarks.* go")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    p.add_argument("--runs", type=int, help="repeats of each headline figure")
    p.add_argument("--no-start", action="store_true", help="use registries/cluster only if up")
    p.add_argument(
        "--app-root",
        type=Path,
        help="run the servers with the `app` package of another checkout (before/after)",
    )
    p.add_argument(
        "--sweep",
        help="offered-load fractions of saturation besides 0.5, comma-separated ('' for none)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="rewrite the .md and .png from the .json"
    )
    args = p.parse_args(argv)
    if args.report_only:
        report.write(json.loads((args.out / "benchmarks.json").read_text()), args.out)
        return 0
    settings = Settings.smoke() if args.smoke else Settings()
    if args.runs:
        settings.runs = args.runs
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.sweep is not None:
        settings.sweep_fractions = tuple(float(f) for f in args.sweep.split(",") if f)
    if args.app_root:
        settings.app_root = args.app_root.resolve()
    ensure_wrk()
    start = not (args.no_start or args.smoke)
    work = args.work or Path(tempfile.mkdtemp(prefix="streamgate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    reg = olareg(start=start)
    kube = None
    if {"apiserver", "warm", "kyverno", "reports"} & set(sections) and not args.smoke:
        kube = _kubeconfig(start)
    ctx = Ctx(settings=settings, work=work, olareg=reg, kubeconfig=kube)
    began = time.monotonic()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": _git(),
        "machine": machine(),
        "smoke": args.smoke,
        "app_root": str(settings.app_root) if settings.app_root else None,
        "load_before": loadavg(),
        "sections": {},
    }
    log(f"work dir {work}; registry {reg.host if reg else 'none'}; cluster {kube or 'none'}")
    failed = False
    for name in sections:
        t0 = time.monotonic()
        log(f"--- {name}")
        try:
            results["sections"][name] = _section(name)(ctx)
        except Exception as err:  # one broken section must not lose the others
            failed = True
            log(f"{name} failed: {err}")
            results["sections"][name] = {
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:],
            }
        results["sections"][name]["section_seconds"] = round(time.monotonic() - t0, 1)
    results["load_after"] = loadavg()
    results["total_seconds"] = round(time.monotonic() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "benchmarks.json"
    if json_path.exists() and set(sections) != set(SECTIONS):
        # A partial run keeps the other sections' last results.
        old = json.loads(json_path.read_text())
        for name, value in old.get("sections", {}).items():
            results["sections"].setdefault(name, value)
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.write(results, args.out)
    log(f"wrote {args.out}/benchmarks.md, .json, .png in {results['total_seconds']}s")
    if args.work is None and not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def _git() -> str:
    res = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
