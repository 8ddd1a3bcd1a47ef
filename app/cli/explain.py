"""`streamgate explain <image>`: every step of one image's look-up, for the moment a verdict
surprises someone.

It runs the registry client's own pieces, the ones `RegistryVerdictSource` is made of
(`ClientPool` for connections, auth and the circuit; `Lookup` for tag -> digest -> index
entry -> referrers -> conversion status; `verdict_for` for the verdict), with a fresh cache,
and watches them work through a `Trace`: a `RegistryObserver` (tokens, cache, circuit, failed
requests) plus httpx event hooks on the registry's HTTP client (method, URL, status and time
of every request, token requests included; no header or body is kept, so no credential can
reach the output). What the look-up learnt is read back from its caches and its result.

One more thing is asked after the verdict, for people only: the unfiltered list of referrers
of each manifest searched (signatures, SBOMs, ...), with their artifactType and annotations.
The verdict never depends on it.

Then the pure core says what the webhook would answer for a Pod running only this image,
against the cluster's node pools when a kubeconfig is given.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.core.evaluate import Decision, evaluate
from app.core.images import ImageRef, InvalidImageRef, is_acr_host, parse_image
from app.core.messages import fix_command
from app.core.plan import plan
from app.core.policy import Mode, Policy
from app.core.pools import UNKNOWN_PLACEMENT, Placement, PlacementSource
from app.core.registries import RegistryConfig
from app.core.verdicts import ImageVerdict, Verdict
from app.core.workloads import workload
from app.registry.conversion import ConversionState, ConversionStatus
from app.registry.credentials import AadTokenProvider, AcrAad, Anonymous, BasicAuth
from app.registry.errors import RegistryError, RegistryTimeout
from app.registry.headers import parse_link_next
from app.registry.lookup import Lookup, LookupResult
from app.registry.manifests import ManifestInfo, pull_scope
from app.registry.mediatypes import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, STREAMING
from app.registry.messages import verdict_for, verdict_for_error
from app.registry.metrics import RegistryObserver
from app.registry.oci import Descriptor, fallback_tag, index_descriptors
from app.registry.pool import ClientPool
from app.registry.referrers import ReferrerSearch
from app.registry.transport import RegistryTransport

_KINDS = {
    OCI_MANIFEST: "OCI image manifest",
    OCI_INDEX: "OCI image index",
    DOCKER_MANIFEST: "Docker image manifest (schema 2)",
    DOCKER_LIST: "Docker manifest list",
}
_MAX_LISTED = 20


class ExplainError(ValueError):
    """The image can't be explained (not an image reference); `str()` says why."""


def clean(text: object, limit: int = 200) -> str:
    """Registry-provided text made safe for a terminal: printable, one line, bounded."""
    out = "".join(c if c.isprintable() else "?" for c in str(text))
    return out if len(out) <= limit else out[: limit - 1] + "…"


def short_digest(digest: str | None) -> str:
    if not digest:
        return "-"
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}…"


# ---- the trace ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TracedRequest:
    method: str
    url: str
    status: str
    ms: float
    phase: str  # "look-up" (what the verdict rests on) or "listing" (for people)


class Trace(RegistryObserver):
    """Everything the client did, in order. See the module docstring."""

    def __init__(self) -> None:
        self.phase = "look-up"
        self.requests: list[TracedRequest] = []
        self.tokens: list[tuple[str, str]] = []  # (kind, outcome)
        self.circuit: list[str] = []
        self._started: dict[int, float] = {}

    # RegistryObserver: failures that never got a response are only seen here
    def on_request(self, *, registry: str, endpoint: str, status: str, seconds: float) -> None:
        if not status.isdigit():
            self.requests.append(
                TracedRequest("?", f"({endpoint})", status, seconds * 1000, self.phase)
            )

    def on_token(self, *, registry: str, kind: str, outcome: str) -> None:
        self.tokens.append((kind, outcome))

    def on_circuit(self, *, registry: str, state: str) -> None:
        self.circuit.append(state)

    # httpx event hooks
    async def _on_request(self, request: httpx.Request) -> None:
        self._started[id(request)] = time.monotonic()

    async def _on_response(self, response: httpx.Response) -> None:
        request = response.request
        started = self._started.pop(id(request), None)
        ms = (time.monotonic() - started) * 1000 if started is not None else 0.0
        url = request.url
        shown = f"{url.scheme}://{url.netloc.decode()}{url.raw_path.decode()}"
        self.requests.append(
            TracedRequest(
                request.method, clean(shown, 300), str(response.status_code), ms, self.phase
            )
        )

    def attach(self, http: httpx.AsyncClient) -> None:
        http.event_hooks = {"request": [self._on_request], "response": [self._on_response]}


