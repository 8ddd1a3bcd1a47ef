"""RegistryVerdictSource against real registries (hack/registries.sh), and a fault server.

- Every seeded image gets its verdict on olareg (referrers API), olareg with 4 KiB pages,
  docker-registry 2.8 (fallback tag), docker-registry with basic auth, and the ACR front
  (AAD exchange in front of a token-auth docker-registry).
- Requests are counted at the registry side (its log) or at the front (/_front/stats).
- Faults no real registry produces on demand are in test_registry_client_faults.py.

Run: .venv/bin/pytest -m registry tests/integration/test_registry_client.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from app.core.images import parse_image
from app.core.verdicts import ImageVerdict, Verdict
from app.registry import RegistryConfig, RegistryVerdictSource
from app.registry.mediatypes import STREAMING
from tests.support.registries import (
    REPO_ROOT,
    AcrFront,
    Registry,
    Seeded,
    SeedResult,
    run_seeder,
)

pytestmark = pytest.mark.registry

# Our own namespace, seeded by hack/seed_registry.py like demo/: the registries are shared with
# other tests (and sessions) that count requests under demo/, and we count ours here.
NS = "sgclient"
STREAMABLE = {
    f"{NS}/streamable:v1",
    f"{NS}/multiarch:v1",
    f"{NS}/multiarch-index:v1",
    f"{NS}/docker-v2:v1",
    f"{NS}/config-form:v1",
    f"{NS}/many-referrers:v1",
}
NOT_STREAMABLE = {f"{NS}/plain:v1", f"{NS}/other-referrer:v1"}
TARGETS = ["olareg", "olareg_paged", "distribution", "basic", "acr_front", "acr_front_referrers"]


class StaticAad:
    """The tests' AAD: one token (minted by the ACR front's test key), counting calls."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    async def get_token(self, scope: str) -> tuple[str, float]:
        self.calls += 1
        return self.token, time.time() + 3600


@dataclass
class Target:
    """How the source reaches one seeded registry."""

    name: str
    host: str
    settings: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    aad: StaticAad | None = None
    front: AcrFront | None = None
    registry: Registry | None = None

    def source(self, **config: Any) -> RegistryVerdictSource:
        cfg = RegistryConfig.model_validate({"registries": {self.host: self.settings}, **config})
        return RegistryVerdictSource(cfg, aad=self.aad, env=self.env)

    def image(self, ref: str) -> str:
        return f"{self.host}/{ref}"


def make_target(name: str, seeded: Seeded) -> Target:
    reach = seeded.target(name)
    settings: dict[str, Any]
    if isinstance(reach, AcrFront):
        settings = {"acr": True, "auth": "acr-aad", "ca_file": reach.ca_cert}
        aad = StaticAad(reach.mint_aad_token())
        return Target(name, reach.host, settings, aad=aad, front=reach)
    settings = {"insecure": True}
    env = {}
    if reach.username is not None and reach.password is not None:
        settings |= {"username_env": "SG_REG_USER", "password_env": "SG_REG_PASSWORD"}
        env = {"SG_REG_USER": reach.username, "SG_REG_PASSWORD": reach.password}
    return Target(name, reach.host, settings, env=env, registry=reach)


@asynccontextmanager
async def opened(source: RegistryVerdictSource) -> AsyncIterator[RegistryVerdictSource]:
    try:
        yield source
    finally:
        await source.aclose()


Own = Callable[[str], SeedResult]


@pytest.fixture(scope="module")
def own(seeded: Seeded) -> Own:
    """`own(name)` seeds our namespace on that registry once per module; the SeedResult."""
    results: dict[str, SeedResult] = {}

    def get(name: str) -> SeedResult:
        if name not in results:
            args = seeded.target(name).seeder_args()
            results[name] = run_seeder(args, "seed", "--namespace", NS)
        return results[name]

    return get


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, seeded: Seeded, own: Own) -> tuple[Target, SeedResult]:
    name = request.param
    return make_target(name, seeded), own(name)


# --------------------------------------------------------------------------- verdicts


