"""Registry faults that no real registry produces on demand, from a real HTTP server.

A small ASGI app under uvicorn on 127.0.0.1 (a thread) answers manifests normally and
misbehaves according to the repository name: it hangs, drips, answers 500, 429 with
Retry-After, bad JSON, HTML, a 10 MB referrers page, or redirects elsewhere. Every look-up
must end within the deadline with `unknown` and a reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from app.core.images import parse_image
from app.core.verdicts import Verdict
from app.registry import RegistryConfig, RegistryVerdictSource

pytestmark = pytest.mark.registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "a" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
TEN_MB = 10 * 1024 * 1024
DEADLINE = 1.0

Send = Any
Receive = Any


class FaultServer:
    """The misbehaving registry; `requests` counts what reached it."""

    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            self.app,
            interface="asgi3",
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> FaultServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "fault server did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    async def app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        with self._lock:
            self.requests += 1
        parts = scope["path"].split("/")  # "", "v2", repo..., kind, reference
        repo, kind = "/".join(parts[2:-2]), parts[-2]
        headers = dict(scope["headers"])
        if kind == "manifests":
            await self.manifest(repo, scope["method"], headers, send)
        else:
            await self.referrers(repo, send)

    async def manifest(
        self, repo: str, method: str, headers: dict[bytes, bytes], send: Send
    ) -> None:
        if repo == "hang-manifest":
            await asyncio.sleep(30)
        if repo.startswith("err500"):  # a registry that is down answers 500 to everything
            await respond(send, 500)
            return
        if repo == "redirect-away":
            if b"authorization" not in headers:
                await respond(send, 401, {"www-authenticate": 'Basic realm="faults"'})
            else:
                await respond(send, 302, {"location": "http://localhost:9/stolen"})
            return
        head = {"content-type": OCI_MANIFEST, "docker-content-digest": DIGEST}
        await respond(send, 200, head, b"" if method == "HEAD" else MANIFEST)

    async def referrers(self, repo: str, send: Send) -> None:
        index = {"content-type": OCI_INDEX}
        if repo == "hang":
            await asyncio.sleep(30)
        elif repo == "slow-drip":
            await start(send, 200, index)
            for _ in range(100):
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                await asyncio.sleep(0.3)
            await send({"type": "http.response.body", "body": b""})
        elif repo == "ratelimited":
            await respond(send, 429, {"retry-after": "60"})
        elif repo == "badjson":
            await respond(send, 200, index, b'{"manifests": [')
        elif repo == "html":
            await respond(send, 200, {"content-type": "text/html"}, b"<html>hello</html>")
        elif repo == "huge":  # chunked: no Content-Length to refuse it early
            await start(send, 200, index)
            await send(
                {"type": "http.response.body", "body": b'{"manifests": [', "more_body": True}
            )
            chunk = b'{"mediaType":"x","digest":"sha256:' + b"b" * 64 + b'"},' * 1
            for _ in range(TEN_MB // (64 * 1024)):
                body = chunk * (64 * 1024 // len(chunk))
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"]}"})
        elif repo == "huge-declared":
            await respond(send, 200, index, b" " * TEN_MB)
        else:
            doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            await respond(send, 200, index, json.dumps(doc).encode())


async def start(send: Send, status: int, headers: dict[str, str]) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def respond(
    send: Send, status: int, headers: dict[str, str] | None = None, body: bytes = b""
) -> None:
    headers = dict(headers or {})
    headers.setdefault("content-length", str(len(body)))
    await start(send, status, headers)
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    """One server for the module; tests compare request counts before and after."""
    server = FaultServer().start()
    yield server
    server.stop()


def source_for(faults: FaultServer, **config: Any) -> RegistryVerdictSource:
    settings = {"insecure": True, "username": "u", "password_env": "P"}
    cfg = RegistryConfig.model_validate({"registries": {faults.host: settings}, **config})
    return RegistryVerdictSource(cfg, env={"P": "p"})


@pytest.mark.parametrize(
    ("repo", "reason"),
    [
        ("hang", "registry timed out"),
        ("hang-manifest", "registry timed out"),
        ("slow-drip", "registry timed out"),
        ("err500", "registry unavailable (HTTP 500)"),
        ("ratelimited", "registry rate-limited; retry in 60 s"),
        ("badjson", "registry sent a bad answer: referrers list is not valid JSON"),
        ("html", "registry sent a bad answer: referrers list is not JSON"),
        ("huge", "registry sent a bad answer: referrers answer too large"),
        ("huge-declared", "registry sent a bad answer: referrers answer too large"),
        ("redirect-away", "registry sent a bad answer: a redirect to another host"),
    ],
)
async def test_faults_end_within_the_deadline_with_unknown(
    faults: FaultServer, repo: str, reason: str
) -> None:
    # Bad answers come at once: a long deadline, so a stalled machine cannot turn them into
    # a timeout. The stalls (30 s) end at the deadline, with room for a busy machine.
    stalls = reason == "registry timed out"
    source = source_for(faults, deadline_seconds=DEADLINE if stalls else 10 * DEADLINE)
    try:
        started = time.monotonic()
        verdict = await source.verdict(parse_image(f"{faults.host}/{repo}:v1"))
        elapsed = time.monotonic() - started
    finally:
        await source.aclose()
    assert verdict.verdict is Verdict.UNKNOWN
    assert verdict.reason == reason
    assert elapsed < DEADLINE + 1.0


async def test_a_healthy_image_on_the_fault_server(faults: FaultServer) -> None:
    source = source_for(faults)
    try:
        verdict = await source.verdict(parse_image(f"{faults.host}/fine:v1"))
    finally:
        await source.aclose()
    assert (verdict.verdict, verdict.digest) == (Verdict.NOT_STREAMABLE, DIGEST)


async def test_rate_limit_fails_fast_afterwards(faults: FaultServer) -> None:
    source = source_for(faults)
    try:
        await source.verdict(parse_image(f"{faults.host}/ratelimited:v1"))
        asked = faults.requests
        verdicts = [await source.verdict(parse_image(f"{faults.host}/ok{n}:v1")) for n in range(5)]
    finally:
        await source.aclose()
    assert faults.requests == asked  # not asked again while Retry-After runs
    assert all(v.reason.startswith("registry rate-limited") for v in verdicts)


async def test_repeated_failures_open_the_circuit(faults: FaultServer) -> None:
    source = source_for(faults, circuit={"failure_threshold": 3})
    try:
        for n in range(3):
            await source.verdict(parse_image(f"{faults.host}/err500-{n}:v1"))
        asked = faults.requests
        verdict = await source.verdict(parse_image(f"{faults.host}/ok:v1"))
    finally:
        await source.aclose()
    assert faults.requests == asked  # answered without asking: no wait on the registry
    assert verdict.reason.startswith("registry unavailable (recent failures")


async def test_timed_out_lookup_finishes_in_the_background(faults: FaultServer) -> None:
    """The hang ends when the per-request timeout fires; meanwhile the circuit is untouched
    and the source closes promptly, cancelling what still runs."""
    source = source_for(faults, deadline_seconds=0.3, request_timeout_seconds=0.8)
    try:
        first = await source.verdict(parse_image(f"{faults.host}/hang:v1"))
        assert first.reason == "registry timed out"
        await asyncio.sleep(1.5)  # the background look-up hit its read timeout (0.8 s) by now
        for _ in range(3):  # a healthy look-up may still overrun 0.3 s on a stalled machine
            second = await source.verdict(parse_image(f"{faults.host}/fine:v1"))
            if second.reason != "registry timed out":
                break
            await asyncio.sleep(0.3)
    finally:
        started = time.monotonic()
        await source.aclose()
        assert time.monotonic() - started < 1.0
    assert second.verdict is Verdict.NOT_STREAMABLE
