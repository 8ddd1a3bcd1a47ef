"""Soak: a bounded run of mixed admissions against `streamgate serve` (its own process, with
the live watches of the local control plane) while the image set keeps changing and the
registry keeps failing in new ways.

* Load: two client threads, /validate and /mutate, Pods, Deployments and CronJobs, CREATE and
  UPDATE (and some DELETE), warn and enforce namespaces.
* Images: the seeded ones, and new tags pushed to olareg while the run goes on (each one a new
  cache entry: the caches must stay within `maxEntries`), asked directly and through a fault
  proxy whose fault changes every few seconds (hang, 500, reset, 429, bad JSON, trickle,
  slow body, stall, pass).
* Watched: RSS, open descriptors and sockets (from /proc), and from inside the process the
  asyncio tasks, look-ups in flight, cache sizes.

Must hold: every answer passes the oracle within the deadline; cache sizes within bound; RSS
flat once warm; sockets bounded; after the load stops, tasks and look-ups back to where they
were when idle. 20 s under `make test`, 5 minutes under `make reliability`.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.harness import (
    LONG,
    Row,
    ServerProcess,
    Violation,
    check_answer,
    deployment,
    pod,
    review,
)
from tests.support.faultproxy import FaultProxy
from tests.support.registries import RegistryEnv, run_seeder

pytestmark = [pytest.mark.e2e, pytest.mark.registry]

OLAREG = "127.0.0.1:25000"
SECONDS = 300.0 if LONG else 20.0
DEADLINE = 1.0
WITHIN = DEADLINE + 0.25 + 1.0
MAX_ENTRIES = 150
PAUSE = 0.004  # per request and client: a good neighbour on a shared 2-core machine
BACKGROUND = 3.0
FAULTS: list[dict[str, Any]] = [
    {"kind": "pass"},
    {"kind": "hang"},
    {"kind": "status", "status": 500},
    {"kind": "pass"},
    {"kind": "reset"},
    {"kind": "status", "status": 429, "headers": {"Retry-After": "1"}},
    {"kind": "bad-json", "match": "/referrers/"},
    {"kind": "pass"},
    {"kind": "trickle", "delay": 0.2},
    {"kind": "drip", "delay": 0.2, "match": "^GET "},
    {"kind": "stall", "delay": 1.5},
]
SEEDED = ["plain", "streamable", "multiarch", "multiarch-index", "late", "other-referrer"]
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def soak_repo(registry_env: RegistryEnv) -> str:
    """This module's own copies of the demo images (sgsoak/...), so pushing tags touches
    nobody else's repositories."""
    run_seeder(registry_env.olareg.seeder_args(), "seed", "--namespace", "sgsoak")
    return "sgsoak"