async def test_every_seeded_image_gets_its_verdict(target: tuple[Target, SeedResult]) -> None:
    where, seed = target
    async with opened(where.source()) as source:
        refs = sorted(STREAMABLE | NOT_STREAMABLE)
        verdicts = await asyncio.gather(
            *(source.verdict(parse_image(where.image(r))) for r in refs)
        )
    by_ref = dict(zip(refs, verdicts, strict=True))
    for ref in STREAMABLE:
        verdict = by_ref[ref]
        assert verdict.verdict is Verdict.STREAMABLE, (ref, verdict)
        assert verdict.digest == seed.digest(ref)
        assert verdict.artifact_digest == seed.streaming_referrers(ref)[0]["digest"]
        assert verdict.annotations["streaming.format"] == "overlaybd"
        assert verdict.annotations["streaming.platform.arch"] == "amd64"
    for ref in NOT_STREAMABLE:
        verdict = by_ref[ref]
        assert verdict.verdict is Verdict.NOT_STREAMABLE, (ref, verdict)
        assert verdict.reason.startswith("no streaming artifact")
    if where.front is not None:  # ACR: the conversion status is asked (the front has none)
        # Never requested: the bare fact, to which the warning adds the command to run.
        assert by_ref[f"{NS}/plain:v1"].reason == "no streaming artifact"


async def test_digest_pinned_images(seeded: Seeded, own: Own) -> None:
    where = make_target("distribution", seeded)
    seed = own("distribution")
    async with opened(where.source()) as source:
        pinned = f"{NS}/multiarch@{seed.digest(f'{NS}/multiarch:v1')}"
        verdict = await source.verdict(parse_image(where.image(pinned)))
        plain = f"{NS}/plain@{seed.digest(f'{NS}/plain:v1')}"
        missing = await source.verdict(parse_image(where.image(plain)))
    assert verdict.verdict is Verdict.STREAMABLE
    assert missing.verdict is Verdict.NOT_STREAMABLE


async def test_unknown_image_and_missing_credentials(seeded: Seeded, own: Own) -> None:
    where = make_target("basic", seeded)
    own("basic")
    async with opened(where.source()) as source:
        missing = await source.verdict(parse_image(where.image(f"{NS}/nothing-here:v1")))
    assert (missing.verdict, missing.reason) == (Verdict.UNKNOWN, "image not found in registry")
    anonymous = Target("basic", where.host, {"insecure": True})
    async with opened(anonymous.source()) as source:
        refused = await source.verdict(parse_image(where.image(f"{NS}/streamable:v1")))
    assert refused.verdict is Verdict.UNKNOWN
    assert refused.reason == "registry needs a user name and password"


# --------------------------------------------------------------------------- request counts


async def test_fallback_tag_path_on_docker_registry(
    seeded: Seeded, own: Own, distribution: Registry
) -> None:
    where = make_target("distribution", seeded)
    digest = own("distribution").digest(f"{NS}/streamable:v1")
    since = distribution.offset()
    async with opened(where.source()) as source:
        verdict = await source.verdict(parse_image(where.image(f"{NS}/streamable:v1")))
    assert verdict.verdict is Verdict.STREAMABLE
    repo = f"/v2/{NS}/streamable"
    assert distribution.count(since, "GET", f"{repo}/manifests/v1") == 1
    assert distribution.count(since, "GET", f"{repo}/referrers/{digest}") == 1
    assert distribution.count(since, "GET", f"{repo}/manifests/sha256-{digest[7:]}") == 1
    assert distribution.count(since, None, f"^{repo}/") == 3


async def test_hundred_concurrent_lookups_one_manifest_one_referrers_call(
    seeded: Seeded, own: Own, olareg: Registry
) -> None:
    where = make_target("olareg", seeded)
    own("olareg")
    since = olareg.offset()
    async with opened(where.source()) as source:
        ref = parse_image(where.image(f"{NS}/streamable:v1"))
        verdicts = await asyncio.gather(*(source.verdict(ref) for _ in range(100)))
    assert {v.verdict for v in verdicts} == {Verdict.STREAMABLE}
    assert olareg.count(since, None, f"^/v2/{NS}/streamable/manifests/") == 1
    assert olareg.count(since, None, f"^/v2/{NS}/streamable/referrers/") == 1
    assert olareg.count(since, None, f"^/v2/{NS}/streamable/") == 2


