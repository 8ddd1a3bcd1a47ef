"""A real streamgate HTTPS server on 127.0.0.1, in a thread, for feature tests."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.core.policy import parse_policy
from app.core.pools import NoInventory
from app.core.verdicts import ImageVerdict, Verdict
from app.webhook.admission import Admission
from app.webhook.serve import ServeSettings, build_server
from tests.memory import MemoryVerdicts

REG = "streamgatedemo.azurecr.io"
FIRST_REQUEST_TIMEOUT = 1.0  # short, so the slowloris test is quick


def trusting(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only `ca`."""
    return ssl.create_default_context(cafile=str(ca))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Every feature test runs on both server stacks `streamgate serve` offers: the default
# (httptools + uvloop) and the pure-Python one (`--http h11 --loop asyncio`).
STACKS = {"httptools+uvloop": ("httptools", "uvloop"), "h11+asyncio": ("h11", "asyncio")}


class Webhook:
    def __init__(self, running, certs: Path, source: MemoryVerdicts, stack: str):
        self.stack = stack
        self.running = running
        self.certs = certs
        self.source = source
        self.url = running.url

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=trusting(self.ca), timeout=10)


@pytest.fixture(scope="module", params=list(STACKS))
def webhook(request, tmp_path_factory):
    http, loop = STACKS[request.param]
    certs = tmp_path_factory.mktemp("certs")
    source = MemoryVerdicts(
        {
            f"{REG}/sidecar:v2": ImageVerdict(Verdict.NOT_STREAMABLE),
            f"{REG}/web:v2": ImageVerdict(Verdict.UNKNOWN, "registry timed out"),
            f"{REG}/tools/debug:v1": ImageVerdict(Verdict.NOT_STREAMABLE),
        }
    )
    policy = parse_policy({"namespaceModes": {"strict": "enforce"}})
    admission = Admission(policy=lambda: policy, verdicts=source, placement=NoInventory())
    settings = ServeSettings(
        host="127.0.0.1",
        port=free_port(),
        self_signed_dir=certs,
        cert_reload_interval=0.2,
        log_level="warning",
        first_request_timeout=FIRST_REQUEST_TIMEOUT,
        http=http,
        loop=loop,
    )
    running = build_server(settings, admission)
    thread = threading.Thread(target=running.server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("streamgate did not start")
        time.sleep(0.02)
    yield Webhook(running, certs, source, request.param)
    running.server.should_exit = True
    thread.join(timeout=10)
