"""Helpers for tests that use the local registries started by ``hack/registries.sh``.

* :func:`ensure_registries` runs ``hack/registries.sh up`` once per process and returns the
  addresses, credentials and log files (:class:`RegistryEnv`).
* :func:`count_requests` counts the requests a registry saw, from the registry's own log:
  docker-registry writes one Apache "combined" access-log line per request, olareg (at trace
  level) one ``msg=ServeHTTP method=... url=... status=...`` line.
* :class:`AcrFront` starts ``tests.support.acr_front`` as a subprocess in front of the
  token-auth registry and talks to its control API (stats, config).
* :func:`run_seeder` runs ``hack/seed_registry.py`` and returns what it pushed.

See docs/registries.md for the whole picture.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRIES_SH = REPO_ROOT / "hack" / "registries.sh"
SEEDER = REPO_ROOT / "hack" / "seed_registry.py"

STREAMING_TYPE = "application/vnd.azure.artifact.streaming.v1"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT_MANIFESTS = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class RegistryInfraError(RuntimeError):
    """The local registries could not be started or used."""


# --------------------------------------------------------------------------- request counting

# docker-registry (distribution 2.8) access log, Apache combined format:
# 127.0.0.1 - - [27/Nov/2026:18:31:24 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS_RE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) '
)
# olareg at trace level (slog text):
# time=... level=DEBUG-4 msg=ServeHTTP duration=12µs method=GET url=/v2/ status=200 req-headers=...
_OLAREG_RE = re.compile(
    r"\bmsg=ServeHTTP\b.*?\bmethod=(?P<method>[A-Z]+) url=(?P<path>\S+) status=(?P<status>\d{3})"
)


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # path and query, as the registry logged it
    status: int


def parse_log_line(line: str) -> LoggedRequest | None:
    """One request from a docker-registry access-log line or an olareg trace line, else None."""
    m = _ACCESS_RE.match(line) or _OLAREG_RE.search(line)
    if m is None:
        return None
    path = m["path"].strip('"')
    return LoggedRequest(m["method"], path, int(m["status"]))


def log_offset(log_path: str | Path) -> int:
    """Current size of a log: pass it as ``since_offset`` to count only what comes after."""
    try:
        return Path(log_path).stat().st_size
    except FileNotFoundError:
        return 0


def read_requests(log_path: str | Path, since_offset: int = 0) -> list[LoggedRequest]:
    """Requests logged after ``since_offset`` (complete lines only)."""
    with open(log_path, "rb") as f:
        f.seek(since_offset)
        data = f.read()
    end = data.rfind(b"\n")
    if end < 0:
        return []
    out = []
    for raw in data[: end + 1].decode("utf-8", "replace").splitlines():
        req = parse_log_line(raw)
        if req is not None:
            out.append(req)
    return out


def _matching(
    requests: Sequence[LoggedRequest],
    method: str | None,
    path_re: str | re.Pattern[str] | None,
    status: int | None,
) -> int:
    pattern = re.compile(path_re) if isinstance(path_re, str) else path_re
    n = 0
    for r in requests:
        if method is not None and r.method != method.upper():
            continue
        if pattern is not None and not pattern.search(r.path):
            continue
        if status is not None and r.status != status:
            continue
        n += 1
    return n


def count_requests(
    log_path: str | Path,
    since_offset: int = 0,
    method: str | None = None,
    path_re: str | re.Pattern[str] | None = None,
    *,
    status: int | None = None,
    expect: int | None = None,
    timeout: float = 2.0,
) -> int:
    """How many requests the registry logged after ``since_offset``.

    ``method`` filters on the HTTP method, ``path_re`` is searched (``re.search``) in the
    logged path+query, ``status`` filters on the response status. A registry writes its line
    just after it answered, so the count is read until three reads 50 ms apart agree (at most
    ``timeout``); with ``expect`` it is read until it reaches that number (or the timeout).
    """
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    while True:
        n = _matching(read_requests(log_path, since_offset), method, path_re, status)
        seen.append(n)
        if expect is not None:
            if n >= expect or time.monotonic() >= deadline:
                return n
        elif seen[-3:] == [n, n, n] or time.monotonic() >= deadline:
            return n
        time.sleep(0.05)


# --------------------------------------------------------------------------- the registries


@dataclass
class Registry:
    """One local registry: where it is, how to log in, and its log for counting requests."""

    name: str
    host: str  # host:port
    log_path: Path
    scheme: str = "http"
    username: str | None = None
    password: str | None = None
    ca_cert: str | None = None
    referrers_api: bool = False  # implements GET /v2/<name>/referrers/<digest>

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def offset(self) -> int:
        return log_offset(self.log_path)

    def requests(self, since_offset: int = 0) -> list[LoggedRequest]:
        return read_requests(self.log_path, since_offset)

    def count(
        self,
        since_offset: int = 0,
        method: str | None = None,
        path_re: str | re.Pattern[str] | None = None,
        **kw: Any,
    ) -> int:
        return count_requests(self.log_path, since_offset, method, path_re, **kw)

    def client(self, *, auth: bool = True, **kw: Any) -> httpx.Client:
        """An httpx client with base_url set (and the basic credentials, if any)."""
        if auth and self.username is not None and self.password is not None:
            kw.setdefault("auth", (self.username, self.password))
        if self.ca_cert:
            kw.setdefault("verify", ssl.create_default_context(cafile=self.ca_cert))
        kw.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, **kw)

    def seeder_args(self) -> list[str]:
        args = ["--registry", self.host]
        if self.scheme == "http":
            args.append("--plain-http")
        elif self.ca_cert:
            args += ["--ca-cert", self.ca_cert]
        if self.username is not None and self.password is not None:
            args += ["--user", self.username, "--password", self.password]
        return args


@dataclass
class RegistryEnv:
    """What ``hack/registries.sh env`` prints, parsed."""

    values: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    @property
    def state_dir(self) -> Path:
        return Path(self.values["STREAMGATE_REGISTRY_STATE"])

    @property
    def pki(self) -> Path:
        return Path(self.values["STREAMGATE_PKI"])

    @property
    def ca_cert(self) -> str:
        return self.values["STREAMGATE_CA_CERT"]

    @property
    def olareg(self) -> Registry:
        v = self.values
        return Registry(
            "olareg", v["STREAMGATE_OLAREG"], Path(v["STREAMGATE_OLAREG_LOG"]), referrers_api=True
        )

    @property
    def olareg_paged(self) -> Registry:
        v = self.values
        return Registry(
            "olareg_paged",
            v["STREAMGATE_OLAREG_PAGED"],
            Path(v["STREAMGATE_OLAREG_PAGED_LOG"]),
            referrers_api=True,
        )

    @property
    def distribution(self) -> Registry:
        v = self.values
        return Registry(
            "distribution", v["STREAMGATE_DISTRIBUTION"], Path(v["STREAMGATE_DISTRIBUTION_LOG"])
        )

    @property
    def basic(self) -> Registry:
        v = self.values
        return Registry(
            "basic",
            v["STREAMGATE_BASIC"],
            Path(v["STREAMGATE_BASIC_LOG"]),
            username=v["STREAMGATE_BASIC_USER"],
            password=v["STREAMGATE_BASIC_PASSWORD"],
        )

    @property
    def olareg_acr(self) -> Registry:
        """The olareg that only the referrers-capable ACR front (--enforce-auth) talks to."""
        v = self.values
        return Registry(
            "olareg_acr",
            v["STREAMGATE_OLAREG_ACR"],
            Path(v["STREAMGATE_OLAREG_ACR_LOG"]),
            referrers_api=True,
        )

    @property
    def token_registry(self) -> Registry:
        """The token-auth docker-registry itself (behind the ACR front)."""
        v = self.values
        return Registry(
            "token_registry",
            v["STREAMGATE_TOKEN_REGISTRY"],
            Path(v["STREAMGATE_TOKEN_REGISTRY_LOG"]),
        )


def parse_env_output(text: str) -> dict[str, str]:
    values = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("export "):
            continue
        key, _, value = line[len("export ") :].partition("=")
        values[key] = shlex.split(value)[0] if value else ""
    return values


def registry_env() -> RegistryEnv:
    out = subprocess.run(
        ["bash", str(REGISTRIES_SH), "env"], check=True, capture_output=True, text=True, timeout=60
    )
    return RegistryEnv(parse_env_output(out.stdout))


def registries_running() -> bool:
    """True when ``hack/registries.sh status`` finds every instance running."""
    res = subprocess.run(
        ["bash", str(REGISTRIES_SH), "status"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res.returncode == 0


class _State:
    lock = threading.Lock()
    env: RegistryEnv | None = None
    started_here = False


def ensure_registries(timeout: float = 1500.0) -> RegistryEnv:
    """Run ``hack/registries.sh up`` (once per process; it is idempotent anyway).

    The first run on a machine builds olareg (a few minutes on a busy 2-core box) and may
    apt-get install docker-registry; later runs take about a second.
    """
    with _State.lock:
        if _State.env is not None:
            return _State.env
        was_running = registries_running()
        res = subprocess.run(
            ["bash", str(REGISTRIES_SH), "up"],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if res.returncode != 0:
            raise RegistryInfraError(
                f"hack/registries.sh up failed ({res.returncode}):\n{res.stderr[-4000:]}"
            )
        _State.started_here = not was_running
        _State.env = registry_env()
        return _State.env


def started_here() -> bool:
    """Whether :func:`ensure_registries` found something not running and started it."""
    return _State.started_here


def stop_registries() -> None:
    subprocess.run(
        ["bash", str(REGISTRIES_SH), "down"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --------------------------------------------------------------------------- the ACR front


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AcrFront:
    """A running ``tests.support.acr_front`` subprocess and its control API."""

    host: str  # 127.0.0.1:port: also the `service` name clients use
    ca_cert: str
    aad_token: str  # an opaque AAD token it accepts
    aad_signing_key: Path  # signs JWT "AAD" tokens it accepts (see mint_aad_token)
    upstream: Registry  # the registry behind it (its log counts what reached it)
    log_path: Path  # the front's own stdout/stderr
    process: subprocess.Popen[bytes] | None = None
    tenant: str = "72f988bf-0000-0000-0000-000000000000"
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def service(self) -> str:
        return self.host

    @property
    def registry(self) -> Registry:
        """The front as a registry (HTTPS, token auth) for clients and the seeder."""
        return Registry("acr_front", self.host, self.log_path, scheme="https", ca_cert=self.ca_cert)

    def seeder_args(self) -> list[str]:
        return ["--registry", self.host, "--ca-cert", self.ca_cert, "--aad-token", self.aad_token]

    def refresh_token(self) -> str:
        """What `docker login` with the null user sends as its password: an ACR refresh token
        from this front's /oauth2/exchange for its opaque AAD token."""
        with httpx.Client(verify=ssl.create_default_context(cafile=self.ca_cert)) as http:
            answer = http.post(
                f"{self.url}/oauth2/exchange",
                data={
                    "grant_type": "access_token",
                    "service": self.host,
                    "access_token": self.aad_token,
                },
            )
        answer.raise_for_status()
        token: str = answer.json()["refresh_token"]
        return token

    def client(self, **kw: Any) -> httpx.Client:
        kw.setdefault("verify", ssl.create_default_context(cafile=self.ca_cert))
        kw.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, **kw)

    @property
    def control(self) -> httpx.Client:
        if self._client is None:
            self._client = self.client()
        return self._client

    def stats(self) -> dict[str, Any]:
        """Counts since the last reset: ``total``, ``by_path`` ("POST /oauth2/exchange": n),
        ``by_route`` (/v2 paths folded to templates), ``by_status``, ``events``
        (refresh_token_issued, access_token_issued, exchange_rejected, token_rejected), ``log``."""
        resp = self.control.get("/_front/stats")
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def count(self, method: str, path: str) -> int:
        """Requests with this method and exact path (or /v2 route template) since the reset."""
        s = self.stats()
        key = f"{method.upper()} {path}"
        return int(s["by_path"].get(key) or s["by_route"].get(key) or 0)

    def reset_stats(self) -> None:
        self.control.post("/_front/stats/reset").raise_for_status()

    def get_config(self) -> dict[str, Any]:
        resp = self.control.get("/_front/config")
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change at run time: access_token_lifetime, refresh_token_lifetime (seconds),
        clock_skew (seconds of leeway on exp/nbf), allow_anonymous_pull, grant_actions."""
        resp = self.control.post("/_front/config", json=changes)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    @contextlib.contextmanager
    def configured(self, **changes: Any) -> Iterator[AcrFront]:
        """``with front.configured(access_token_lifetime=2): ...`` and the old values come back."""
        before = self.get_config()
        self.configure(**changes)
        try:
            yield self
        finally:
            self.configure(**{k: before[k] for k in changes})

    def mint_aad_token(self, **kw: Any) -> str:
        """A JWT "AAD" token the front accepts (kw: tenant, object_id, audience, lifetime)."""
        from tests.support.acr_front import make_aad_token

        kw.setdefault("tenant", self.tenant)
        return make_aad_token(self.aad_signing_key, **kw)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def start_acr_front(
    env: RegistryEnv,
    *,
    port: int | None = None,
    aad_token: str = "sg-test-aad-token",
    upstream: Registry | None = None,
    enforce_auth: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> AcrFront:
    """Start a front on ``port`` (default: a free one) with the PKI of ``hack/registries.sh``.

    By default it fronts the token registry (docker-registry 2.8, which checks the tokens).
    With ``upstream=env.olareg_acr, enforce_auth=True`` it fronts olareg and checks the tokens
    itself: ACR auth together with the referrers API, as a real ACR has.
    """
    upstream = upstream or env.token_registry
    port = port or free_port()
    pki = env.pki
    log_path = env.state_dir / f"front-test-{port}.log"
    args = [
        sys.executable,
        "-m",
        "tests.support.acr_front",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--upstream",
        upstream.host,
        "--upstream-service",
        env["STREAMGATE_TOKEN_SERVICE"],
        "--issuer",
        env["STREAMGATE_TOKEN_ISSUER"],
        "--cert",
        str(pki / "front.crt"),
        "--key",
        str(pki / "front.key"),
        "--signing-key",
        str(pki / "token-signing.key"),
        "--signing-cert",
        str(pki / "token-signing.crt"),
        "--aad-cert",
        str(pki / "aad-signing.crt"),
        "--aad-token",
        aad_token,
        *(["--enforce-auth"] if enforce_auth else []),
        *extra_args,
    ]
    pythonpath = os.environ.get("PYTHONPATH")
    child_env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT) + (os.pathsep + pythonpath if pythonpath else "")
    )
    logf = open(log_path, "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=child_env,
    )
    logf.close()
    front = AcrFront(
        host=f"127.0.0.1:{port}",
        ca_cert=env.ca_cert,
        aad_token=aad_token,
        aad_signing_key=pki / "aad-signing.key",
        upstream=upstream,
        log_path=log_path,
        process=proc,
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RegistryInfraError(f"ACR front exited ({proc.returncode}):\n{tail}")
        try:
            if front.control.get("/_front/health", timeout=2).status_code == 200:
                return front
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            front.stop()
            raise RegistryInfraError(f"ACR front did not answer within {timeout}s; see {log_path}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- seeding


@dataclass
class SeedResult:
    """What ``hack/seed_registry.py --json`` reported for one registry."""

    registry: str
    referrers_api: bool | None
    oci_subject_header: bool | None
    images: dict[str, dict[str, Any]]

    def image(self, ref: str) -> dict[str, Any]:
        return self.images[ref]

    def digest(self, ref: str) -> str:
        return str(self.images[ref]["digest"])

    def platform_digest(self, ref: str, platform: str = "linux/amd64") -> str:
        return str(self.images[ref]["platforms"][platform])

    def referrers(self, ref: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
        refs: list[dict[str, Any]] = self.images[ref]["referrers"]
        return [r for r in refs if artifact_type is None or r["artifactType"] == artifact_type]

    def streaming_referrers(self, ref: str) -> list[dict[str, Any]]:
        return self.referrers(ref, STREAMING_TYPE)


def run_seeder(target_args: Sequence[str], *command: str, timeout: float = 300.0) -> SeedResult:
    """Run ``hack/seed_registry.py <target_args> --json F <command...>`` (default ``seed``).

    ``target_args`` come from :meth:`Registry.seeder_args` or :meth:`AcrFront.seeder_args`.
    """
    cmd = list(command) or ["seed"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seed.json"
        res = subprocess.run(
            [sys.executable, str(SEEDER), *target_args, "--quiet", "--json", str(out), *cmd],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if res.returncode != 0:
            raise RegistryInfraError(
                f"seed_registry.py {' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}"
            )
        data = json.loads(out.read_text())
    return SeedResult(
        data["registry"], data["referrers_api"], data["oci_subject_header"], data["images"]
    )


class Seeded:
    """Seeds each registry on first use, once per session: ``seeded["olareg"]`` → SeedResult.

    Names: olareg, olareg_paged, distribution, basic, acr_front, acr_front_referrers.
    """

    def __init__(self, targets: dict[str, Any]) -> None:
        # name -> Registry / AcrFront, or a zero-argument callable returning one (started lazily)
        self._targets = targets
        self._results: dict[str, SeedResult] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> SeedResult:
        with self._lock:
            if name not in self._results:
                target = self._targets[name]
                if callable(target) and not isinstance(target, Registry | AcrFront):
                    target = target()
                self._results[name] = run_seeder(target.seeder_args())
            return self._results[name]

    def reseed(self, name: str) -> SeedResult:
        with self._lock:
            self._results.pop(name, None)
        return self[name]

    def target(self, name: str) -> Registry | AcrFront:
        target = self._targets[name]
        if callable(target) and not isinstance(target, Registry | AcrFront):
            target = target()
        return target  # type: ignore[no-any-return]

    def names(self) -> list[str]:
        return list(self._targets)