@pytest.mark.parametrize("name", ["acr_front", "acr_front_referrers"])
async def test_acr_exchange_once_then_warm_tokens(name: str, seeded: Seeded, own: Own) -> None:
    where = make_target(name, seeded)
    front = where.front
    assert front is not None and where.aad is not None
    own(name)
    front.reset_stats()
    async with opened(where.source()) as source:
        first = await source.verdict(parse_image(where.image(f"{NS}/streamable:v1")))
        assert first.verdict is Verdict.STREAMABLE
        assert front.count("POST", "/oauth2/exchange") == 1
        assert front.count("POST", "/oauth2/token") == 1
        others = [f"{NS}/plain:v1", f"{NS}/multiarch:v1", f"{NS}/docker-v2:v1"]
        for ref in others:  # new repositories: new access tokens, same refresh token
            await source.verdict(parse_image(where.image(ref)))
        assert front.count("POST", "/oauth2/exchange") == 1
        assert front.count("POST", "/oauth2/token") == 1 + len(others)
        for ref in [f"{NS}/streamable:v1", *others]:  # warm: nothing at all
            await source.verdict(parse_image(where.image(ref)))
        assert front.count("POST", "/oauth2/token") == 1 + len(others)
        stats = front.stats()["by_status"]
    assert stats.get("401") == 1  # the very first request only; later tokens go up front
    assert where.aad.calls == 1


async def test_short_lived_access_tokens_are_renewed_without_a_new_exchange(
    seeded: Seeded, own: Own
) -> None:
    where = make_target("acr_front", seeded)
    front = where.front
    assert front is not None
    own("acr_front")
    with front.configured(access_token_lifetime=2):
        front.reset_stats()
        async with opened(where.source(cache={"tag_ttl_seconds": 0.5})) as source:
            ref = parse_image(where.image(f"{NS}/streamable:v1"))
            assert (await source.verdict(ref)).verdict is Verdict.STREAMABLE
            await asyncio.sleep(2.1)  # the access token (exp in its JWT) is past use
            assert (await source.verdict(ref)).verdict is Verdict.STREAMABLE
            assert front.count("POST", "/oauth2/token") == 2
            assert front.count("POST", "/oauth2/exchange") == 1
            assert front.stats()["by_status"].get("401") == 1


@pytest.mark.parametrize("name", ["olareg", "distribution"])
async def test_late_artifact_flips_after_the_short_ttl(name: str, seeded: Seeded) -> None:
    reach = seeded.target(name)
    run_seeder(reach.seeder_args(), "seed", "--namespace", NS)  # takes the referrer off late
    where = make_target(name, seeded)
    ttl = 1.5
    cache = {"tag_ttl_seconds": ttl, "missing_ttl_seconds": ttl}
    async with opened(where.source(cache=cache)) as source:
        ref = parse_image(where.image(f"{NS}/late:v1"))
        assert (await source.verdict(ref)).verdict is Verdict.NOT_STREAMABLE
        cached_at = time.monotonic()
        run_seeder(reach.seeder_args(), "add-referrer", f"{NS}/late:v1")
        if time.monotonic() - cached_at < ttl - 0.3:  # the seeder was quick enough to see it
            assert (await source.verdict(ref)).verdict is Verdict.NOT_STREAMABLE  # "none yet"
        await asyncio.sleep(max(0.0, cached_at + ttl + 0.1 - time.monotonic()))
        flipped = await source.verdict(ref)
    assert flipped.verdict is Verdict.STREAMABLE
    assert flipped.annotations["streaming.version"] == "v1"


