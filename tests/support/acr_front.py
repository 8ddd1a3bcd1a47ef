"""A stand-in for Azure Container Registry's data-plane authentication.

ACR itself can't be reached from these machines, so this small HTTPS server plays the part of
an ACR login server in front of a real registry (Debian's docker-registry 2.8 with Docker token
auth, started by hack/registries.sh). It is the only stand-in in the test set-up; the registry
behind it, its token checks and everything under ``/v2/`` are real.

What it does, following Azure/acr ``docs/AAD-OAuth.md`` (see docs/registries.md):

* ``/v2/...`` is proxied to the upstream registry, streaming bodies and passing status and
  headers back (``Docker-Content-Digest``, ``Link``, ``Content-Type``, ``Location``, ...).
  In the registry's ``401`` challenge, ``realm`` is rewritten to ``https://<front>/oauth2/token``
  and ``service`` to the front's own name, as ACR presents itself
  (``Bearer realm="https://<reg>/oauth2/token",service="<reg>",scope="repository:<repo>:pull"``).
* ``POST /oauth2/exchange`` (form ``grant_type=access_token&service=..&tenant=..&access_token=..``)
  turns an AAD access token into an ACR refresh token: ``{"refresh_token": "<JWT>"}``.
  Since Azure AD can't be reached either, an "AAD token" is accepted when it is

  - a JWT signed (RS256) by the tests' AAD key (``--aad-cert``; mint one with
    :func:`make_aad_token`), unexpired, with ``aud`` the ACR or ARM resource and, when the form
    gives ``tenant``, the same ``tid``; or
  - one of the opaque strings given with ``--aad-token``.

  Anything else is refused with ``401``.
* ``POST /oauth2/token`` (form ``grant_type=refresh_token&service=..&scope=..&refresh_token=..``)
  returns ``{"access_token": "<JWT>"}``: an RS256 JWT for the registry (``iss``, ``sub``,
  ``aud`` = the upstream's service, ``exp``, ``nbf``, ``iat``, ``jti``, ``access``) whose header
  carries the signing certificate in ``x5c``, so distribution verifies it against its
  ``rootcertbundle``. ``grant_type=password`` and ``GET /oauth2/token?service=..&scope=..`` with
  ``Authorization: Basic`` work too: with a configured user (``--basic-user u:p``) or, as on ACR,
  with the user ``00000000-0000-0000-0000-000000000000`` and a refresh token as password.
  Anonymous token requests are granted ``pull`` only when ``--anonymous-pull`` is set.
* With ``--enforce-auth`` the front checks the bearer tokens itself (signature, ``iss``,
  ``aud``, ``exp``/``nbf`` with docker-registry's 60 s leeway, an ``access`` entry for the
  repository and action) and answers ``401`` with the challenge as a registry would; for an
  upstream without auth (olareg), so that ACR auth can be tested together with the referrers API.
* ``/acr/v1/`` conversion endpoints (docs/aks-facts.md §5, as azure-cli calls them): ``POST
  {repo}/_streaming/{digest}`` (token with ``pull,push``) answers ``202`` with an operation
  (``id``, ``status`` NotStarted); ``GET {repo}/_operations/{id}`` (``pull``) reports it:
  ``Running`` (50 %) on the first poll, then ``Succeeded`` after pushing a real streaming
  referrer (``hack/seed_registry.py``'s) for the digest into the registry behind the front, so
  the ordinary referrers look-up finds it; ``GET {repo}/_streaming/{digest}`` shows the last
  operation (404: never requested). A repository whose name contains a key of
  ``conversion_failures`` (``unsupported`` -> ``UNSUPPORTED_PLATFORM``, ``notrunnable`` ->
  ``IMAGE_NOT_RUNNABLE``) fails with that code instead; a digest the registry doesn't have fails
  with ``RESOURCE_NOT_FOUND``. ``GET {repo}/_streaming`` (``pull``) answers the repository's
  auto-conversion settings (``convertPushedImages`` false until set); ``POST {repo}/_streaming``
  (``pull,push``) with ``{"convertPushedImages": bool, "conversionFormat": "overlaybd",
  "conversionVersion": "v1"}`` sets it and answers them with ``status`` Succeeded, as
  azure-cli's ``artifact-streaming show/update`` read them; while it is on, an image manifest
  pushed through the front into that repository gets a conversion that runs to its end by
  itself (as ACR converts pushes), counted as ``conversion_auto_started``. Starting a
  conversion or changing that setting always checks the bearer token (401 with the challenge
  without one, 403 when its scope lacks push); the reads are checked like ``/v2`` reads, only
  with ``--enforce-auth``.
* Every request is counted by method and path; ``GET /_front/stats`` shows the counts,
  ``POST /_front/stats/reset`` (or ``DELETE /_front/stats``) clears them, and
  ``GET/POST /_front/config`` reads/changes token lifetimes and switches at run time.

Run it: ``python -m tests.support.acr_front --port 25443 --upstream 127.0.0.1:25003 --cert ..
--key .. --signing-key .. --signing-cert ..`` (``--help`` lists all options), or build an app
with :func:`create_app` / start one in a thread with :class:`FrontServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import importlib.util
import io
import json
import re
import secrets
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

NULL_GUID = "00000000-0000-0000-0000-000000000000"
# Audiences ACR accepts on AAD tokens: the ACR resource and the ARM resource.
AAD_AUDIENCES = frozenset(
    {
        "https://containerregistry.azure.net",
        "https://containerregistry.azure.net/",
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net/",
    }
)
DEFAULT_AAD_AUDIENCE = "https://containerregistry.azure.net"
LEEWAY_SECONDS = 30

# Headers that belong to one hop and are not forwarded by the proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


# --------------------------------------------------------------------------- JWT by hand


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


class TokenError(Exception):
    """A token that does not verify."""


def sign_jwt(
    claims: dict[str, Any],
    key: rsa.RSAPrivateKey,
    *,
    extra_headers: dict[str, Any] | None = None,
) -> str:
    """RS256 JWT: base64url(header).base64url(payload).base64url(signature)."""
    header: dict[str, Any] = {"typ": "JWT", "alg": "RS256"}
    if extra_headers:
        header.update(extra_headers)
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


def decode_jwt_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) without checking anything; raises TokenError when it is no JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a JWT")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except (ValueError, binascii.Error) as exc:
        raise TokenError(f"malformed JWT: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("malformed JWT")
    return header, claims


def verify_jwt(
    token: str,
    public_key: rsa.RSAPublicKey,
    *,
    audiences: Iterable[str] | None = None,
    now: float | None = None,
    leeway: float = LEEWAY_SECONDS,
) -> dict[str, Any]:
    """Check an RS256 JWT's signature, exp/nbf (with leeway) and audience; return its claims."""
    header, claims = decode_jwt_unverified(token)
    if header.get("alg") != "RS256":
        raise TokenError(f"unsupported alg {header.get('alg')!r}")
    signing_input, _, signature = token.rpartition(".")
    try:
        public_key.verify(
            b64url_decode(signature),
            signing_input.encode("ascii"),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, ValueError, binascii.Error) as exc:
        raise TokenError("bad signature") from exc
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or now > exp + leeway:
        raise TokenError("expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and now + leeway < nbf:
        raise TokenError("not yet valid")
    if audiences is not None:
        aud = claims.get("aud")
        auds = set(aud) if isinstance(aud, list) else {aud}
        if not auds & set(audiences):
            raise TokenError(f"wrong audience {aud!r}")
    return claims


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA key")
    return key


def load_certificate(path: str | Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def make_aad_token(
    key: rsa.RSAPrivateKey | str | Path,
    *,
    tenant: str = "72f988bf-0000-0000-0000-000000000000",
    object_id: str = "11111111-2222-3333-4444-555555555555",
    audience: str = DEFAULT_AAD_AUDIENCE,
    lifetime: float = 3600,
    issued_at: float | None = None,
) -> str:
    """Mint a test "AAD" access token (what workload identity would hand the webhook)."""
    if not isinstance(key, rsa.RSAPrivateKey):
        key = load_private_key(key)
    now = int(time.time() if issued_at is None else issued_at)
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant}/",
        "iat": now,
        "nbf": now,
        "exp": int(now + lifetime),
        "oid": object_id,
        "sub": object_id,
        "tid": tenant,
        "appid": object_id,
        "ver": "1.0",
    }
    return sign_jwt(claims, key)


