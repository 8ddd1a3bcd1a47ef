"""An in-memory OCI registry behind `httpx.MockTransport`, for the registry client's unit tests.

It speaks enough of the distribution API (HEAD/GET manifests, the referrers API with
`artifactType` filtering and `Link` pages, or the fallback tag when the API is off), the ACR
`/acr/v1/.../_streaming/<digest>` status, and three kinds of auth (basic, Docker token, ACR
AAD exchange). Every request is logged, so tests count calls the way a registry would.
`hook` lets a test answer a request itself (faults). The integration tests use real registries.

Also the tests for the fake itself, so a wrong fake can't make the client tests lie.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import httpx

from app.core.registries import RegistryConfig
from app.registry.auth import Authenticator
from app.registry.circuit import CircuitBreaker
from app.registry.credentials import Anonymous
from app.registry.mediatypes import DOCKER_MANIFEST, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, STREAMING
from app.registry.metrics import NULL_OBSERVER, RegistryObserver
from app.registry.source import RegistryVerdictSource
from app.registry.transport import RegistryTransport

Hook = Callable[[httpx.Request], Awaitable[httpx.Response | None]]

_PATH = re.compile(r"^/v2/(?P<repo>.+)/(?P<kind>manifests|referrers)/(?P<ref>[^/]+)$")
_ACR = re.compile(r"^/acr/v1/(?P<repo>.+)/_streaming/(?P<digest>[^/]+)$")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def jwt(exp: float, sub: str = "x") -> str:
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(dumps(obj)).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': int(exp), 'sub': sub})}.sig"


class FakeRegistry:
    def __init__(
        self,
        host: str = "reg.test",
        *,
        scheme: str = "https",
        referrers_api: bool = True,
        filter_applied: bool = True,
        page_size: int | None = None,
        auth: str | None = None,
        send_digest: bool = True,
        user: tuple[str, str] = ("u", "p"),
        aad_token: str = "aad-ok",
    ) -> None:
        self.host = host
        self.scheme = scheme
        self.referrers_api = referrers_api
        self.filter_applied = filter_applied
        self.page_size = page_size
        self.auth = auth
        self.send_digest = send_digest
        self.user = user
        self.aad_token = aad_token
        self.blobs: dict[tuple[str, str], tuple[str, bytes]] = {}  # (repo, digest) -> type, body
        self.tags: dict[tuple[str, str], str] = {}
        self.referrer_list: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.conversions: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.hook: Hook | None = None
        self.access_tokens: set[str] = set()
        self.refresh_tokens: set[str] = set()
        self.token_lifetime: float | None = None  # expires_in sent with tokens
        self.jwt_exp: float | None = None  # give JWT access tokens with this exp
        self._serial = 0

    # ------------------------------------------------------------------ content

    def _put(self, repo: str, media_type: str, doc: dict[str, Any], tag: str | None) -> str:
        body = dumps(doc)
        digest = digest_of(body)
        self.blobs[(repo, digest)] = (media_type, body)
        if tag:
            self.tags[(repo, tag)] = digest
        return digest

    def image(
        self, repo: str, tag: str | None = "v1", *, arch: str = "amd64", docker: bool = False
    ) -> str:
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        config = {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2}
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {**config, "digest": digest_of(f"{repo}{arch}".encode())},
            "layers": [],
        }
        return self._put(repo, media_type, doc, tag)

    def index(self, repo: str, tag: str | None, children: list[tuple[str, str]]) -> str:
        """`children`: (digest, "os/arch[/variant]")."""
        manifests = []
        for digest, platform in children:
            os_, arch, *variant = platform.split("/")
            plat = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
            manifests.append(
                {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1, "platform": plat}
            )
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self._put(repo, OCI_INDEX, doc, tag)

    def referrer(
        self,
        repo: str,
        subject: str,
        *,
        artifact_type: str | None = STREAMING,
        annotations: dict[str, str] | None = None,
        config_form: bool = False,
        in_descriptor: bool = True,
    ) -> str:
        """Attach a referrer. `config_form`: type only as config.mediaType. `in_descriptor`:
        False leaves artifactType out of the listed descriptor (as a sloppy fallback index)."""
        self._serial += 1
        notes = (
            {
                "streaming.format": "overlaybd",
                "streaming.version": "v1",
                "streaming.platform.os": "linux",
                "streaming.platform.arch": "amd64",
            }
            if annotations is None
            else annotations
        )
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        config_type = artifact_type if config_form else OCI_EMPTY
        doc["config"] = {"mediaType": config_type, "digest": digest_of(b"{}"), "size": 2}
        if artifact_type and not config_form:
            doc["artifactType"] = artifact_type
        doc["layers"] = [
            {"mediaType": "x/y", "digest": digest_of(str(self._serial).encode()), "size": 1}
        ]
        doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
        doc["annotations"] = notes
        digest = self._put(repo, OCI_MANIFEST, doc, None)
        descriptor: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": digest, "size": 10}
        if in_descriptor and artifact_type:
            descriptor["artifactType"] = artifact_type
        if notes:
            descriptor["annotations"] = notes
        self.referrer_list.setdefault((repo, subject), []).append(descriptor)
        if not self.referrers_api:  # keep the fallback tag index up to date
            doc_index = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": self.referrer_list[(repo, subject)],
            }
            self._put(repo, OCI_INDEX, doc_index, subject.replace(":", "-"))
        return digest

    # ------------------------------------------------------------------ counting

    def count(self, kind: str, method: str | None = None) -> int:
        """Requests whose path contains `/kind/` (manifests, referrers, oauth2, ...)."""
        return sum(1 for m, p in self.calls if f"/{kind}" in p and (method is None or m == method))

    @property
    def by_path(self) -> Counter[str]:
        return Counter(f"{m} {p}" for m, p in self.calls)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # ------------------------------------------------------------------ serving

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        if self.hook is not None:
            answer = await self.hook(request)
            if answer is not None:
                return answer
        path = request.url.path
        if path.startswith("/oauth2/") or path == "/token":
            return self._token_endpoint(request)
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        match = _ACR.match(path)
        if match:
            status = self.conversions.get((match["repo"], match["digest"]))
            if status is None:
                return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND"}]})
            return httpx.Response(200, json=status)
        match = _PATH.match(path)
        if not match:
            return httpx.Response(404)
        if match["kind"] == "referrers":
            return self._referrers(request, match["repo"], match["ref"])
        return self._manifest(request, match["repo"], match["ref"])

    def _manifest(self, request: httpx.Request, repo: str, ref: str) -> httpx.Response:
        digest = ref if ref.startswith("sha256:") else self.tags.get((repo, ref))
        stored = self.blobs.get((repo, digest or ""))
        if digest is None or stored is None:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        media_type, body = stored
        headers = {"Content-Type": media_type}
        if self.send_digest:
            headers["Docker-Content-Digest"] = digest
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=body)

    def _referrers(self, request: httpx.Request, repo: str, digest: str) -> httpx.Response:
        if not self.referrers_api:
            return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND"}]})
        entries = list(self.referrer_list.get((repo, digest), []))
        headers = {"Content-Type": OCI_INDEX}
        wanted = request.url.params.get("artifactType")
        if wanted and self.filter_applied:
            entries = [e for e in entries if e.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        start = int(request.url.params.get("last", "0"))
        if self.page_size is not None:
            page = entries[start : start + self.page_size]
            if start + self.page_size < len(entries):
                nxt = f"/v2/{repo}/referrers/{digest}?last={start + self.page_size}"
                if wanted:
                    nxt += f"&artifactType={wanted}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            entries = page
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return httpx.Response(200, headers=headers, content=dumps(doc))

    # ------------------------------------------------------------------ auth

    def _challenge(self, request: httpx.Request) -> httpx.Response:
        match = _PATH.match(request.url.path) or _ACR.match(request.url.path)
        repo = match["repo"] if match else ""
        origin = f"{self.scheme}://{self.host}"
        if self.auth == "basic":
            value = 'Basic realm="fake"'
        elif self.auth == "bearer":
            value = f'Bearer realm="{origin}/token",service="{self.host}"'
            value += f',scope="repository:{repo}:pull"'
        else:
            value = f'Bearer realm="{origin}/oauth2/token",service="{self.host}"'
            value += f',scope="repository:{repo}:pull"'
        return httpx.Response(401, headers={"WWW-Authenticate": value})

    def _check_auth(self, request: httpx.Request) -> httpx.Response | None:
        if self.auth is None:
            return None
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            expected = "Basic " + base64.b64encode(":".join(self.user).encode()).decode()
            return None if header == expected else self._challenge(request)
        if header.startswith("Bearer ") and header[7:] in self.access_tokens:
            return None
        return self._challenge(request)

    def _issue(self, kind: str) -> str:
        self._serial += 1
        if kind == "access" and self.jwt_exp is not None:
            value = jwt(self.jwt_exp, sub=str(self._serial))
        else:
            value = f"{kind}-{self._serial}"
        (self.access_tokens if kind == "access" else self.refresh_tokens).add(value)
        return value

    def _token_endpoint(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        extra = {"expires_in": self.token_lifetime} if self.token_lifetime else {}
        if path == "/token":  # Docker token spec
            if self.user is not None and request.headers.get("authorization"):
                expected = "Basic " + base64.b64encode(":".join(self.user).encode()).decode()
                if request.headers["authorization"] != expected:
                    return httpx.Response(401)
            return httpx.Response(200, json={"token": self._issue("access"), **extra})
        if path == "/oauth2/exchange":
            if (
                form.get("access_token") != self.aad_token
                or form.get("grant_type") != "access_token"
            ):
                return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
            return httpx.Response(200, json={"refresh_token": self._issue("refresh")})
        if path == "/oauth2/token":
            if form.get("refresh_token") not in self.refresh_tokens:
                return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
            if not form.get("scope", "").startswith("repository:"):
                return httpx.Response(400)
            return httpx.Response(200, json={"access_token": self._issue("access"), **extra})
        return httpx.Response(404)

    def revoke_all(self) -> None:
        self.access_tokens.clear()
        self.refresh_tokens.clear()


class FixedAad:
    """An `AadTokenProvider` handing out one fixed token, counting calls."""

    def __init__(self, token: str = "aad-ok", expires_on: float = 4_000_000_000.0) -> None:
        self.token = token
        self.expires_on = expires_on
        self.calls = 0

    async def get_token(self, scope: str) -> tuple[str, float]:
        self.calls += 1
        return self.token, self.expires_on


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_source(
    reg: FakeRegistry,
    *,
    clock: Callable[[], float] | None = None,
    aad: FixedAad | None = None,
    observer: RegistryObserver = NULL_OBSERVER,
    settings: dict[str, Any] | None = None,
    **config: Any,
) -> RegistryVerdictSource:
    """A source whose every registry client talks to `reg` (whatever the host)."""
    registry = {"insecure": reg.scheme == "http", **(settings or {})}
    cfg = RegistryConfig.model_validate({"registries": {reg.host: registry}, **config})
    return RegistryVerdictSource(
        cfg,
        aad=aad or FixedAad(),
        env={},
        transport=reg.transport(),
        observer=observer,
        clock=clock or time.monotonic,
    )


def transport_to(reg: FakeRegistry, *, max_body: int = 1 << 20) -> RegistryTransport:
    """A bare transport to `reg` (anonymous), for tests below the source."""
    http = httpx.AsyncClient(transport=reg.transport())
    return RegistryTransport(
        registry=reg.host,
        base_url=f"{reg.scheme}://{reg.host}",
        http=http,
        auth=Authenticator(registry=reg.host, credentials=Anonymous(), http=http),
        circuit=CircuitBreaker(reg.host),
        max_body=max_body,
    )


# ---------------------------------------------------------------------- the fake's own tests


async def test_fake_serves_manifest_with_digest() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    async with httpx.AsyncClient(transport=reg.transport()) as client:
        head = await client.head("https://reg.test/v2/demo/app/manifests/v1")
        get = await client.get(f"https://reg.test/v2/demo/app/manifests/{digest}")
    assert head.headers["docker-content-digest"] == digest
    assert digest_of(get.content) == digest


async def test_fake_filters_and_pages_referrers() -> None:
    reg = FakeRegistry(page_size=1)
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest, artifact_type="application/spdx+json")
    reg.referrer("demo/app", digest)
    async with httpx.AsyncClient(transport=reg.transport()) as client:
        page = await client.get(f"https://reg.test/v2/demo/app/referrers/{digest}")
    assert len(page.json()["manifests"]) == 1
    assert 'rel="next"' in page.headers["link"]


async def test_fake_fallback_tag_without_referrers_api() -> None:
    reg = FakeRegistry(referrers_api=False)
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest)
    async with httpx.AsyncClient(transport=reg.transport()) as client:
        api = await client.get(f"https://reg.test/v2/demo/app/referrers/{digest}")
        tag = await client.get(f"https://reg.test/v2/demo/app/manifests/{digest.replace(':', '-')}")
    assert api.status_code == 404
    assert tag.json()["manifests"][0]["artifactType"] == STREAMING