# ---- the explanation ------------------------------------------------------------------------


@dataclass(slots=True)
class Step:
    name: str
    text: str
    details: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Explanation:
    image: str
    steps: list[Step] = field(default_factory=list)
    verdict: ImageVerdict | None = None
    lookup_seconds: float | None = None
    requests: list[TracedRequest] = field(default_factory=list)
    decision: Decision | None = None

    def add(self, name: str, text: str, details: list[str] | None = None) -> Step:
        step = Step(name, text, details or [])
        self.steps.append(step)
        return step

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)


def _reference(ref: ImageRef) -> str:
    parts = [f"registry {ref.registry}", f"repository {ref.repository}"]
    if ref.tag and not ref.digest:
        parts.append(f"tag {ref.tag}")
    if ref.digest:
        tag = f" (tag {ref.tag} ignored)" if ref.tag else ""
        parts.append(f"digest {ref.digest}{tag}")
    return ", ".join(parts)


def _registry(ref: ImageRef, policy: Policy, pool: ClientPool | None) -> tuple[str, list[str]]:
    config = policy.registry
    key = config.settings_key(ref.registry)
    settings = config.settings_for(ref.registry)
    in_policy = policy.is_acr(ref.registry)
    acr = pool.is_acr(ref.registry) if pool is not None else in_policy
    why = "an ACR host name" if is_acr_host(ref.registry) else "listed in acrRegistries"
    text = f"{ref.registry}: " + (f"ACR ({why})" if in_policy else "not ACR per the policy")
    details = []
    if in_policy:
        scheme = "http (insecure)" if settings.insecure else "https"
        where = f'settings "{key}"' if key else "default settings"
        details.append(f"{scheme}, {where}")
        if not acr:
            details.append("its settings say acr: false: no conversion status is asked")
    return text, details


def _auth(transport: RegistryTransport, policy: Policy, ref: ImageRef, trace: Trace) -> Step:
    settings = policy.registry.settings_for(ref.registry)
    mode = policy.registry.auth_mode(
        ref.registry, acr_hosts=policy.is_acr, aad_hosts=policy.may_get_aad
    )
    creds = transport.auth.credentials
    if isinstance(creds, BasicAuth):
        what = f"basic: user {clean(creds.username, 60)}, password from its configured source"
    elif isinstance(creds, AcrAad):
        what = "acr-aad: Azure AD token -> ACR refresh token (/oauth2/exchange) -> access token"
    elif isinstance(creds, Anonymous):
        what = "anonymous"
    else:  # pragma: no cover - Credentials is a closed union
        what = type(creds).__name__
    lookup = [r for r in trace.requests if r.phase == "look-up"]
    challenges = sum(r.status == "401" for r in lookup)
    token_calls = [r for r in lookup if not _registry_path(r.url)]
    withheld = []
    if settings.auth == "auto" and mode == "anonymous" and policy.is_acr(ref.registry):
        withheld.append(
            f"no Azure AD token for {ref.registry}: it is ACR only through a pattern; list it by "
            "its exact name in acrRegistries to use acr-aad (docs/security.md)"
        )
    if not challenges and not trace.tokens:
        step = Step("auth", "none used: the registry asked for no credentials")
        step.details.append(f"would use {what} (auth: {settings.auth} -> {mode})")
        step.details += withheld
        return step
    step = Step("auth", f"{what} (auth: {settings.auth} -> {mode})", withheld)
    if challenges:
        step.details.append(f"the registry answered 401 {challenges}x, asking for credentials")
    for call in token_calls:
        step.details.append(f"token: {call.method} {call.url.split('?')[0]} -> {call.status}")
    if trace.tokens:
        got = ", ".join(f"{kind} {outcome}" for kind, outcome in trace.tokens)
        step.details.append(f"credentials obtained: {got}")
    return step