# --------------------------------------------------------------------------- configuration


@dataclass
class FrontConfig:
    upstream: str  # host:port of the token-auth registry (plain HTTP)
    signing_key: rsa.RSAPrivateKey
    signing_cert: x509.Certificate
    upstream_service: str = "streamgate-token-registry"  # aud of access tokens
    issuer: str = "streamgate-acr-front"
    # Names the front answers to as `service`; the request's Host is always accepted too.
    services: set[str] = field(default_factory=set)
    aad_public_key: rsa.RSAPublicKey | None = None
    aad_tokens: set[str] = field(default_factory=set)
    basic_users: dict[str, str] = field(default_factory=dict)
    allow_anonymous_pull: bool = False
    grant_actions: tuple[str, ...] = ("pull", "push", "delete")
    refresh_token_lifetime: float = 3 * 3600.0
    access_token_lifetime: float = 75 * 60.0
    clock_skew: float = LEEWAY_SECONDS  # leeway on exp/nbf of AAD and refresh tokens
    upstream_timeout: float = 60.0
    log_size: int = 2000
    # Check bearer tokens here instead of leaving it to the upstream: for an upstream without
    # auth (olareg), so that the ACR path can be tested against a registry with the referrers
    # API, as ACR has. Checked like docker-registry does: signature, iss, aud, exp/nbf with
    # 60 s leeway, and an `access` entry for the repository and action.
    enforce_auth: bool = False
    # Conversions of repositories whose name contains a key fail with its code (§5 codes).
    conversion_failures: dict[str, str] = field(
        default_factory=lambda: {
            "unsupported": "UNSUPPORTED_PLATFORM",
            "notrunnable": "IMAGE_NOT_RUNNABLE",
        }
    )
    max_operations: int = 10_000

    @property
    def x5c(self) -> list[str]:
        der = self.signing_cert.public_bytes(serialization.Encoding.DER)
        return [base64.b64encode(der).decode("ascii")]

    def public_settings(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "upstream_service": self.upstream_service,
            "issuer": self.issuer,
            "services": sorted(self.services),
            "aad_jwt": self.aad_public_key is not None,
            "aad_tokens": len(self.aad_tokens),
            "basic_users": sorted(self.basic_users),
            "allow_anonymous_pull": self.allow_anonymous_pull,
            "grant_actions": list(self.grant_actions),
            "refresh_token_lifetime": self.refresh_token_lifetime,
            "access_token_lifetime": self.access_token_lifetime,
            "clock_skew": self.clock_skew,
            "enforce_auth": self.enforce_auth,
        }


