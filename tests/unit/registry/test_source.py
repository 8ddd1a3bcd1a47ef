"""RegistryVerdictSource end to end against the in-memory registry: verdicts, reasons,
deadline, background warming, single-flight, stale answers, TTL flips."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.core.images import parse_image
from app.core.registries import RegistryConfig
from app.core.verdicts import Verdict
from app.registry.conversion import ConversionState
from app.registry.metrics import RegistryObserver
from app.registry.source import RegistryVerdictSource
from tests.unit.registry.test_fakes import FakeClock, FakeRegistry, FixedAad, make_source


async def test_streamable_image_has_artifact_digest_and_annotations() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    artifact = reg.referrer("demo/app", digest)
    source = make_source(reg)
    verdict = await source.verdict(parse_image("reg.test/demo/app:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.STREAMABLE
    assert verdict.digest == digest
    assert verdict.artifact_digest == artifact
    assert verdict.annotations["streaming.format"] == "overlaybd"
    assert verdict.annotations["streaming.platform.arch"] == "amd64"
    assert reg.count("manifests") == 1 and reg.count("referrers") == 1  # GET + referrers


async def test_warm_lookup_asks_the_registry_nothing() -> None:
    reg = FakeRegistry()
    reg.referrer("demo/app", reg.image("demo/app"))
    source = make_source(reg)
    ref = parse_image("reg.test/demo/app:v1")
    await source.verdict(ref)
    before = len(reg.calls)
    again = await source.verdict(ref)
    await source.aclose()
    assert again.verdict is Verdict.STREAMABLE
    assert len(reg.calls) == before


async def test_plain_image_on_non_acr_registry_is_not_streamable() -> None:
    reg = FakeRegistry()
    reg.image("demo/plain")
    source = make_source(reg)
    verdict = await source.verdict(parse_image("reg.test/demo/plain:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert verdict.reason == "no streaming artifact"
    assert reg.count("acr/v1") == 0  # conversion status is an ACR-only call


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, "no streaming artifact"),
        ({"status": "Running", "progress": "42%"}, "conversion running (42%)"),
        ({"status": "NotStarted"}, "conversion queued"),
        (
            {"status": "Failed", "failureCode": "UNSUPPORTED_PLATFORM"},
            "failed (UNSUPPORTED_PLATFORM): only linux/amd64",
        ),
        (
            {"status": "Failed", "error": {"code": "UNKNOWN_ERROR"}},
            "conversion failed (UNKNOWN_ERROR)",
        ),
        ({"status": "Canceled"}, "conversion canceled"),
    ],
    ids=["never", "running", "queued", "failed-platform", "failed-unknown", "canceled"],
)
async def test_acr_image_without_artifact_tells_conversion_status(
    status: dict[str, str] | None, expected: str
) -> None:
    reg = FakeRegistry("myacr.azurecr.io")
    digest = reg.image("team/app")
    if status is not None:
        reg.conversions[("team/app", digest)] = status
    source = make_source(reg)
    verdict = await source.verdict(parse_image("myacr.azurecr.io/team/app:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert expected in verdict.reason
    if "fix:" in verdict.reason:
        assert verdict.reason.endswith("--image team/app:v1")


async def test_conversion_status_failure_does_not_spoil_the_verdict() -> None:
    reg = FakeRegistry("myacr.azurecr.io")
    reg.image("team/app")

    async def broken(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(500) if "/acr/v1/" in request.url.path else None

    reg.hook = broken
    source = make_source(reg)
    verdict = await source.verdict(parse_image("myacr.azurecr.io/team/app:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert verdict.reason == "no streaming artifact"


async def test_missing_image_is_unknown() -> None:
    source = make_source(FakeRegistry())
    verdict = await source.verdict(parse_image("reg.test/demo/none:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.UNKNOWN
    assert verdict.reason == "image not found in registry"


async def test_digest_pinned_reference_skips_tag_resolution() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest)
    source = make_source(reg)
    verdict = await source.verdict(parse_image(f"reg.test/demo/app@{digest}"))
    await source.aclose()
    assert verdict.verdict is Verdict.STREAMABLE
    assert ("GET", "/v2/demo/app/manifests/v1") not in reg.calls  # pinned: no tag resolved


async def test_deadline_gives_unknown_and_background_warms_the_cache() -> None:
    reg = FakeRegistry()
    reg.referrer("demo/app", reg.image("demo/app"))
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response | None:
        if "/referrers/" in request.url.path:
            await release.wait()
        return None

    reg.hook = slow
    source = make_source(reg, deadline_seconds=0.2)
    ref = parse_image("reg.test/demo/app:v1")
    started = time.monotonic()
    first = await source.verdict(ref)
    elapsed = time.monotonic() - started
    assert first.verdict is Verdict.UNKNOWN
    assert first.reason == "registry timed out"
    assert elapsed < 2.0  # the referrers call hangs until released: only the deadline ends it
    release.set()
    for _ in range(500):  # the look-up goes on in the background and fills the cache
        await asyncio.sleep(0.01)
        if source.cached(ref) is not None:
            break
    calls = len(reg.calls)
    second = await source.verdict(ref)
    await source.aclose()
    assert second.verdict is Verdict.STREAMABLE
    assert len(reg.calls) == calls  # answered from the cache


async def test_hanging_registry_returns_within_deadline_and_aclose_cancels() -> None:
    reg = FakeRegistry()

    async def hang(request: httpx.Request) -> httpx.Response | None:
        await asyncio.sleep(3600)
        return None

    reg.hook = hang
    source = make_source(reg, deadline_seconds=0.1)
    started = time.monotonic()
    verdict = await source.verdict(parse_image("reg.test/demo/app:v1"))
    assert time.monotonic() - started < 2.0  # the hang is an hour: only the deadline ends it
    assert verdict.reason == "registry timed out"
    await asyncio.wait_for(source.aclose(), 1.0)


async def test_hundred_concurrent_lookups_make_one_manifest_and_one_referrers_call() -> None:
    reg = FakeRegistry()
    reg.referrer("demo/new", reg.image("demo/new"))

    async def slowish(request: httpx.Request) -> httpx.Response | None:
        await asyncio.sleep(0.01)
        return None

    reg.hook = slowish
    source = make_source(reg)
    ref = parse_image("reg.test/demo/new:v1")
    verdicts = await asyncio.gather(*(source.verdict(ref) for _ in range(100)))
    await source.aclose()
    assert {v.verdict for v in verdicts} == {Verdict.STREAMABLE}
    assert reg.count("manifests") == 1
    assert reg.count("referrers") == 1


async def test_same_digest_by_tag_and_by_digest_shares_the_referrers_call() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    reg.referrer("demo/app", digest)
    source = make_source(reg)
    await asyncio.gather(
        source.verdict(parse_image("reg.test/demo/app:v1")),
        source.verdict(parse_image(f"reg.test/demo/app@{digest}")),
    )
    await source.aclose()
    assert reg.count("referrers") == 1


async def test_late_artifact_is_seen_once_the_short_ttl_passed() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/late")
    clock = FakeClock()
    source = make_source(reg, clock=clock, cache={"missing_ttl_seconds": 60})
    ref = parse_image("reg.test/demo/late:v1")
    assert (await source.verdict(ref)).verdict is Verdict.NOT_STREAMABLE
    reg.referrer("demo/late", digest)
    clock.advance(30)
    assert (await source.verdict(ref)).verdict is Verdict.NOT_STREAMABLE  # still cached
    clock.advance(31)
    assert (await source.verdict(ref)).verdict is Verdict.STREAMABLE
    calls = len(reg.calls)
    clock.advance(3600)  # found: cached for long; the tag is asked again, the referrers not
    assert (await source.verdict(ref)).verdict is Verdict.STREAMABLE
    await source.aclose()
    assert reg.count("referrers") == 2
    assert len(reg.calls) == calls + 1


async def test_stale_answer_while_registry_fails() -> None:
    reg = FakeRegistry()
    reg.referrer("demo/app", reg.image("demo/app"))
    clock = FakeClock()
    source = make_source(reg, clock=clock, cache={"tag_ttl_seconds": 10, "stale_seconds": 600})
    ref = parse_image("reg.test/demo/app:v1")
    assert (await source.verdict(ref)).verdict is Verdict.STREAMABLE

    async def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    reg.hook = down
    clock.advance(60)
    assert (await source.verdict(ref)).verdict is Verdict.STREAMABLE  # stale tag -> digest
    clock.advance(3600)
    late = await source.verdict(ref)  # past the stale window: the error shows
    await source.aclose()
    assert late.verdict is Verdict.UNKNOWN
    assert late.reason.startswith("registry unavailable")


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("status", "headers", "body", "reason"),
    [
        (500, {}, b"", "registry unavailable (HTTP 500)"),
        (429, {"Retry-After": "30"}, b"", "registry rate-limited; retry in 30 s"),
        (200, JSON, b"{not json", "referrers list is not valid JSON"),
        (200, {"Content-Type": "text/html"}, b"<html>", "referrers list is not JSON"),
        (200, JSON, b"[]", "referrers list is not a JSON object"),
        (200, JSON, b'{"manifests": 3}', "has no manifests list"),
        (200, {"Content-Length": str(50 * 1024 * 1024)}, b"", "referrers answer too large"),
    ],
    ids=["500", "429", "bad-json", "html", "not-object", "bad-shape", "too-large"],
)
async def test_faulty_referrers_answers_give_unknown_with_a_reason(
    status: int, headers: dict[str, str], body: bytes, reason: str
) -> None:
    reg = FakeRegistry()
    reg.image("demo/app")

    async def fault(request: httpx.Request) -> httpx.Response | None:
        if "/referrers/" not in request.url.path:
            return None
        return httpx.Response(status, headers=headers, content=body)

    reg.hook = fault
    source = make_source(reg)
    verdict = await source.verdict(parse_image("reg.test/demo/app:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.UNKNOWN
    assert reason in verdict.reason


async def test_rate_limit_fails_fast_until_retry_after() -> None:
    reg = FakeRegistry()
    reg.image("demo/a")
    reg.image("demo/b")
    clock = FakeClock()

    async def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "20"})

    reg.hook = limited
    source = make_source(reg, clock=clock)
    first = await source.verdict(parse_image("reg.test/demo/a:v1"))
    calls = len(reg.calls)
    second = await source.verdict(parse_image("reg.test/demo/b:v1"))
    assert len(reg.calls) == calls  # not asked while backing off
    assert "rate-limited" in first.reason and "rate-limited" in second.reason
    reg.hook = None
    clock.advance(21)
    third = await source.verdict(parse_image("reg.test/demo/b:v1"))
    await source.aclose()
    assert third.verdict is Verdict.NOT_STREAMABLE


async def test_circuit_opens_after_repeated_failures() -> None:
    reg = FakeRegistry()

    async def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502)

    reg.hook = down
    clock = FakeClock()
    source = make_source(reg, clock=clock, circuit={"failure_threshold": 3, "open_seconds": 30})
    for n in range(3):
        await source.verdict(parse_image(f"reg.test/demo/app{n}:v1"))
    calls = len(reg.calls)
    verdict = await source.verdict(parse_image("reg.test/demo/other:v1"))
    assert len(reg.calls) == calls
    assert "recent failures" in verdict.reason
    reg.hook = None
    reg.image("demo/other")
    clock.advance(31)  # half-open: one probe goes through, succeeds, closes the circuit
    probe = await source.verdict(parse_image("reg.test/demo/other:v1"))
    await source.aclose()
    assert probe.verdict is Verdict.NOT_STREAMABLE


async def test_unexpected_exception_becomes_unknown(caplog: pytest.LogCaptureFixture) -> None:
    reg = FakeRegistry()

    async def boom(request: httpx.Request) -> httpx.Response:
        raise ZeroDivisionError

    reg.hook = boom
    source = make_source(reg)
    verdict = await source.verdict(parse_image("reg.test/demo/app:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.UNKNOWN
    assert verdict.reason == "registry look-up failed"


async def test_observer_hears_requests_cache_and_lookups() -> None:
    class Recorder(RegistryObserver):
        def __init__(self) -> None:
            self.events: list[tuple[str, ...]] = []

        def on_request(self, *, registry: str, endpoint: str, status: str, seconds: float) -> None:
            self.events.append(("request", endpoint, status))

        def on_cache(self, *, cache: str, event: str) -> None:
            self.events.append(("cache", cache, event))

        def on_lookup(
            self, *, registry: str, verdict: str, seconds: float, timed_out: bool
        ) -> None:
            self.events.append(("lookup", verdict))

    reg = FakeRegistry()
    reg.referrer("demo/app", reg.image("demo/app"))
    recorder = Recorder()
    source = make_source(reg, observer=recorder)
    ref = parse_image("reg.test/demo/app:v1")
    await source.verdict(ref)
    await source.verdict(ref)
    await source.aclose()
    assert ("request", "manifest", "200") in recorder.events
    assert ("request", "referrers", "200") in recorder.events
    assert ("cache", "tags", "miss") in recorder.events
    assert ("cache", "tags", "hit") in recorder.events
    assert recorder.events.count(("lookup", "streamable")) == 2


def test_conversion_states_are_distinct() -> None:
    assert len(set(ConversionState)) == 7


async def test_acr_hosts_hook_marks_custom_domains_as_acr() -> None:
    reg = FakeRegistry("registry.contoso.com", auth="acr")
    reg.image("shop/web")
    cfg_source = make_source(reg)  # not ACR by name: anonymous, no conversion status
    plain = await cfg_source.verdict(parse_image("registry.contoso.com/shop/web:v1"))
    await cfg_source.aclose()
    assert plain.verdict is Verdict.UNKNOWN  # anonymous can't use the ACR token service
    source = RegistryVerdictSource(
        RegistryConfig(),
        aad=FixedAad(),
        env={},
        transport=reg.transport(),
        acr_hosts=lambda host: host == "registry.contoso.com",
        aad_hosts=lambda host: host == "registry.contoso.com",
    )
    verdict = await source.verdict(parse_image("registry.contoso.com/shop/web:v1"))
    await source.aclose()
    assert verdict.verdict is Verdict.NOT_STREAMABLE
    assert verdict.reason == "no streaming artifact"
    assert reg.count("acr/v1") == 1  # the conversion status was asked: it is an ACR
    assert reg.count("oauth2/exchange") == 1


@pytest.mark.parametrize("streaming", [True, False], ids=["found", "none-yet"])
async def test_stale_answer_when_the_registry_hangs(streaming: bool) -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    if streaming:
        reg.referrer("demo/app", digest)
    clock = FakeClock()
    source = make_source(reg, clock=clock, deadline_seconds=0.1)
    ref = parse_image("reg.test/demo/app:v1")
    first = await source.verdict(ref)
    for _ in range(500):  # a stalled machine may time the first look-up out: let it finish
        if source.cached(ref) is not None:
            break
        await asyncio.sleep(0.01)
    first = source.cached(ref) or first

    async def hang(request: httpx.Request) -> httpx.Response | None:
        await asyncio.sleep(3600)
        return None

    reg.hook = hang
    clock.advance(120)  # tag and "none yet" expired, within the stale window
    again = await source.verdict(ref)
    clock.advance(7200)  # past the stale window: nothing to answer with
    late = await source.verdict(ref)
    await source.aclose()
    assert again.verdict is first.verdict
    assert again.digest == digest
    assert late.reason == "registry timed out"


@pytest.mark.parametrize(
    ("name", "multiarch", "host"),
    [
        ("single", False, "reg.test"),
        ("index", True, "reg.test"),
        ("acr", False, "myacr.azurecr.io"),
    ],
    ids=["single-arch", "multi-arch", "acr-no-artifact"],
)
async def test_cached_answers_only_from_fresh_entries(
    name: str, multiarch: bool, host: str
) -> None:
    reg = FakeRegistry(host)
    repo = f"demo/{name}"
    if multiarch:
        amd = reg.image(repo, None, arch="amd64")
        arm = reg.image(repo, None, arch="arm64")
        reg.index(repo, "v1", [(arm, "linux/arm64"), (amd, "linux/amd64")])
        reg.referrer(repo, amd)
    else:
        digest = reg.image(repo)
        if host == "reg.test":
            reg.referrer(repo, digest)
    clock = FakeClock()
    source = make_source(reg, clock=clock, cache={"tag_ttl_seconds": 60})
    ref = parse_image(f"{host}/demo/{name}:v1")
    assert source.cached(ref) is None  # never looked up: ask `verdict`
    first = await source.verdict(ref)
    calls = len(reg.calls)
    hits = sum(s.hits for s in source.cache_stats().values())
    assert source.cached(ref) == first  # every piece fresh: answered at once...
    assert len(reg.calls) == calls  # ...without a request
    assert sum(s.hits for s in source.cache_stats().values()) > hits  # and counted as hits
    clock.advance(61)  # the tag expired: the hot path never answers from a stale entry
    assert source.cached(ref) is None
    await source.aclose()


class CacheEvents(RegistryObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_cache(self, *, cache: str, event: str) -> None:
        self.events.append((cache, event))


async def test_cached_verdict_is_kept_until_an_entry_expires_or_changes() -> None:
    reg = FakeRegistry()
    reg.referrer("demo/app", reg.image("demo/app"))
    reg.image("demo/other")
    clock = FakeClock()
    events = CacheEvents()
    source = make_source(reg, clock=clock, observer=events, cache={"tag_ttl_seconds": 60})
    ref, other = parse_image("reg.test/demo/app:v1"), parse_image("reg.test/demo/other:v1")
    await source.verdict(ref)
    first = source.cached(ref)
    assert first is not None and first.verdict is Verdict.STREAMABLE
    events.events.clear()
    assert source.cached(ref) is first  # the same object: one dictionary look-up
    assert events.events == [("verdicts", "hit")]  # not three cache hits
    clock.advance(59)
    assert source.cached(ref) is first
    # Any entry stored (here: another image's look-up) and the kept verdict is rebuilt from
    # the entries, which still say the same.
    await source.verdict(other)
    again = source.cached(ref)
    assert again == first and again is not first
    assert source.cached(ref) is again
    clock.advance(2)  # the tag entry (60 s) expired: nothing kept answers any more
    assert source.cached(ref) is None
    await source.aclose()


async def test_cached_verdict_follows_a_changed_answer() -> None:
    reg = FakeRegistry()
    digest = reg.image("demo/app")
    clock = FakeClock()
    source = make_source(reg, clock=clock, cache={"tag_ttl_seconds": 60, "missing_ttl_seconds": 30})
    ref = parse_image("reg.test/demo/app:v1")
    await source.verdict(ref)
    assert source.cached(ref).verdict is Verdict.NOT_STREAMABLE
    reg.referrer("demo/app", digest)  # the artifact appears
    clock.advance(31)  # "none yet" (30 s) expired, the tag (60 s) not
    assert source.cached(ref) is None
    assert (await source.verdict(ref)).verdict is Verdict.STREAMABLE
    assert source.cached(ref).verdict is Verdict.STREAMABLE
    await source.aclose()