def _registry_path(url: str) -> bool:
    path = url.split("://", 1)[-1].partition("/")[2]
    return path.startswith(("v2/", "acr/"))


def _digest_step(ref: ImageRef, digest: str | None, manifest: ManifestInfo | None) -> Step:
    if ref.digest:
        step = Step("digest", f"{ref.digest} (pinned in the reference: no tag to resolve)")
        step.details.append("AKS streams tag pulls only: a digest-pinned image does not stream")
    elif digest:
        step = Step("digest", f"tag {ref.tag} -> {digest}")
    else:
        return Step("digest", f"tag {ref.tag}: not resolved")
    if manifest is not None:
        kind = _KINDS.get(manifest.media_type, manifest.media_type)
        step.details.append(clean(kind))
    return step


def _platform_step(manifest: ManifestInfo | None, platform: str) -> Step:
    if manifest is None:
        return Step("platform", "manifest not read")
    if not manifest.is_index:
        return Step("platform", "single image, no index: nothing to choose")
    listed = ", ".join(manifest.platforms) or "none"
    if manifest.platform_digest is None:
        step = Step("platform", f"index has no {platform} entry; streaming needs one")
    else:
        step = Step("platform", f"{platform} -> {manifest.platform_digest}")
    step.details.append(f"index lists: {clean(listed)}")
    step.details.append(f"{platform} is what streaming nodes pull (registry.platform)")
    return step


def _subjects(ref_digest: str | None, manifest: ManifestInfo | None) -> list[tuple[str, str]]:
    if ref_digest is None:
        return []
    top = "index" if manifest is not None and manifest.is_index else "image"
    out = [(ref_digest, top)]
    if manifest is not None and manifest.platform_digest is not None:
        out.append((manifest.platform_digest, "platform entry"))
    return out


def _describe(d: Descriptor) -> str:
    kind = d.artifact_type or f"(no artifactType; {d.media_type})"
    notes = ", ".join(f"{clean(k, 60)}={clean(v, 60)}" for k, v in sorted(d.annotations.items()))
    return f"{short_digest(d.digest)}  {clean(kind, 100)}" + (f"  {notes}" if notes else "")


def _referrers_step(
    subjects: list[tuple[str, str]],
    searches: Mapping[str, ReferrerSearch],
    listings: Mapping[str, tuple[str, list[Descriptor], bool] | str],
) -> Step:
    if not subjects:
        return Step("referrers", "not searched (no digest)")
    found = [s.artifact for s in searches.values() if s.artifact is not None]
    text = "streaming artifact found" if found else "no streaming artifact"
    step = Step("referrers", text)
    for digest, label in subjects:
        search = searches.get(digest)
        via = {"api": "referrers API", "tag": "fallback tag"}.get(search.via if search else "", "")
        head = f"of {short_digest(digest)} ({label})" + (f", via the {via}" if via else "")
        if search is None:
            step.details.append(f"{head}: search did not finish")
            continue
        if search.artifact is not None:
            step.details.append(f"{head}: streaming artifact {search.artifact.digest}")
            step.details.append(f"  artifactType {STREAMING}")
            for k, v in sorted(search.artifact.annotations.items()):
                step.details.append(f"  {clean(k, 80)}: {clean(v)}")
        elif search.other_platforms:
            step.details.append(f"{head}: none for this platform")
        else:
            step.details.append(f"{head}: none")
        if search.other_platforms:
            others = ", ".join(search.other_platforms)
            step.details.append(f"  streaming artifacts for other platforms only: {clean(others)}")
        listing = listings.get(digest)
        if isinstance(listing, str):
            step.details.append(f"  all referrers: not listed ({listing})")
        elif listing is not None:
            _, entries, more = listing
            if not entries:
                step.details.append("  all referrers: none")
                continue
            step.details.append(f"  all referrers ({len(entries)}{'+' if more else ''}):")
            chosen = search.artifact.digest if search.artifact else None
            for d in entries[:_MAX_LISTED]:
                mark = "  <- the streaming artifact" if d.digest == chosen else ""
                step.details.append(f"    {_describe(d)}{mark}")
            if len(entries) > _MAX_LISTED:
                step.details.append(f"    ... {len(entries) - _MAX_LISTED} more")
    return step


