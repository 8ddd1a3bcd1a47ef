"""What the reliability tests share: the run profile (short for `make test`, long for
`make reliability`), the real server as a process, AdmissionReview builders, the oracle every
answer must pass, and the recorder behind docs/reliability.md.

The server is the real `streamgate serve` (app.cli.main.main) started through
`tests.reliability.probe_server`, which only adds a loop writing what it sees inside the
process (asyncio tasks, cache sizes, circuits, the watches) to a JSON file twice a second.
RSS, open descriptors and sockets are read from /proc from the outside.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import yaml

from app.certs.tls import issue_self_signed
from app.core.messages import MAX_WARNING
from app.telemetry.logs import FLUSH_SECONDS

ROOT = Path(__file__).resolve().parents[2]
LONG = os.environ.get("STREAMGATE_RELIABILITY", "short") == "long"
RESULTS = os.environ.get("STREAMGATE_RELIABILITY_RESULTS", "")


def scale(short: int, long: int) -> int:
    """`short` under `make test`, `long` under `make reliability`."""
    return long if LONG else short


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the record behind docs/reliability.md ------------------------------------------------


@dataclass
class Row:
    area: str
    tried: str
    cases: int = 0
    observed: str = ""
    nodeid: str = ""
    outcome: str = ""
    seconds: float = 0.0


def write_row(row: Row) -> None:
    """Appends one row to $STREAMGATE_RELIABILITY_RESULTS (JSON lines); nothing when unset."""
    if not RESULTS:
        return
    path = Path(RESULTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(row.__dict__) + "\n")


# ---- AdmissionReviews -----------------------------------------------------------------------


def pod(name: str, images: Sequence[str], **spec: Any) -> dict[str, Any]:
    containers = [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": containers, **spec},
    }


def deployment(name: str, images: Sequence[str]) -> dict[str, Any]:
    template = pod(name, images)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": template["spec"]},
        },
    }


GROUPS = {"Pod": "", "Deployment": "apps", "CronJob": "batch", "Job": "batch"}


def review(
    obj: Mapping[str, Any] | None,
    *,
    namespace: str = "default",
    operation: str = "CREATE",
    old: Mapping[str, Any] | None = None,
    kind: str | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    kind = kind or (str(obj.get("kind")) if obj else "Pod")
    group = GROUPS.get(kind, "")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
            "operation": operation,
            "namespace": namespace,
            "name": str((obj or {}).get("metadata", {}).get("name", "")),
            "object": obj,
            "oldObject": old,
            "dryRun": False,
            "userInfo": {"username": "reliability"},
        },
    }


# ---- the oracle -------------------------------------------------------------------------------


class Violation(AssertionError):
    pass


@dataclass
class Answer:
    status: int
    body: Any
    seconds: float
    warnings: list[str] = field(default_factory=list)
    allowed: bool | None = None
    message: str = ""

    @property
    def text(self) -> str:
        return " | ".join([*self.warnings, self.message])


def check_answer(sent: bytes, endpoint: str, response: httpx.Response, seconds: float) -> Answer:
    """Every answer streamgate gives must pass this: a 200 with a well-formed AdmissionReview
    for the request (same apiVersion and uid; warnings on /validate and /admit only, each at most
    MAX_WARNING (256) characters; on /mutate and /admit a JSONPatch that applies to the object), or
    400/413 with a reason. Nothing else, and never the onError "internal error" answer (a bug)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError as err:
        raise Violation(
            f"HTTP {status} with a body that is not JSON: {response.text[:200]!r}"
        ) from err
    if status in (400, 413):
        if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
            raise Violation(f"HTTP {status} without a reason: {body!r}")
        return Answer(status, body, seconds, message=body["error"])
    if status != 200:
        raise Violation(f"HTTP {status}: {response.text[:300]!r}")
    try:
        request = json.loads(sent)["request"]
        api_version = json.loads(sent)["apiVersion"]
    except (ValueError, KeyError, TypeError) as err:
        raise Violation(f"HTTP 200 for something that is not a review: {sent[:200]!r}") from err
    if response.headers.get("content-type", "").split(";")[0] != "application/json":
        raise Violation(f"content type {response.headers.get('content-type')!r}")
    if body.get("apiVersion") != api_version or body.get("kind") != "AdmissionReview":
        raise Violation(f"envelope {body.get('apiVersion')!r} {body.get('kind')!r}")
    answer = body.get("response")
    if not isinstance(answer, dict) or answer.get("uid") != request["uid"]:
        raise Violation(f"response does not echo the uid: {str(answer)[:200]}")
    allowed = answer.get("allowed")
    if not isinstance(allowed, bool):
        raise Violation(f"allowed is {allowed!r}")
    warnings = answer.get("warnings", [])
    if not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
        raise Violation(f"warnings {warnings!r}")
    long_ones = [w for w in warnings if len(w) > MAX_WARNING]
    if long_ones:
        raise Violation(f"warning over {MAX_WARNING} characters: {long_ones[0]!r}")
    message = ""
    if not allowed:
        status_obj = answer.get("status") or {}
        message = status_obj.get("message", "")
        if status_obj.get("code") != 403 or not message:
            raise Violation(f"a denial without code 403 and a message: {status_obj!r}")
    if endpoint == "validate" and "patch" in answer:
        raise Violation("/validate sent a patch")
    if endpoint == "mutate" and (warnings or not allowed):
        raise Violation("/mutate warned or denied")
    if endpoint == "admit" and not allowed and "patch" in answer:
        raise Violation("/admit sent a patch with a denial")
    if endpoint in ("mutate", "admit") and "patch" in answer:
        if answer.get("patchType") != "JSONPatch":
            raise Violation(f"patchType {answer.get('patchType')!r}")
        ops = json.loads(base64.b64decode(answer["patch"]))
        if not isinstance(ops, list):
            raise Violation(f"patch is not a list: {ops!r}")
        try:
            jsonpatch.apply_patch(request.get("object"), ops)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
            raise Violation(f"patch does not apply to the object: {err}: {ops}") from err
    text = " ".join([*warnings, message])
    if "internal error" in text:
        raise Violation(f"onError answer for an evaluation failure (a bug): {text}")
    return Answer(status, body, seconds, warnings, allowed, message)