# What POST /_front/config may change at run time.
_MUTABLE = {
    "refresh_token_lifetime": float,
    "access_token_lifetime": float,
    "clock_skew": float,
    "allow_anonymous_pull": bool,
    "grant_actions": tuple,
}


# --------------------------------------------------------------------------- request counting

_V2_ROUTES = [
    (re.compile(r"^/v2/?$"), "/v2/"),
    (re.compile(r"^/v2/_catalog$"), "/v2/_catalog"),
    (re.compile(r"^/v2/.+/manifests/[^/]+$"), "/v2/{name}/manifests/{reference}"),
    (re.compile(r"^/v2/.+/blobs/uploads/[^/]*$"), "/v2/{name}/blobs/uploads/{uuid}"),
    (re.compile(r"^/v2/.+/blobs/[^/]+$"), "/v2/{name}/blobs/{digest}"),
    (re.compile(r"^/v2/.+/tags/list$"), "/v2/{name}/tags/list"),
    (re.compile(r"^/v2/.+/referrers/[^/]+$"), "/v2/{name}/referrers/{digest}"),
]


_V2_NAME_RE = re.compile(r"^/v2/(?P<name>.+?)/(?:manifests|blobs|tags|referrers)/")
# docker-registry's leeway on access-token exp/nbf (registry/auth/token: Leeway = 60 s)
UPSTREAM_LEEWAY_SECONDS = 60


def route_of(path: str) -> str:
    for pattern, name in _V2_ROUTES:
        if pattern.match(path):
            return name
    return path


class Stats:
    """Thread-safe request counters (the server runs in one event loop; readers may not)."""

    def __init__(self, log_size: int) -> None:
        self._lock = threading.Lock()
        self._log_size = log_size
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.by_path: Counter[str] = Counter()
            self.by_route: Counter[str] = Counter()
            self.by_status: Counter[str] = Counter()
            self.events: Counter[str] = Counter()
            self.log: deque[dict[str, Any]] = deque(maxlen=self._log_size)
            self.started = time.time()

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.total += 1
            self.by_path[f"{method} {path}"] += 1
            self.by_route[f"{method} {route_of(path)}"] += 1
            self.by_status[str(status)] += 1
            self.log.append(
                {"t": round(time.time(), 3), "method": method, "path": path, "status": status}
            )

    def event(self, name: str) -> None:
        with self._lock:
            self.events[name] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": self.total,
                "since": self.started,
                "by_path": dict(self.by_path),
                "by_route": dict(self.by_route),
                "by_status": dict(self.by_status),
                "events": dict(self.events),
                "log": list(self.log),
            }


class CountingMiddleware:
    """Counts every HTTP request with the status it got (except the /_front/ control API)."""

    def __init__(self, app: Any, stats: Stats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_front/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.stats.record(scope["method"], scope["path"], status)


# --------------------------------------------------------------------------- conversions

_STREAMING_RE = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9._/-]*?)/_streaming/(?P<digest>sha256:[0-9a-f]{64})$"
)
_REPO_STREAMING_RE = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9._/-]*?)/_streaming$")
_OPERATION_RE = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9._/-]*?)/_operations/(?P<id>[A-Za-z0-9-]{1,64})$"
)
REPO_ROOT = Path(__file__).resolve().parents[2]


_MANIFEST_PATH_RE = re.compile(r"^/v2/(?P<name>.+?)/manifests/[^/]+$")
_IMAGE_MANIFESTS = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_IMAGE_CONFIGS = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}