def _conversion_step(
    acr: bool, result: LookupResult | None, conversion: ConversionStatus | None
) -> Step:
    if not acr:
        return Step("conversion", "not asked: the conversion status is an ACR API")
    if result is not None and result.artifact is not None:
        return Step("conversion", "not asked: a streaming artifact was found")
    if conversion is None:
        return Step("conversion", "not asked (the look-up stopped earlier)")
    state = conversion.state
    text = {
        ConversionState.NEVER_REQUESTED: "never requested (ACR has no record of a conversion)",
        ConversionState.NOT_STARTED: "queued, not started",
        ConversionState.RUNNING: "running",
        ConversionState.SUCCEEDED: "succeeded, but no artifact is visible yet",
        ConversionState.FAILED: "failed",
        ConversionState.CANCELED: "canceled",
        ConversionState.UNKNOWN: "unknown (the status could not be read)",
    }[state]
    step = Step("conversion", text)
    if conversion.progress:
        step.details.append(f"progress {conversion.progress}")
    if conversion.failure_code:
        step.details.append(f"failure code {conversion.failure_code}")
    return step


async def _list_referrers(
    transport: RegistryTransport, repository: str, subject: str
) -> tuple[str, list[Descriptor], bool]:
    """All referrers of `subject` (first page), via the API or the fallback tag."""
    scope = pull_scope(repository)
    response = await transport.request(
        "GET",
        f"/v2/{repository}/referrers/{subject}",
        scope=scope,
        endpoint="referrers",
        accept=(OCI_INDEX,),
    )
    via = "api"
    if response.status == 404:
        via = "tag"
        response = await transport.request(
            "GET",
            f"/v2/{repository}/manifests/{fallback_tag(subject)}",
            scope=scope,
            endpoint="fallback-tag",
            accept=(OCI_INDEX,),
        )
        if response.status == 404:
            return via, [], False
    if response.status != 200:
        return via, [], False
    doc = response.json_object(registry=transport.registry, what="referrers list")
    entries = index_descriptors(doc, registry=transport.registry, what="referrers list")
    more = parse_link_next(response.headers.get("link")) is not None
    return via, entries, more


def _webhook_step(
    ref: ImageRef, verdict: ImageVerdict, policy: Policy, mode: Mode, placement: Placement
) -> tuple[Step, Decision | None]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "explain"},
        "spec": {"containers": [{"name": "app", "image": ref.raw}]},
    }
    wl = workload("", "Pod", pod)
    assert wl is not None
    decision = evaluate(
        plan(wl, policy), mode=mode, policy=policy, verdicts={ref: verdict}, placement=placement
    )
    if decision.skipped:
        return Step("webhook", f"skipped: {decision.skipped}"), decision
    shown = decision.denials + decision.warnings
    if not decision.allowed:
        text = f"a Pod with this image would be denied (mode {mode.value})"
    elif shown:
        text = f"a Pod with this image would be allowed with warnings (mode {mode.value})"
    else:
        text = f"a Pod with this image would be allowed without a warning (mode {mode.value})"
    step = Step("webhook", text, [clean(m, 300) for m in shown])
    if placement.known:
        can = [p.name for p in placement.streaming_pools]
        cannot = [f"{p.name} ({', '.join(p.reasons) or 'no'})" for p in placement.non_streaming]
        step.details.append(
            f"node pools it may land on: {len(placement.pools)}; can stream: "
            + (", ".join(can) or "none")
        )
        if cannot:
            step.details.append("can't stream: " + "; ".join(cannot))
    else:
        step.details.append("node pools not judged (give --kubeconfig to include them)")
    return step, decision