def seeder_module() -> ModuleType:
    """hack/seed_registry.py as a module: pushes many referrers in-process, fast."""
    name = "streamgate_seed_registry"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "hack" / "seed_registry.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def filtered_pages(registry: Registry, repo: str, digest: str) -> int:
    """How many pages the registry's own (filtered) referrers list has."""
    pages, url = 0, f"/v2/{repo}/referrers/{digest}?artifactType={STREAMING}"
    with registry.client() as client:
        while url:
            response = client.get(url)
            pages += 1
            link = response.headers.get("link", "")
            url = link.split(";")[0].strip().strip("<>") if "next" in link else ""
    return pages


async def test_referrer_pages_on_a_paging_registry(seeded: Seeded, olareg_paged: Registry) -> None:
    """Streaming artifacts for other platforms fill several 4 KiB pages: every page is read
    (up to the bound), then the amd64 artifact is found once it is there."""
    seed = seeder_module()
    registry = seed.Registry(olareg_paged.host, plain_http=True)
    seeder = seed.Seeder(registry, out=io.StringIO())
    repo = f"{NS}/paged"
    image = seed.make_image(repo, "amd64")
    seeder.push_manifest_tree(repo, image, "v1")
    seeder.remove_referrers(repo, image.digest)
    others = [seed.make_streaming_referrer(image, f"arm{n}") for n in range(24)]
    seeder.attach(repo, image, others)
    registry.close()
    pages = filtered_pages(olareg_paged, repo, image.digest)
    assert pages > 2

    where = make_target("olareg_paged", seeded)
    for max_pages, asked in ((10, pages), (2, 2)):
        since = olareg_paged.offset()
        async with opened(where.source(max_referrer_pages=max_pages)) as source:
            verdict = await source.verdict(parse_image(where.image(f"{repo}:v1")))
        assert verdict.verdict is Verdict.NOT_STREAMABLE
        assert verdict.reason.startswith("streaming artifact only for linux/arm0, linux/arm1")
        assert olareg_paged.count(since, "GET", f"^/v2/{repo}/referrers/") == asked

    registry = seed.Registry(olareg_paged.host, plain_http=True)
    seed.Seeder(registry, out=io.StringIO()).attach(
        repo, image, [seed.make_streaming_referrer(image, "amd64")]
    )
    registry.close()
    async with opened(where.source()) as source:
        verdict = await source.verdict(parse_image(where.image(f"{repo}:v1")))
    assert verdict.verdict is Verdict.STREAMABLE
    assert verdict.annotations["streaming.platform.arch"] == "amd64"


# --------------------------------------------------------------------------- measurements


async def test_cold_and_warm_latency_on_olareg(
    seeded: Seeded, own: Own, olareg: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    where = make_target("olareg", seeded)
    own("olareg")
    refs = sorted(STREAMABLE | NOT_STREAMABLE)
    cold: list[float] = []
    warm: list[float] = []
    async with opened(where.source()) as source:
        since = olareg.offset()
        for ref in refs:
            image = parse_image(where.image(ref))
            started = time.perf_counter()
            verdict: ImageVerdict = await source.verdict(image)
            cold.append(time.perf_counter() - started)
            assert verdict.verdict is not Verdict.UNKNOWN
        cold_requests = olareg.count(since, None, f"^/v2/{NS}/")
        since = olareg.offset()
        for _ in range(20):
            for ref in refs:
                image = parse_image(where.image(ref))
                started = time.perf_counter()
                await source.verdict(image)
                warm.append(time.perf_counter() - started)
        warm_requests = olareg.count(since, None, f"^/v2/{NS}/")
    with capsys.disabled():
        print(
            f"\nolareg: {len(refs)} images, {cold_requests} registry requests cold, "
            f"{warm_requests} warm; cold median {statistics.median(cold) * 1000:.1f} ms, "
            f"max {max(cold) * 1000:.1f} ms; warm median {statistics.median(warm) * 1e6:.0f} us"
        )
    assert warm_requests == 0
    assert statistics.median(warm) < 0.002
    assert statistics.median(cold) < 0.5