def _runnable_image(body: bytes) -> bool:
    """A single-platform image manifest (not an index, not a referrer or other artifact):
    what the front's auto-conversion converts."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if not isinstance(doc, dict) or "subject" in doc or doc.get("artifactType"):
        return False
    config = doc.get("config")
    return (
        doc.get("mediaType") in _IMAGE_MANIFESTS
        and isinstance(config, dict)
        and config.get("mediaType") in _IMAGE_CONFIGS
    )


def seeder_module() -> Any:
    """hack/seed_registry.py as a module (it makes the streaming referrer ACR would push)."""
    name = "streamgate_seed_registry"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "hack" / "seed_registry.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass
class Operation:
    """One conversion, as the front tracks it."""

    id: str
    repo: str
    digest: str
    status: str = "NotStarted"
    progress: int = 0
    failure_code: str | None = None
    polls: int = 0
    # one advance at a time: a poll and the auto-conversion task must not both push
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "repository": self.repo,
            "digest": self.digest,
            "status": self.status,
            "progress": f"{self.progress}%",
        }
        if self.failure_code is not None:
            out["errorCode"] = self.failure_code
        return out


# --------------------------------------------------------------------------- the app


def _acr_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"errors": [{"code": code, "message": message}]}, status_code=status, headers=headers
    )


async def _form(request: Request) -> dict[str, list[str]]:
    """An application/x-www-form-urlencoded body (without python-multipart)."""
    body = await request.body()
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}


def _first(params: dict[str, list[str]], key: str) -> str:
    values = params.get(key)
    return values[0] if values else ""


def parse_scopes(values: Iterable[str]) -> list[tuple[str, str, list[str]]]:
    """`repository:demo/app:pull,push` (space separated or repeated) -> [(type, name, actions)]."""
    out: list[tuple[str, str, list[str]]] = []
    for value in values:
        for item in value.split():
            typ, sep, rest = item.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not sep or not sep2 or not typ or not name:
                raise ValueError(f"bad scope {item!r}")
            out.append((typ, name, [a for a in actions.split(",") if a]))
    return out


class AcrFront:
    """The ASGI application and its state."""

    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        self.stats = Stats(config.log_size)
        self._client: httpx.AsyncClient | None = None
        routes = [
            Route("/oauth2/exchange", self.exchange, methods=["POST"]),
            Route("/oauth2/token", self.token, methods=["GET", "POST"]),
            Route("/_front/stats", self.get_stats, methods=["GET", "DELETE"]),
            Route("/_front/stats/reset", self.reset_stats, methods=["POST"]),
            Route("/_front/config", self.front_config, methods=["GET", "POST"]),
            Route("/_front/health", self.health, methods=["GET"]),
            Route(
                "/v2/{path:path}",
                self.proxy,
                methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            ),
            Route("/v2", self.proxy, methods=["GET", "HEAD"]),
            Route("/acr/v1/{path:path}", self.acr_v1, methods=["GET", "POST"]),
        ]
        self.operations: OrderedDict[str, Operation] = OrderedDict()
        self.last_operation: dict[tuple[str, str], str] = {}
        self.auto_conversion: dict[str, bool] = {}  # repository -> convertPushedImages
        self._auto_tasks: set[asyncio.Task[None]] = set()
        self.starlette = Starlette(routes=routes, lifespan=self._lifespan)
        self.app = CountingMiddleware(self.starlette, self.stats)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        yield
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=f"http://{self.config.upstream}",
                timeout=self.config.upstream_timeout,
                follow_redirects=False,
            )
        return self._client

    # ---------------------------------------------------------------- helpers

    def _service_ok(self, request: Request, service: str | None) -> bool:
        if not service:
            return False
        return service in self.config.services or service == request.headers.get("host")

    def _public_service(self, request: Request) -> str:
        return request.headers.get("host") or next(iter(sorted(self.config.services)), "")

    def _check_aad(self, token: str, tenant: str | None) -> dict[str, Any]:
        if token in self.config.aad_tokens:
            return {"sub": "aad-opaque:" + token[:8], "tid": tenant or ""}
        if self.config.aad_public_key is None:
            raise TokenError("unknown AAD token")
        claims = verify_jwt(
            token,
            self.config.aad_public_key,
            audiences=AAD_AUDIENCES,
            leeway=self.config.clock_skew,
        )
        if tenant and claims.get("tid") != tenant:
            raise TokenError("tenant does not match the token's tid")
        return claims

    def _new_refresh_token(self, service: str, subject: str, tenant: str) -> str:
        now = int(time.time())
        claims = {
            "jti": str(uuid.uuid4()),
            "sub": subject,
            "nbf": now,
            "exp": int(now + self.config.refresh_token_lifetime),
            "iat": now,
            "iss": self.config.issuer,
            "aud": service,
            "version": "1.0",
            "grant_type": "refresh_token",
            "tenant": tenant,
        }
        return sign_jwt(claims, self.config.signing_key)

    def _check_refresh_token(self, token: str, service: str) -> dict[str, Any]:
        claims = verify_jwt(
            token,
            self.config.signing_key.public_key(),
            audiences=[service],
            leeway=self.config.clock_skew,
        )
        if claims.get("grant_type") != "refresh_token" or claims.get("iss") != self.config.issuer:
            raise TokenError("not a refresh token")
        return claims

    def _new_access_token(
        self, subject: str, scopes: list[tuple[str, str, list[str]]], anonymous: bool
    ) -> str:
        allowed = {"pull"} if anonymous else set(self.config.grant_actions)
        access = []
        for typ, name, actions in scopes:
            if typ == "repository":
                granted = [a for a in actions if a in allowed or (a == "*" and not anonymous)]
            elif typ == "registry" and not anonymous:
                granted = actions
            else:
                granted = []
            access.append({"type": typ, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.config.issuer,
            "sub": subject,
            "aud": self.config.upstream_service,
            "exp": int(now + self.config.access_token_lifetime),
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        return sign_jwt(claims, self.config.signing_key, extra_headers={"x5c": self.config.x5c})

    # ---------------------------------------------------------------- /oauth2

    async def exchange(self, request: Request) -> Response:
        form = await _form(request)
        grant_type = _first(form, "grant_type")
        service = _first(form, "service") or None
        tenant = _first(form, "tenant") or None
        aad_token = _first(form, "access_token")
        if grant_type != "access_token":
            self.stats.event("exchange_rejected")
            return _acr_error(400, "UNSUPPORTED", f"grant_type {grant_type!r} is not supported")
        if not self._service_ok(request, service):
            self.stats.event("exchange_rejected")
            return _acr_error(400, "UNSUPPORTED", f"unknown service {service!r}")
        if not aad_token:
            self.stats.event("exchange_rejected")
            return _acr_error(400, "UNSUPPORTED", "access_token is required")
        try:
            claims = self._check_aad(aad_token, tenant)
        except TokenError as exc:
            self.stats.event("exchange_rejected")
            return _acr_error(401, "UNAUTHORIZED", f"invalid AAD token: {exc}")
        assert service is not None
        subject = str(claims.get("oid") or claims.get("sub") or "aad-user")
        refresh = self._new_refresh_token(service, subject, str(claims.get("tid") or tenant or ""))
        self.stats.event("refresh_token_issued")
        return JSONResponse({"refresh_token": refresh})

    async def token(self, request: Request) -> Response:
        params = parse_qs(request.url.query, keep_blank_values=True)
        if request.method == "POST":
            # form fields first; query parameters count too (some clients send scope there)
            form = await _form(request)
            for key, values in params.items():
                form.setdefault(key, []).extend(values)
            params = form
        service = (params.get("service") or [""])[0] or None
        grant_type = (params.get("grant_type") or [""])[0]
        try:
            scopes = parse_scopes(params.get("scope", []))
        except ValueError as exc:
            self.stats.event("token_rejected")
            return _acr_error(400, "UNSUPPORTED", str(exc))
        if not self._service_ok(request, service):
            self.stats.event("token_rejected")
            return _acr_error(400, "UNSUPPORTED", f"unknown service {service!r}")
        assert service is not None

        subject: str | None = None
        anonymous = False
        try:
            if request.method == "POST" and grant_type == "refresh_token":
                refresh = (params.get("refresh_token") or [""])[0]
                subject = str(self._check_refresh_token(refresh, service).get("sub"))
            elif request.method == "POST" and grant_type == "password":
                user = (params.get("username") or [""])[0]
                password = (params.get("password") or [""])[0]
                subject = self._check_user(user, password, service)
            elif request.method == "POST":
                return _acr_error(400, "UNSUPPORTED", f"grant_type {grant_type!r} is not supported")
            else:
                auth = request.headers.get("authorization", "")
                if auth.lower().startswith("basic "):
                    try:
                        user, _, password = (
                            base64.b64decode(auth[6:].strip()).decode().partition(":")
                        )
                    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
                        raise TokenError("malformed basic credentials") from exc
                    subject = self._check_user(user, password, service)
                elif self.config.allow_anonymous_pull:
                    subject, anonymous = "", True
                else:
                    raise TokenError("authentication required")
        except TokenError as exc:
            self.stats.event("token_rejected")
            return _acr_error(
                401,
                "UNAUTHORIZED",
                f"authentication required: {exc}",
                headers={"WWW-Authenticate": f'Basic realm="{self._realm(request)}"'},
            )
        token = self._new_access_token(subject or "", scopes, anonymous)
        self.stats.event("access_token_issued")
        return JSONResponse({"access_token": token})

    def _check_user(self, user: str, password: str, service: str) -> str:
        if user == NULL_GUID:
            claims = self._check_refresh_token(password, service)
            return str(claims.get("sub"))
        expected = self.config.basic_users.get(user)
        if expected is None or not secrets.compare_digest(expected, password):
            raise TokenError("bad username or password")
        return user

    def _realm(self, request: Request) -> str:
        return f"https://{self._public_service(request)}/oauth2/token"

    # ---------------------------------------------------------------- /v2 proxy

    def _rewrite_challenge(self, value: str, request: Request) -> str:
        value = re.sub(r'realm="[^"]*"', f'realm="{self._realm(request)}"', value)
        value = re.sub(r'service="[^"]*"', f'service="{self._public_service(request)}"', value)
        return value

    def _required_access(self, request: Request) -> tuple[str, str] | None:
        """(repository, action) a /v2 request needs; None for the base endpoint /v2/."""
        m = _V2_NAME_RE.match(request.url.path)
        if m is None:
            return None
        if request.method in ("GET", "HEAD"):
            action = "pull"
        elif request.method == "DELETE":
            action = "delete"
        else:
            action = "push"
        return m["name"], action

    def _check_bearer(
        self, request: Request, need: tuple[str, str] | None = None, *, forbid: bool = False
    ) -> Response | None:
        """None when the request may pass, else the 401 to answer. `need`: (repository,
        actions) required, default from the /v2 path; `forbid`: a valid token whose scope
        lacks the actions gets 403 (as ACR's data plane answers), not a 401 challenge."""
        if need is None:
            need = self._required_access(request)
        challenge = (
            f'Bearer realm="{self._realm(request)}",service="{self._public_service(request)}"'
        )
        if need is not None:
            challenge += f',scope="repository:{need[0]}:{need[1]}"'
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return _acr_error(
                401,
                "UNAUTHORIZED",
                "authentication required",
                headers={"WWW-Authenticate": challenge},
            )
        try:
            claims = verify_jwt(
                auth[7:].strip(),
                self.config.signing_key.public_key(),
                audiences=[self.config.upstream_service],
                leeway=UPSTREAM_LEEWAY_SECONDS,
            )
            if claims.get("iss") != self.config.issuer:
                raise TokenError("wrong issuer")
        except TokenError:
            return _acr_error(
                401,
                "UNAUTHORIZED",
                "authentication required",
                headers={"WWW-Authenticate": challenge + ',error="invalid_token"'},
            )
        if need is None:
            return None
        wanted = set(need[1].split(","))
        for entry in claims.get("access") or []:
            if not (
                isinstance(entry, dict)
                and entry.get("type") == "repository"
                and entry.get("name") == need[0]
            ):
                continue
            actions = set(entry.get("actions") or [])
            if "*" in actions or wanted <= actions:
                return None
        if forbid:
            return _acr_error(403, "DENIED", "requested access to the resource is denied")
        return _acr_error(
            401,
            "UNAUTHORIZED",
            "authentication required",
            headers={"WWW-Authenticate": challenge + ',error="insufficient_scope"'},
        )

    async def proxy(self, request: Request) -> Response:
        if self.config.enforce_auth:
            refused = self._check_bearer(request)
            if refused is not None:
                return refused
        headers = [
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP
            and not (k.lower() == "content-length" and request.method in ("GET", "HEAD"))
            and not (self.config.enforce_auth and k.lower() == "authorization")
        ]
        has_body = request.method in ("POST", "PUT", "PATCH")
        content: Any = request.stream() if has_body else None
        auto_repo = self._auto_converted_push(request)
        pushed = b""
        if auto_repo is not None:
            pushed = content = await request.body()  # a manifest: small
        upstream_request = self.client.build_request(
            request.method,
            request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            headers=headers,
            content=content,
        )
        try:
            upstream = await self.client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            return _acr_error(502, "UPSTREAM_UNAVAILABLE", f"upstream registry: {exc}")
        if auto_repo is not None and upstream.status_code == 201 and _runnable_image(pushed):
            digest = upstream.headers.get("docker-content-digest") or (
                "sha256:" + hashlib.sha256(pushed).hexdigest()
            )
            self._convert_pushed(auto_repo, digest)
        out_headers: list[tuple[str, str]] = []
        upstream_url = f"http://{self.config.upstream}"
        for key, raw in upstream.headers.multi_items():
            lk = key.lower()
            value = raw
            if lk in HOP_BY_HOP:
                continue
            if lk == "www-authenticate":
                value = self._rewrite_challenge(raw, request)
            elif lk == "location" and raw.startswith(upstream_url):
                value = raw[len(upstream_url) :]
            out_headers.append((key, value))
        response = StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            background=BackgroundTask(upstream.aclose),
        )
        # replace Starlette's defaults with the upstream's headers, repeated ones included
        response.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out_headers
        ]
        return response

    # ---------------------------------------------------------------- /acr/v1 conversions

    async def acr_v1(self, request: Request) -> Response:
        path = request.path_params["path"]
        m = _STREAMING_RE.match(path)
        if m is not None:
            repo, digest = m["repo"], m["digest"]
            post = request.method == "POST"
            # Reads are checked like /v2 (only with enforce_auth): an anonymous front must
            # answer a look-up's conversion-status read as it answers its referrers read.
            # Starting a conversion always needs a token with push.
            if post or self.config.enforce_auth:
                refused = self._check_bearer(
                    request, (repo, "pull,push" if post else "pull"), forbid=True
                )
                if refused is not None:
                    return refused
            return self._start(repo, digest) if post else self._last(repo, digest)
        m = _REPO_STREAMING_RE.match(path)
        if m is not None:
            return await self._repo_streaming(request, m["repo"])
        m = _OPERATION_RE.match(path)
        if m is not None and request.method == "GET":
            if self.config.enforce_auth:
                refused = self._check_bearer(request, (m["repo"], "pull"), forbid=True)
                if refused is not None:
                    return refused
            op = self.operations.get(m["id"])
            if op is None or op.repo != m["repo"]:
                return _acr_error(404, "NOT_FOUND", "operation not found")
            await self._advance(op)
            return JSONResponse(op.body())
        return _acr_error(404, "NOT_FOUND", "no such endpoint")

    def _repo_settings(self, repo: str) -> dict[str, Any]:
        return {
            "convertPushedImages": self.auto_conversion.get(repo, False),
            "conversionFormat": "overlaybd",
            "conversionVersion": "v1",
        }

    async def _repo_streaming(self, request: Request, repo: str) -> Response:
        """A repository's auto-conversion of pushed images, as `az acr artifact-streaming
        show/update` read and set it: GET (pull) answers the settings, ``convertPushedImages``
        false until set; POST (pull,push, else 403) with ``{"convertPushedImages": bool,
        "conversionFormat": "overlaybd", "conversionVersion": "v1"}`` sets it and answers the
        settings with ``status`` Succeeded (azure-cli's test checks those four fields)."""
        post = request.method == "POST"
        if post or self.config.enforce_auth:
            refused = self._check_bearer(
                request, (repo, "pull,push" if post else "pull"), forbid=True
            )
            if refused is not None:
                return refused
        if not post:
            return JSONResponse(self._repo_settings(repo))
        try:
            body = await request.json()
        except ValueError:
            body = None
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("convertPushedImages"), bool)
            or body.get("conversionFormat") != "overlaybd"
            or body.get("conversionVersion") != "v1"
        ):
            return _acr_error(
                400,
                "BAD_REQUEST",
                'expected {"convertPushedImages": true|false, "conversionFormat": "overlaybd", '
                '"conversionVersion": "v1"}',
            )
        self.auto_conversion[repo] = body["convertPushedImages"]
        self.stats.event(
            "auto_conversion_on" if body["convertPushedImages"] else "auto_conversion_off"
        )
        return JSONResponse({**self._repo_settings(repo), "status": "Succeeded"})

    def _auto_converted_push(self, request: Request) -> str | None:
        """The repository of a manifest push into a repository with auto-conversion on."""
        if request.method != "PUT":
            return None
        m = _MANIFEST_PATH_RE.match(request.url.path)
        if m is None or not self.auto_conversion.get(m["name"]):
            return None
        return m["name"]

    def _convert_pushed(self, repo: str, digest: str) -> None:
        """What ACR does for a push into a repository with auto-conversion on: a conversion
        of the pushed image, run to its end without anyone polling it."""
        current = self.operations.get(self.last_operation.get((repo, digest), ""))
        if current is not None and current.status in ("NotStarted", "Running", "Succeeded"):
            return
        op = Operation(id=str(uuid.uuid4()), repo=repo, digest=digest)
        self.operations[op.id] = op
        self.last_operation[(repo, digest)] = op.id
        self.stats.event("conversion_auto_started")

        async def run() -> None:
            while op.status in ("NotStarted", "Running"):
                await asyncio.sleep(0.2)
                await self._advance(op)

        task = asyncio.get_running_loop().create_task(run())
        self._auto_tasks.add(task)
        task.add_done_callback(self._auto_tasks.discard)

    def _start(self, repo: str, digest: str) -> Response:
        current = self.operations.get(self.last_operation.get((repo, digest), ""))
        if current is not None and current.status in ("NotStarted", "Running"):
            return JSONResponse(current.body(), status_code=202)  # one conversion at a time
        op = Operation(id=str(uuid.uuid4()), repo=repo, digest=digest)
        self.operations[op.id] = op
        self.last_operation[(repo, digest)] = op.id
        while len(self.operations) > self.config.max_operations:
            self.operations.popitem(last=False)
        self.stats.event("conversion_started")
        return JSONResponse(op.body(), status_code=202)

    def _last(self, repo: str, digest: str) -> Response:
        op = self.operations.get(self.last_operation.get((repo, digest), ""))
        if op is None:
            return _acr_error(404, "NOT_FOUND", "no conversion was requested for this image")
        return JSONResponse(op.body())

    async def _advance(self, op: Operation) -> None:
        """One poll moves an operation on: NotStarted -> Running (50 %) -> Succeeded/Failed."""
        async with op.lock:
            op.polls += 1
            if op.status == "NotStarted":
                op.status, op.progress = "Running", 50
                return
            if op.status != "Running":
                return
            code = next(
                (c for key, c in self.config.conversion_failures.items() if key in op.repo), None
            )
            if code is None:
                pushed = await asyncio.to_thread(self._push_streaming_referrer, op.repo, op.digest)
                code = None if pushed else "RESOURCE_NOT_FOUND"
            if code is None:
                op.status, op.progress = "Succeeded", 100
                self.stats.event("conversion_succeeded")
            else:
                op.status, op.failure_code = "Failed", code
                self.stats.event("conversion_failed")

    def _push_streaming_referrer(self, repo: str, digest: str) -> bool:
        """Push the streaming referrer ACR would make into the registry behind the front,
        with a token this front signs (the token registry checks it; olareg ignores it)."""
        seed = seeder_module()
        reg = seed.Registry(self.config.upstream, plain_http=True)
        try:
            reg._tokens[repo] = self._new_access_token(
                "acr-front-conversion", [("repository", repo, ["pull", "push"])], False
            )
            subject = reg.get_manifest(repo, digest)
            if subject is None:
                return False
            referrer = seed.make_streaming_referrer(subject)
            seed.Seeder(reg, out=io.StringIO()).attach(repo, subject, [referrer])
            return True
        finally:
            reg.close()

    # ---------------------------------------------------------------- control API

    async def get_stats(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.stats.reset()
            return Response(status_code=204)
        return JSONResponse(self.stats.snapshot())

    async def reset_stats(self, _request: Request) -> Response:
        self.stats.reset()
        return Response(status_code=204)

    async def front_config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                for key, value in changes.items():
                    if key not in _MUTABLE:
                        raise ValueError(f"{key!r} can't be changed")
                    setattr(self.config, key, _MUTABLE[key](value))
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(self.config.public_settings())

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"ok": True})