async def explain(
    image: str,
    policy: Policy,
    *,
    placement: PlacementSource | None = None,
    mode: Mode | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    aad: AadTokenProvider | None = None,
    env: Mapping[str, str] | None = None,
) -> Explanation:
    """Explain `image` under `policy`. `transport`, `aad`, `env`: as for the registry client
    (tests). Raises `ExplainError` when `image` is not an image reference."""
    out = Explanation(image=image)
    try:
        ref = parse_image(image)
    except InvalidImageRef as err:
        raise ExplainError(f"{image!r} is not an image reference: {err}") from err
    out.add("reference", _reference(ref))
    mode = mode or policy.mode
    where = (placement or _NoPlacement()).place({"containers": [{"name": "app", "image": image}]})
    if not policy.is_acr(ref.registry):
        text, details = _registry(ref, policy, None)
        details.append("streamgate looks up ACR images only; add the host to acrRegistries")
        out.add("registry", text, details)
        out.verdict = ImageVerdict(Verdict.NOT_ACR)
        out.add("verdict", f"not-acr (rule notAcr: {policy.rules.not_acr.value})")
        step, out.decision = _webhook_step(ref, out.verdict, policy, mode, where)
        out.steps.append(step)
        return out
    await _look_up(out, ref, policy, transport=transport, aad=aad, env=env)
    assert out.verdict is not None
    step, out.decision = _webhook_step(ref, out.verdict, policy, mode, where)
    out.steps.append(step)
    return out


class _NoPlacement:
    def place(self, pod_spec: Mapping[str, Any]) -> Placement:
        return UNKNOWN_PLACEMENT


async def _look_up(
    out: Explanation,
    ref: ImageRef,
    policy: Policy,
    *,
    transport: httpx.AsyncBaseTransport | None,
    aad: AadTokenProvider | None,
    env: Mapping[str, str] | None,
) -> None:
    config: RegistryConfig = policy.registry
    trace = Trace()
    pool = ClientPool(
        config,
        aad=aad,
        env=env,
        transport=transport,
        observer=trace,
        acr_hosts=policy.is_acr,
        aad_hosts=policy.may_get_aad,
    )
    lookup = Lookup(pool=pool, config=config, observer=trace)
    try:
        text, details = _registry(ref, policy, pool)
        out.add("registry", text, details)
        client = pool.transport(ref.registry)
        trace.attach(client.http)
        started = time.monotonic()
        result: LookupResult | None = None
        error: RegistryError | None = None
        try:
            async with asyncio.timeout(config.background_seconds):
                result = await lookup.run(ref)
        except TimeoutError:
            error = RegistryTimeout(ref.registry, "look-up ran past background_seconds")
        except RegistryError as err:
            error = err
        out.lookup_seconds = time.monotonic() - started
        if result is not None:
            out.verdict = verdict_for(ref, result, platform=config.wanted_platform)
        else:
            assert error is not None
            out.verdict = verdict_for_error(error)
        await _steps(out, ref, policy, _Run(pool, client, lookup, trace, result, error))
        out.requests = list(trace.requests)
    finally:
        await lookup.aclose()
        await pool.aclose()


@dataclass(frozen=True, slots=True)
class _Run:
    pool: ClientPool
    client: RegistryTransport
    lookup: Lookup
    trace: Trace
    result: LookupResult | None
    error: RegistryError | None


def _learnt(
    ref: ImageRef, run: _Run
) -> tuple[str | None, ManifestInfo | None, dict[str, ReferrerSearch]]:
    """What the look-up learnt: from its result or, after a failure, from its caches."""
    result, lookup = run.result, run.lookup
    key = (ref.registry.lower(), ref.repository)
    digest = result.digest if result else ref.digest or lookup.tags.get((*key, ref.tag or "latest"))
    manifest = result.manifest if result else None
    if manifest is None and digest is not None:
        manifest = lookup.manifests.get((*key, digest))
    searches = {s.subject: s for s in (result.searches if result else ())}
    for subject, _ in _subjects(digest, manifest):
        cached = lookup.artifacts.get((*key, subject))
        if subject not in searches and cached is not None:
            searches[subject] = cached
    return digest, manifest, searches