# ---- the server under test ----------------------------------------------------------------


def _proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class ServerProcess:
    """`streamgate serve` with `policy`, on 127.0.0.1 with its own certificate, observed."""

    def __init__(
        self,
        workdir: Path,
        policy: Mapping[str, Any],
        *,
        kubeconfig: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_level: str = "info",
        log_format: str = "text",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.policy_path = workdir / "policy.yaml"
        self.policy_path.write_text(yaml.safe_dump(dict(policy)))
        self.certs = issue_self_signed(workdir / "certs", ["127.0.0.1", "localhost"])
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = workdir / "streamgate.log"
        self.probe_path = workdir / "probe.json"
        self.kubeconfig = kubeconfig
        self.env = dict(env or {})
        self.log_level = log_level
        self.log_format = log_format
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> ServerProcess:
        args = [
            sys.executable,
            "-m",
            "tests.reliability.probe_server",
            str(self.probe_path),
            "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--cert", str(self.certs.cert),
            "--key", str(self.certs.key),
            "--policy", str(self.policy_path),
            "--metrics-port", str(self.metrics_port),
            "--log-level", self.log_level,
            "--log-format", self.log_format,
            *(["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else []),
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamgate exited:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if self.client().get("/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"streamgate did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.client().get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("streamgate not ready")
            time.sleep(0.2)

    def stop(self) -> int | None:
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            return None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- talking to it ----------------------------------------------------------------------

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca))

    def client(self) -> httpx.Client:
        """One shared keep-alive client (use `new_client` from other threads)."""
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", httpx.Timeout(30.0))
        return httpx.Client(base_url=self.url, verify=self.context(), **kw)

    def post(
        self, endpoint: str, body: bytes | Mapping[str, Any], *, client: httpx.Client | None = None
    ) -> Answer:
        """POSTs to /validate or /mutate and checks the answer against the oracle."""
        sent = body if isinstance(body, bytes) else json.dumps(body).encode()
        started = time.monotonic()
        response = (client or self.client()).post(
            f"/{endpoint}", content=sent, headers={"Content-Type": "application/json"}
        )
        return check_answer(sent, endpoint, response, time.monotonic() - started)

    def admit(self, obj: Mapping[str, Any], *, namespace: str = "default", **kw: Any) -> Answer:
        return self.post("validate", review(obj, namespace=namespace, **kw))

    # ---- observing it -----------------------------------------------------------------------

    def rss_kb(self) -> int:
        return _proc_status(self.pid, "VmRSS")

    def threads(self) -> int:
        return _proc_status(self.pid, "Threads")

    def fds(self) -> list[str]:
        out = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                out.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
        return out

    def sockets(self) -> int:
        return sum(1 for target in self.fds() if target.startswith("socket:"))

    def probe(self, *, fresh_within: float = 5.0) -> dict[str, Any]:
        """What the process reported about itself (at most `fresh_within` seconds old)."""
        deadline = time.monotonic() + fresh_within
        while True:
            with contextlib.suppress(OSError, ValueError):
                data: dict[str, Any] = json.loads(self.probe_path.read_text())
                if time.time() - data["time"] < fresh_within:
                    return data
            if time.monotonic() > deadline:
                raise RuntimeError("no fresh probe from streamgate")
            time.sleep(0.1)

    def probe_after(self, moment: float) -> dict[str, Any]:
        """The first probe written after `moment` (time.time())."""
        deadline = time.monotonic() + 5
        while True:
            data = self.probe()
            if data["time"] > moment:
                return data
            if time.monotonic() > deadline:
                raise RuntimeError("no new probe from streamgate")
            time.sleep(0.1)

    def log_text(self) -> str:
        """The log so far: info lines reach the file within FLUSH_SECONDS
        (app/telemetry/logs.py)."""
        time.sleep(2 * FLUSH_SECONDS)
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def eventually(check: Any, *, timeout: float, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        time.sleep(interval)


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def server(workdir: Path, policy: Mapping[str, Any], **kw: Any) -> Iterator[ServerProcess]:
    proc = ServerProcess(workdir, policy, **kw).start()
    try:
        yield proc
    finally:
        proc.stop()