def create_app(config: FrontConfig) -> AcrFront:
    return AcrFront(config)


# --------------------------------------------------------------------------- running it


class FrontServer:
    """Run the front with uvicorn in a background thread (for tests that want it in-process)."""

    def __init__(
        self,
        config: FrontConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | Path,
        keyfile: str | Path,
    ) -> None:
        import socket

        import uvicorn

        self.front = create_app(config)
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.front,
                ssl_certfile=str(certfile),
                ssl_keyfile=str(keyfile),
                log_level="warning",
                access_log=False,
                lifespan="on",
                server_header=False,
                date_header=False,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def start(self, timeout: float = 15.0) -> FrontServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="acr-front", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("ACR front did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> FrontServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def config_from_args(args: argparse.Namespace) -> FrontConfig:
    basic_users = {}
    for item in args.basic_user or []:
        user, sep, password = item.partition(":")
        if not sep:
            raise SystemExit(f"--basic-user wants user:password, got {item!r}")
        basic_users[user] = password
    services = set(args.service or [])
    aad_tokens = set(args.aad_token or [])
    for path in args.aad_token_file or []:
        aad_tokens.update(
            line.strip() for line in Path(path).read_text().splitlines() if line.strip()
        )
    return FrontConfig(
        upstream=args.upstream,
        upstream_service=args.upstream_service,
        issuer=args.issuer,
        signing_key=load_private_key(args.signing_key),
        signing_cert=load_certificate(args.signing_cert),
        services=services,
        aad_public_key=_rsa_public_key(load_certificate(args.aad_cert)) if args.aad_cert else None,
        aad_tokens=aad_tokens,
        basic_users=basic_users,
        allow_anonymous_pull=args.anonymous_pull,
        grant_actions=tuple(a for a in args.grant_actions.split(",") if a),
        refresh_token_lifetime=args.refresh_token_lifetime,
        access_token_lifetime=args.access_token_lifetime,
        clock_skew=args.clock_skew,
        enforce_auth=args.enforce_auth,
    )


def _rsa_public_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SystemExit("the AAD certificate must hold an RSA key")
    return key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.support.acr_front", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=25443)
    p.add_argument(
        "--upstream", default="127.0.0.1:25003", help="token-auth registry, host:port (HTTP)"
    )
    p.add_argument(
        "--upstream-service",
        default="streamgate-token-registry",
        help="the registry's auth.token.service: audience of the access tokens",
    )
    p.add_argument(
        "--issuer", default="streamgate-acr-front", help="the registry's auth.token.issuer"
    )
    p.add_argument(
        "--service",
        action="append",
        help="service name(s) clients may use besides the front's Host (host:port); repeatable",
    )
    p.add_argument("--cert", required=True, help="TLS certificate (PEM) for the HTTPS listener")
    p.add_argument("--key", required=True, help="TLS key (PEM)")
    p.add_argument(
        "--signing-key", required=True, help="RSA key (PEM) that signs refresh and access tokens"
    )
    p.add_argument(
        "--signing-cert",
        required=True,
        help="its certificate (PEM): the registry's rootcertbundle, sent in x5c",
    )
    p.add_argument(
        "--aad-cert", help="certificate (PEM) whose key signs the test AAD tokens (JWTs)"
    )
    p.add_argument(
        "--aad-token", action="append", help="an opaque AAD token string to accept; repeatable"
    )
    p.add_argument(
        "--aad-token-file", action="append", help="file with accepted opaque AAD tokens, one a line"
    )
    p.add_argument(
        "--basic-user", action="append", help="user:password accepted by /oauth2/token; repeatable"
    )
    p.add_argument(
        "--anonymous-pull",
        action="store_true",
        help="grant pull to token requests without credentials",
    )
    p.add_argument(
        "--grant-actions", default="pull,push,delete", help="repository actions granted to users"
    )
    p.add_argument(
        "--refresh-token-lifetime",
        type=float,
        default=3 * 3600.0,
        help="seconds (ACR: about 3 hours)",
    )
    p.add_argument(
        "--access-token-lifetime",
        type=float,
        default=75 * 60.0,
        help="seconds (ACR: about 75 minutes)",
    )
    p.add_argument(
        "--clock-skew",
        type=float,
        default=LEEWAY_SECONDS,
        help="seconds of leeway on exp/nbf of AAD and refresh tokens",
    )
    p.add_argument(
        "--enforce-auth",
        action="store_true",
        help="check bearer tokens in the front (for an upstream without auth, e.g. olareg)",
    )
    p.add_argument("--log-level", default="warning")
    return p


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    app = create_app(config_from_args(args))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
        log_level=args.log_level,
        access_log=args.log_level in ("debug", "trace", "info"),
        lifespan="on",
        # the proxied registry's own Date header goes through; no second one
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