class Pusher(threading.Thread):
    """Pushes new tags of sgsoak/plain (the same manifest) while the soak runs."""

    def __init__(self, stop: threading.Event, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.stop_event = stop
        self.every = every
        self.tags: list[str] = ["v1"]
        self.http = httpx.Client(base_url=f"http://{OLAREG}", timeout=10)
        got = self.http.get("/v2/sgsoak/plain/manifests/v1", headers={"Accept": MANIFEST})
        got.raise_for_status()
        self.manifest = got.content
        self.content_type = got.headers["content-type"]
        self.run_id = f"{random.getrandbits(32):08x}"

    def run(self) -> None:
        n = 0
        while not self.stop_event.wait(self.every):
            tag = f"s{self.run_id}-{n}"
            put = self.http.put(
                f"/v2/sgsoak/plain/manifests/{tag}",
                content=self.manifest,
                headers={"Content-Type": self.content_type},
            )
            if put.status_code in (200, 201):
                self.tags.append(tag)
            n += 1
        self.http.close()


class Load(threading.Thread):
    def __init__(
        self,
        target: ServerProcess,
        pusher: Pusher,
        proxy: FaultProxy,
        stop: threading.Event,
        seed: int,
    ) -> None:
        super().__init__(daemon=True)
        self.target, self.pusher, self.proxy, self.stop_event = target, pusher, proxy, stop
        self.rng = random.Random(seed)
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.overruns: list[str] = []  # answers slower than WITHIN (judged in the test)

    def image(self) -> str:
        rng = self.rng
        host = rng.choice([OLAREG, OLAREG, self.proxy.host])
        if rng.random() < 0.5:
            tags = self.pusher.tags
            tag = tags[-rng.randint(1, min(len(tags), 30))]  # mostly the newest
            return f"{host}/sgsoak/plain:{tag}"
        if rng.random() < 0.1:
            return f"{host}/sgsoak/missing-{rng.randint(0, 50)}:v1"
        return f"{host}/sgsoak/{rng.choice(SEEDED)}:v1"

    def workload(self, kind: str, images: list[str]) -> dict[str, Any]:
        rng = self.rng
        if kind == "Pod":
            pools = {"kubernetes.azure.com/agentpool": rng.choice(["streamub", "arm", "nostream"])}
            spec = {"nodeSelector": pools} if rng.random() < 0.5 else {}
            return pod(f"p{rng.randint(0, 99)}", images, **spec)
        if kind == "Deployment":
            return deployment(f"d{rng.randint(0, 99)}", images)
        template = pod("j", images)["spec"]
        return {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": f"c{rng.randint(0, 99)}"},
            "spec": {
                "schedule": "* * * * *",
                "jobTemplate": {"spec": {"template": {"spec": template}}},
            },
        }

    def body(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        images = [self.image() for _ in range(rng.randint(1, 3))]
        kind = rng.choice(["Pod", "Pod", "Deployment", "CronJob"])
        obj = self.workload(kind, images)
        operation = rng.choice(["CREATE", "CREATE", "UPDATE", "DELETE"])
        old = None
        if operation == "UPDATE" and rng.random() < 0.5:  # same images: skipped
            old = json.loads(json.dumps(obj))
            old["metadata"]["labels"] = {"changed": "no"}
        elif operation == "UPDATE":
            old = self.workload(kind, [f"{OLAREG}/sgsoak/plain:v1"])
        namespace = rng.choice(["apps", "apps", "strict"])
        endpoint = rng.choice(["validate", "mutate"])
        return endpoint, review(obj, namespace=namespace, operation=operation, old=old)

    def run(self) -> None:
        client = self.target.new_client(timeout=httpx.Timeout(15.0))
        try:
            while not self.stop_event.wait(PAUSE):
                endpoint, body = self.body()
                sent = json.dumps(body).encode()
                started = time.monotonic()
                try:
                    response = client.post(f"/{endpoint}", content=sent)
                    seconds = time.monotonic() - started
                    answer = check_answer(sent, endpoint, response, seconds)
                except (Violation, httpx.HTTPError) as err:
                    self.errors.append(f"{type(err).__name__}: {err}"[:500])
                    continue
                if answer.status != 200:  # every review here is well formed
                    self.errors.append(f"HTTP {answer.status} {answer.message}: {sent[:300]!r}")
                    continue
                self.latencies.append(seconds)
                if seconds > WITHIN:
                    self.overruns.append(f"{endpoint} took {seconds:.2f}s")
                response_obj = answer.body["response"]
                self.outcomes[
                    "denied"
                    if not answer.allowed
                    else "warned"
                    if answer.warnings
                    else "patched"
                    if "patch" in response_obj
                    else "allowed"
                ] += 1
        finally:
            client.close()


def _sample(target: ServerProcess, at: float) -> dict[str, Any]:
    probe = target.probe_after(time.time() - 0.6)
    return {
        "t": time.monotonic() - at,
        "rss_kb": target.rss_kb(),
        "fds": len(target.fds()),
        "sockets": target.sockets(),
        "threads": target.threads(),
        "tasks": probe["tasks"],
        "flights": probe["flights"],
        "background": probe["background"],
        "caches": probe["caches"],
        "evictions": sum(s["evictions"] for s in probe["cache_stats"].values()),
    }


@pytest.fixture(scope="module")
def soak_target(
    cluster: Path, soak_repo: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, FaultProxy]]:
    proxy = FaultProxy(OLAREG).start()
    policy = {
        "mode": "warn",
        "onError": "deny",
        "namespaceModes": {"strict": "enforce"},
        "acrRegistries": [OLAREG, proxy.host],
        "registry": {
            "deadlineSeconds": DEADLINE,
            "backgroundSeconds": BACKGROUND,
            "connectTimeoutSeconds": 1,
            "requestTimeoutSeconds": 1,
            "circuit": {"failureThreshold": 5, "openSeconds": 2},
            "cache": {"tagTtlSeconds": 5, "missingTtlSeconds": 5, "maxEntries": MAX_ENTRIES},
            "registries": {OLAREG: {"insecure": True}, proxy.host: {"insecure": True}},
        },
    }
    target = ServerProcess(
        tmp_path_factory.mktemp("soak"), policy, kubeconfig=cluster, log_level="warning"
    ).start()
    target.wait_ready()
    yield target, proxy
    target.stop()
    proxy.stop()


def test_soak(soak_target: tuple[ServerProcess, FaultProxy], record: Row) -> None:
    target, proxy = soak_target
    record.area = "soak"
    record.tried = (
        f"{SECONDS:.0f} s of mixed admissions (2 clients; Pods, Deployments, CronJobs; "
        "CREATE/UPDATE/DELETE; warn and enforce), new image tags pushed every 0.1 s, registry "
        "faults rotating every 3 s (hang, 500, reset, 429, bad JSON, trickle, slow body, stall)"
    )
    time.sleep(1.0)
    idle = _sample(target, time.monotonic())
    stop = threading.Event()
    pusher = Pusher(stop)
    loads = [Load(target, pusher, proxy, stop, seed) for seed in (1, 2)]
    began = time.monotonic()
    pusher.start()
    for load in loads:
        load.start()
    samples, switches, fault_index = [], 0, 0
    next_switch = began + 3.0
    try:
        while time.monotonic() - began < SECONDS:
            time.sleep(1.0)
            samples.append(_sample(target, began))
            if time.monotonic() >= next_switch:
                fault_index = (fault_index + 1) % len(FAULTS)
                proxy.set(**FAULTS[fault_index])
                switches += 1
                next_switch += 3.0
    finally:
        proxy.set("pass")
        stop.set()
        for thread in (*loads, pusher):
            thread.join(30)
    # settle: the background look-ups end within backgroundSeconds
    time.sleep(BACKGROUND + 2.0)
    settled = _sample(target, began)

    errors = [e for load in loads for e in load.errors]
    overruns = [e for load in loads for e in load.overruns]
    outcomes = sum((load.outcomes for load in loads), Counter())
    latencies = [s for load in loads for s in load.latencies]
    total = sum(outcomes.values())
    p99 = sorted(latencies)[int(len(latencies) * 0.99)] if latencies else 0.0
    quarter = [s for s in samples if s["t"] <= SECONDS / 4]
    last = [s for s in samples if s["t"] >= SECONDS * 3 / 4]
    warm_rss = statistics.median(s["rss_kb"] for s in quarter) / 1024
    end_rss = statistics.median(s["rss_kb"] for s in last) / 1024
    peak_sockets = max(s["sockets"] for s in samples)
    biggest_cache = max(max(s["caches"].values()) for s in samples)
    record.cases = total
    record.observed = (
        f"{total} admissions ({total / SECONDS:.0f}/s: {dict(outcomes)}), {switches} fault "
        f"changes, {len(pusher.tags)} tags pushed; p99 {p99 * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms; RSS {idle['rss_kb'] // 1024} MiB idle, "
        f"{warm_rss:.0f} MiB after the first quarter, {end_rss:.0f} MiB in the last; "
        f"sockets {idle['sockets']} idle, peak {peak_sockets}, {settled['sockets']} after; "
        f"largest cache {biggest_cache} (max {MAX_ENTRIES}), {settled['evictions']} evictions; "
        f"tasks {idle['tasks']} idle, {settled['tasks']} after, look-ups in flight "
        f"{settled['flights']}; {len(errors)} errors; {len(overruns)} answers over "
        f"{WITHIN:.2f} s"
    )
    assert errors == [], errors[:5]
    # A deadline that did not hold makes every look-up during a stall slow; a stalled machine
    # makes a few answers slow, none by much.
    assert len(overruns) <= max(2, total // 200), overruns[:5]
    assert max(latencies, default=0.0) < 5.0, record.observed
    assert total > SECONDS * 20, record.observed
    assert biggest_cache <= MAX_ENTRIES, record.observed
    assert settled["evictions"] > 0, "the run never filled a cache: not a soak of the bound"
    assert end_rss - warm_rss < (25 if LONG else 20), record.observed
    assert peak_sockets < idle["sockets"] + 2 * 32 + 10, record.observed
    assert settled["sockets"] <= idle["sockets"] + 6, record.observed
    assert settled["fds"] <= idle["fds"] + 6, record.observed
    assert settled["tasks"] <= idle["tasks"], record.observed
    assert settled["flights"] == 0 and settled["background"] == 0, record.observed
    # the default executor (getaddrinfo) keeps up to min(32, cpus + 4) threads: a bound
    assert settled["threads"] <= idle["threads"] + 6, record.observed
    assert "Traceback" not in target.log_text()
