"""`streamgate serve`, exactly as the CLI runs it, plus a loop that writes what the process
sees inside itself to a JSON file twice a second (for the reliability tests):

    python -m tests.reliability.probe_server PROBE.json serve --host 127.0.0.1 ...

The only change is an extra background loop handed to `app.webhook.serve.serve` (which `run_webhook`
calls with its own loops): tasks in the event loop, look-ups still running in the background,
registry caches and clients, circuits, watch state, threads. Nothing about how requests are
served changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import app.webhook.serve as serve_module
from app.cli import main as cli
from app.registry.source import RegistryVerdictSource
from app.webhook.admission import Admission

_real_serve = serve_module.serve


def snapshot(admission: Admission) -> dict[str, Any]:
    source = admission.verdicts
    out: dict[str, Any] = {
        "time": time.time(),
        "tasks": len(asyncio.all_tasks()),
        "background": len(admission._background),
        "threads": threading.active_count(),
    }
    if isinstance(source, RegistryVerdictSource):
        lookup = source._lookup
        caches = (lookup.tags, lookup.manifests, lookup.artifacts, lookup.conversions)
        out["caches"] = {c.name: len(c) for c in caches}
        out["cache_flights"] = sum(len(c._flights) for c in caches)
        out["flights"] = len(source._flights)
        out["clients"] = len(source._pool._clients)
        out["closing"] = len(source._pool._closing)
        out["circuits"] = {
            name: str(client.circuit.state) for name, client in source._pool._clients.items()
        }
        out["cache_stats"] = {
            name: {k: getattr(stats, k) for k in ("hits", "misses", "stale", "evictions")}
            for name, stats in source.cache_stats().items()
        }
    placement = admission.placement
    if hasattr(placement, "age_seconds"):
        out["inventory"] = {
            "ready": placement.ready,
            "age": placement.age_seconds if placement.ready else None,
            "last_error": placement.last_error,
            "nodes": len(placement.snapshot().nodes),
        }
    namespaces = admission.namespaces
    if hasattr(namespaces, "_reflector"):
        reflector = namespaces._reflector
        out["namespaces"] = {
            "ready": reflector.synced,
            "age": time.monotonic() - reflector.last_contact,
            "last_error": reflector.last_error,
        }
    return out


async def _probe_loop(admission: Admission, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    while True:
        try:
            tmp.write_text(json.dumps(snapshot(admission), default=str))
            os.replace(tmp, path)
        except Exception as err:  # observing must never stop the server
            print(f"probe failed: {err!r}", file=sys.stderr)
        await asyncio.sleep(0.5)


def main() -> int:
    path = Path(sys.argv[1])

    async def observed_serve(settings: Any, admission: Admission, **kw: Any) -> None:
        background = [*(kw.pop("background", None) or []), lambda: _probe_loop(admission, path)]
        await _real_serve(settings, admission, background=background, **kw)

    serve_module.serve = observed_serve  # type: ignore[assignment]
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