async def _steps(out: Explanation, ref: ImageRef, policy: Policy, run: _Run) -> None:
    config = policy.registry
    digest, manifest, searches = _learnt(ref, run)
    subjects = _subjects(digest, manifest)
    out.steps.append(_auth(run.client, policy, ref, run.trace))
    out.steps.append(_digest_step(ref, digest, manifest))
    out.steps.append(_platform_step(manifest, str(config.wanted_platform)))
    run.trace.phase = "listing"
    listings: dict[str, tuple[str, list[Descriptor], bool] | str] = {}
    for subject, _ in subjects:
        try:
            listings[subject] = await _list_referrers(run.client, ref.repository, subject)
        except RegistryError as err:
            listings[subject] = clean(err.reason)
    out.steps.append(_referrers_step(subjects, searches, listings))
    conversion = run.result.conversion if run.result else None
    out.steps.append(_conversion_step(run.pool.is_acr(ref.registry), run.result, conversion))
    verdict = out.verdict
    assert verdict is not None and out.lookup_seconds is not None
    reason = f": {verdict.reason}" if verdict.reason else ""
    step = out.add("verdict", verdict.verdict.value + reason)
    if run.error is not None:
        step.details.append(f"the look-up failed: {clean(run.error)}")
    if verdict.verdict is Verdict.NOT_STREAMABLE:
        step.details.append(f"to ask ACR for one: {fix_command(ref, policy.acr_registry_names)}")
    deadline, took = config.deadline_seconds, out.lookup_seconds
    within = (
        f"within the {deadline:g} s admission deadline"
        if took <= deadline
        else f"past the {deadline:g} s admission deadline: the webhook would answer "
        "unknown (registry timed out) and finish the look-up in the background"
    )
    lookups = [r for r in run.trace.requests if r.phase == "look-up"]
    timing = out.add(
        "time", f"{took:.3f} s, {len(lookups)} registry requests, cold cache ({within})"
    )
    if run.trace.circuit:
        timing.details.append("circuit: " + " -> ".join(run.trace.circuit))


# ---- output -------------------------------------------------------------------------------


def to_text(out: Explanation) -> str:
    width = max(len(s.name) for s in [*out.steps, Step("requests", "")]) + 2
    lines = [f"{'image'.ljust(width)}{out.image}"]
    for step in out.steps:
        lines.append(f"{step.name.ljust(width)}{step.text}")
        lines.extend(f"{''.ljust(width)}  {d}" for d in step.details)
    if out.requests:
        lines.append("requests")
        for r in out.requests:
            tag = "" if r.phase == "look-up" else f"  [{r.phase}]"
            lines.append(f"  {r.method} {r.url} -> {r.status} ({r.ms:.1f} ms){tag}")
    return "\n".join(lines)


def to_json(out: Explanation) -> str:
    verdict = out.verdict
    doc = {
        "image": out.image,
        "verdict": verdict.verdict.value if verdict else None,
        "reason": verdict.reason if verdict else None,
        "digest": verdict.digest if verdict else None,
        "artifact": verdict.artifact_digest if verdict else None,
        "lookupSeconds": round(out.lookup_seconds, 4) if out.lookup_seconds is not None else None,
        "steps": [{"name": s.name, "text": s.text, "details": s.details} for s in out.steps],
        "webhook": {
            "allowed": out.decision.allowed,
            "warnings": out.decision.warnings,
            "denials": out.decision.denials,
        }
        if out.decision
        else None,
        "requests": [
            {
                "method": r.method,
                "url": r.url,
                "status": r.status,
                "ms": round(r.ms, 2),
                "phase": r.phase,
            }
            for r in out.requests
        ],
    }
    return json.dumps(doc, indent=2)
