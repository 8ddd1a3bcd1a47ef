"""`streamgate scan` on an in-memory cluster: what is judged and what is left out, the same
core's verdicts, totals, the three outputs, registry politeness (each image once, bounded
concurrency, rate limits waited out), progress, exit codes. The real control plane and
registry: tests/e2e/test_scan_explain_e2e.py."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
import yaml

from app.cli.main import EXIT_OK, EXIT_USAGE, main
from app.cli.scan import (
    Progress,
    Report,
    ScanError,
    ScanVerdicts,
    StaticModes,
    read_cluster,
    scan,
    scan_registry_config,
    to_json,
    to_markdown,
    to_openreports,
    to_policyreport,
    to_table,
)
from app.core.images import ImageRef, parse_image
from app.core.policy import Mode, parse_policy
from app.core.verdicts import ImageVerdict, Verdict
from app.core.workloads import KIND_ORDER
from app.webhook.serve import ServeSettings, build_admission
from tests.memory import MemoryVerdicts

ACR = "myreg.azurecr.io"
AKS = "kubernetes.azure.com/"
GOOD = f"{ACR}/good:v1"
PLAIN = f"{ACR}/plain:v1"
PINNED = f"{ACR}/good@sha256:{'a' * 64}"


def node(pool: str, arch: str = "amd64") -> dict[str, Any]:
    name = f"aks-{pool}-vmss000000"
    return {
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/arch": arch,
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                AKS + "agentpool": pool,
                AKS + "os-sku": "Ubuntu",
                AKS + "artifactstreaming-enabled": "true",
            },
        },
        "spec": {},
        "status": {
            "nodeInfo": {
                "architecture": arch,
                "operatingSystem": "linux",
                "kubeletVersion": "v1.34.4",
            }
        },
    }


def meta(name: str, ns: str, owner: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "namespace": ns, **extra}
    if owner:
        out["ownerReferences"] = [
            {"apiVersion": "v1", "kind": owner, "name": "x", "uid": "u", "controller": True}
        ]
    return out


def spec(*images: str, **extra: Any) -> dict[str, Any]:
    return {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)], **extra}


def templated(name: str, ns: str, *images: str, owner: str | None = None, **extra: Any):
    return {
        "metadata": meta(name, ns, owner),
        "spec": {"template": {"spec": spec(*images, **extra)}},
    }


class FakeReader:
    def __init__(self) -> None:
        self.items: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KIND_ORDER}
        self.ns: dict[str, dict[str, Any]] = {}
        self.node_list = [node("streamy"), node("arm", "arm64")]
        self.forbidden: set[str] = set()
        self.calls: list[tuple[str, str | None]] = []

    def add_ns(self, name: str, mode: str | None = None) -> None:
        labels = {"streamgate.io/mode": mode} if mode else {}
        self.ns[name] = {"metadata": {"name": name, "labels": labels}}

    def objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        self.calls.append((kind, namespace))
        if kind in self.forbidden:
            raise _Forbidden()
        items = self.items[kind]
        return [i for i in items if namespace is None or i["metadata"]["namespace"] == namespace]

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self.ns.get(name)

    def namespaces(self) -> list[dict[str, Any]]:
        return list(self.ns.values())

    def nodes(self) -> list[dict[str, Any]]:
        if "nodes" in self.forbidden:
            raise _Forbidden()
        return self.node_list

    def runtime_classes(self) -> list[dict[str, Any]]:
        return []


class _Forbidden(Exception):
    status = 403
    reason = "Forbidden"


def cluster() -> FakeReader:
    r = FakeReader()
    for ns, mode in (("shop", None), ("batch", "enforce"), ("kube-system", None), ("lab", "off")):
        r.add_ns(ns, mode)
    r.items["Deployment"] += [
        templated("web", "shop", GOOD),
        templated("legacy", "shop", PLAIN, "registry.example.com/redis:7"),
        templated("dns", "kube-system", PLAIN),
        templated("toy", "lab", PLAIN),
    ]
    # the Deployment's ReplicaSet and its pods: judged through the Deployment
    r.items["ReplicaSet"] += [templated("web-1", "shop", GOOD, owner="Deployment")]
    r.items["Pod"] += [
        {"metadata": meta("web-1-a", "shop", "ReplicaSet"), "spec": spec(GOOD)},
        {"metadata": meta("debug", "shop"), "spec": spec("busybox:1.36")},
        # a pod made by something streamgate does not judge (an operator): judged itself
        {"metadata": meta("op-1", "shop", "Database"), "spec": spec(PLAIN)},
    ]
    r.items["StatefulSet"] += [
        templated("db", "shop", GOOD, nodeSelector={AKS + "agentpool": "arm"})
    ]
    r.items["CronJob"] += [
        {
            "metadata": meta("nightly", "batch"),
            "spec": {"jobTemplate": {"spec": {"template": {"spec": spec(PINNED)}}}},
        }
    ]
    r.items["Job"] += [
        templated("nightly-1", "batch", PINNED, owner="CronJob"),
        templated("migrate", "batch", f"{ACR}/down:v1"),
    ]
    r.items["DaemonSet"] += [{"metadata": meta("broken", "shop"), "spec": {}}]  # no template
    r.items["ReplicationController"] += [templated("old", "batch", GOOD)]
    return r


def answers() -> MemoryVerdicts:
    return MemoryVerdicts(
        {
            PLAIN: ImageVerdict(Verdict.NOT_STREAMABLE, "no streaming artifact"),
            f"{ACR}/down:v1": ImageVerdict(Verdict.UNKNOWN, "registry unavailable"),
        }
    )


async def run_scan(reader: FakeReader, namespaces=(), source=None, **policy: Any) -> Report:
    # The cluster's "lab" namespace opts out with the label streamgate.io/mode=off, which a
    # policy must allow (namespaceLabel.allowRelax); the default is tested on its own below.
    pol = parse_policy({"namespaceLabel": {"allowRelax": True}, **policy})
    snapshot = read_cluster(reader, pol, namespaces=namespaces)
    verdicts = ScanVerdicts(source or answers())
    admission = build_admission(
        ServeSettings(),
        verdicts=verdicts,
        placement=snapshot.placement,
        namespaces=StaticModes(snapshot.modes),
        policy=pol,
    )
    return await scan(snapshot, admission, verdicts)


def rows(report: Report) -> dict[str, tuple[str, str]]:
    return {f"{r.kind} {r.namespace}/{r.name}": (r.mode, r.status) for r in report.rows}


async def test_every_workload_once_with_the_cores_verdicts() -> None:
    report = await run_scan(cluster())
    assert rows(report) == {
        "Deployment shop/web": ("warn", "streamable"),
        "Deployment shop/legacy": ("warn", "not-streamable"),
        "StatefulSet shop/db": ("warn", "streamable"),
        "DaemonSet shop/broken": ("warn", "error"),
        "Pod shop/debug": ("warn", "not-acr"),
        "Pod shop/op-1": ("warn", "not-streamable"),
        "CronJob batch/nightly": ("enforce", "streamable"),
        "Job batch/migrate": ("enforce", "unknown"),
        "ReplicationController batch/old": ("enforce", "streamable"),
        "Deployment kube-system/dns": ("warn", "skipped"),
        "Deployment lab/toy": ("off", "skipped"),
    }
    assert report.covered == {"ReplicaSet": 1, "Pod": 1, "Job": 1}
    by_default = await run_scan(cluster(), namespaceLabel={"allowRelax": False})
    assert rows(by_default)["Deployment lab/toy"] == ("warn", "not-streamable")
    # sorted by namespace, then controllers before pods
    assert [(r.namespace, r.kind) for r in report.rows][:3] == [
        ("batch", "CronJob"),
        ("batch", "Job"),
        ("batch", "ReplicationController"),
    ]


async def test_totals_count_workloads_pins_and_pools() -> None:
    report = await run_scan(cluster())
    totals = report.totals()
    assert totals == {
        "workloads": 11,
        "namespaces": 4,
        "streamable": 4,
        "not-streamable": 2,
        "unknown": 1,
        "not-acr": 1,
        "skipped": 2,
        "error": 1,
        "digestPinned": 1,  # the CronJob
        "poolsCannotStream": 1,  # db only fits the arm pool
        "poolsMayNotStream": 6,  # no nodeSelector: streamy or arm
        "willStream": 0,
    }
    assert report.image_totals() == {"streamable": 2, "not-streamable": 1, "unknown": 1}
    db = next(r for r in report.rows if r.name == "db")
    assert db.pools_text == "0/1" and db.pools_cannot_stream
    web = next(r for r in report.rows if r.name == "web")
    assert web.pools_text == "1/2" and web.pools_may_not_stream and not web.will_stream


async def test_will_stream_needs_tag_pull_and_streaming_pools_only() -> None:
    reader = cluster()
    reader.node_list = [node("streamy")]  # every pool streams now
    reader.items["Deployment"].append(
        templated("secret", "shop", GOOD, imagePullSecrets=[{"name": "acr"}])
    )
    report = await run_scan(reader)
    streams = sorted(r.name for r in report.rows if r.will_stream)
    # not nightly (digest-pinned: AKS streams tag pulls only), not secret (pull secrets),
    # not db (its nodeSelector fits no pool now)
    assert streams == ["old", "web"]
    assert report.totals()["willStream"] == 2


async def test_each_image_is_looked_up_once() -> None:
    source = answers()
    await run_scan(cluster(), source=source)
    assert sorted(source.calls) == sorted({GOOD, PLAIN, PINNED, f"{ACR}/down:v1"})


async def test_namespaces_limit_the_scan_and_an_unknown_one_is_an_error() -> None:
    reader = cluster()
    report = await run_scan(reader, namespaces=["batch"])
    assert {r.namespace for r in report.rows} == {"batch"}
    assert all(ns == "batch" for _, ns in reader.calls)
    with pytest.raises(ScanError, match="namespace nope not found"):
        await run_scan(cluster(), namespaces=["nope"])


async def test_unreadable_kinds_and_nodes_become_notes() -> None:
    reader = cluster()
    reader.forbidden |= {"CronJob", "nodes"}
    report = await run_scan(reader)
    assert "CronJob batch/nightly" not in rows(report)
    assert any("CronJob not listed: HTTP 403 Forbidden" in n for n in report.notes)
    assert not report.pools_known
    assert next(r for r in report.rows if r.name == "web").pools_text == "?"
    assert "Node pools: unknown" in to_table(report)


async def test_table_markdown_and_json() -> None:
    report = await run_scan(cluster())
    table = to_table(report)
    header = table.splitlines()[0].split()
    assert header == [
        "NAMESPACE",
        "KIND",
        "NAME",
        "MODE",
        "VERDICT",
        "IMAGES",
        "PINNED",
        "POOLS",
        "NOTES",
    ]
    legacy = next(line.split() for line in table.splitlines() if " legacy " in line)
    assert legacy[:5] == ["shop", "Deployment", "legacy", "warn", "not-streamable"]
    assert legacy[5:] == ["0/2", "-", "1/2", "poolsMayNotStream,", "notStreamable"]
    assert "    warn: c0: myreg.azurecr.io/plain:v1 has no streaming artifact" in table
    assert "  Deployment shop/legacy" in table
    assert "Totals: 11 workloads in 4 namespaces (all namespaces)" in table
    assert "By namespace:" in table
    assert "Left out, judged through their controllers: 1 Job, 1 Pod, 1 ReplicaSet" in table

    md = to_markdown(report)
    assert md.startswith("# streamgate scan\n")
    assert "## shop" in md and "| not streamable | 2 |" in md
    assert "| Deployment | legacy | warn | not-streamable | 0/2 | - | 1/2 |" in md

    doc = json.loads(to_json(report))
    assert doc["totals"]["streamable"] == 4
    legacy = next(w for w in doc["workloads"] if w["name"] == "legacy")
    assert [i["verdict"] for i in legacy["images"]] == ["not-streamable", "not-acr"]
    assert legacy["pools"]["notStreaming"] == ["arm"]
    assert {i["image"] for i in doc["images"]} == {GOOD, PLAIN, PINNED, f"{ACR}/down:v1"}


async def test_empty_scope_says_so() -> None:
    reader = FakeReader()
    reader.add_ns("empty")
    report = await run_scan(reader, namespaces=["empty"])
    assert to_table(report).startswith("no workloads found in namespaces empty")


# ---- registry politeness --------------------------------------------------------------


class Gate:
    """A source that counts how many look-ups run at once, per registry."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    async def verdict(self, ref: ImageRef) -> ImageVerdict:
        self.running[ref.registry] = self.running.get(ref.registry, 0) + 1
        self.peak[ref.registry] = max(self.peak.get(ref.registry, 0), self.running[ref.registry])
        await asyncio.sleep(0.01)
        self.running[ref.registry] -= 1
        return ImageVerdict(Verdict.STREAMABLE)


async def test_concurrency_is_bounded_per_registry() -> None:
    gate = Gate()
    verdicts = ScanVerdicts(gate, concurrency=3)
    refs = [
        parse_image(f"{host}/app{i}:v1")
        for host in ("a.azurecr.io", "b.azurecr.io")
        for i in range(12)
    ]
    seen: list[tuple[int, int]] = []
    found = await verdicts.prefetch(refs, lambda done, total: seen.append((done, total)))
    assert len(found) == 24
    assert gate.peak == {"a.azurecr.io": 3, "b.azurecr.io": 3}
    assert seen[0] == (0, 24) and seen[-1] == (24, 24)


class RateLimitedOnce:
    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.calls = 0

    async def verdict(self, ref: ImageRef) -> ImageVerdict:
        self.calls += 1
        if self.calls == 1:
            return ImageVerdict(Verdict.UNKNOWN, self.reason)
        return ImageVerdict(Verdict.STREAMABLE)


@pytest.mark.parametrize(
    ("reason", "wait"),
    [
        ("registry rate-limited; retry in 7 s", 7.0),
        ("registry rate-limited", 5.0),
        ("registry unavailable (recent failures; retry in 30 s)", 30.0),
        ("registry rate-limited; retry in 900 s", 60.0),  # bounded
    ],
)
async def test_rate_limits_are_waited_out(reason: str, wait: float) -> None:
    source = RateLimitedOnce(reason)
    slept: list[float] = []
    waits: list[tuple[str, float]] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    verdicts = ScanVerdicts(source, sleep=sleep, on_wait=lambda r, s: waits.append((r, s)))
    verdict = await verdicts.verdict(parse_image(GOOD))
    assert verdict.verdict is Verdict.STREAMABLE
    assert slept == [wait] and waits == [(ACR, wait)] and source.calls == 2


async def test_rate_limit_gives_up_after_the_attempts() -> None:
    class Always:
        calls = 0

        async def verdict(self, ref: ImageRef) -> ImageVerdict:
            self.calls += 1
            return ImageVerdict(Verdict.UNKNOWN, "registry rate-limited; retry in 1 s")

    async def sleep(seconds: float) -> None:
        return None

    source = Always()
    verdict = await ScanVerdicts(source, attempts=3, sleep=sleep).verdict(parse_image(GOOD))
    assert verdict.verdict is Verdict.UNKNOWN and source.calls == 3


async def test_other_unknowns_are_not_retried() -> None:
    source = MemoryVerdicts({GOOD: ImageVerdict(Verdict.UNKNOWN, "registry timed out")})
    verdict = await ScanVerdicts(source).verdict(parse_image(GOOD))
    assert verdict.reason == "registry timed out" and source.calls == [GOOD]


def test_scan_waits_longer_for_registries_than_admission() -> None:
    config = scan_registry_config(parse_policy({}).registry)
    assert config.deadline_seconds == 20.0 and config.background_seconds >= 20.0


# ---- progress and the command ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_quiet_for_short_runs_and_throttled_for_long_ones() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, interval=5.0, after=1.0, clock=clock)
    progress.update("listing", 0, 8)
    progress.update("listing", 8, 8)  # began and ended unseen: stays unseen
    progress.update("looking up images", 1, 10)
    assert out.getvalue() == ""  # under a second: nothing
    clock.now = 2.0
    progress.update("looking up images", 2, 10)
    clock.now = 3.0
    progress.update("looking up images", 3, 10)  # throttled
    progress.update("looking up images", 10, 10)  # a shown phase shows its end
    assert out.getvalue().splitlines() == [
        "scan: looking up images 2/10",
        "scan: looking up images 10/10",
    ]
    progress.note("r.azurecr.io is rate-limiting or failing: waiting 7s")
    assert out.getvalue().endswith("waiting 7s\n")
    silent = io.StringIO()
    Progress(silent, enabled=False).note("x")
    assert silent.getvalue() == ""


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, clock = Tty(), Clock()
    progress = Progress(out, clock=clock)
    clock.now = 1.5
    progress.update("judging workloads", 5, 10)
    clock.now = 2.0
    progress.update("judging workloads", 10, 10)
    assert out.getvalue() == (
        "\r\033[Kscan: judging workloads 5/10\r\033[Kscan: judging workloads 10/10\n"
    )


def test_command_usage_errors_exit_2(tmp_path, capsys) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    assert main(["scan", "--kubeconfig", str(missing)]) == EXIT_USAGE
    assert "cannot load a kubeconfig" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["scan", "--output", "yaml"])
    assert exit_.value.code == EXIT_USAGE


def test_command_prints_the_report(monkeypatch, capsys) -> None:
    reader = cluster()
    monkeypatch.setattr("app.cli.main.kube_api", lambda kubeconfig, context=None: object())
    monkeypatch.setattr("app.cli.main.KubeReader", lambda api: reader)
    monkeypatch.setattr(
        "app.cli.main.RegistryVerdictSource",
        lambda config, acr_hosts, aad_hosts: _Closing(answers()),
    )
    assert main(["scan", "-n", "shop,batch", "-o", "json", "-q"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["scope"] == ["shop", "batch"]
    assert doc["totals"]["workloads"] == 9


class _Closing:
    def __init__(self, inner: MemoryVerdicts) -> None:
        self.inner = inner

    async def verdict(self, ref: ImageRef) -> ImageVerdict:
        return await self.inner.verdict(ref)

    async def aclose(self) -> None:
        return None


def test_modes_come_from_namespace_labels() -> None:
    modes = StaticModes({"batch": Mode.ENFORCE})
    assert modes.mode("batch") is Mode.ENFORCE and modes.mode("shop") is None


async def test_policyreport_output_has_each_namespaces_results() -> None:
    report = await run_scan(cluster())
    docs = list(yaml.safe_load_all(to_policyreport(report)))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("PolicyReport", "streamgate-batch"),
        ("PolicyReport", "streamgate-kube-system"),
        ("PolicyReport", "streamgate-lab"),
        ("PolicyReport", "streamgate-shop"),
    ]
    shop = docs[-1]
    results = {
        (r["resources"][0]["kind"], r["resources"][0]["name"], r["rule"]): r
        for r in shop["results"]
    }
    assert len(results) == len(shop["results"]) == 6 * 4  # six workloads in shop, 4 rules
    legacy = results[("Deployment", "legacy", "image-streamable")]
    assert legacy["result"] == "fail"
    assert legacy["message"].startswith("c0: myreg.azurecr.io/plain:v1 has no streaming artifact")
    assert legacy["properties"]["fix"] == (
        "az acr artifact-streaming create -n myreg --image plain:v1"
    )
    assert results[("Deployment", "legacy", "pools-can-stream")]["result"] == "warn"
    assert results[("Deployment", "web", "image-streamable")]["result"] == "pass"
    assert results[("DaemonSet", "broken", "digest-pin")]["result"] == "error"
    assert results[("Pod", "debug", "image-streamable")]["result"] == "skip"
    lab = docs[2]
    assert {r["result"] for r in lab["results"]} == {"skip"}  # mode off
    batch = {(r["resources"][0]["name"], r["rule"]): r["result"] for r in docs[0]["results"]}
    assert batch[("migrate", "image-streamable")] == "error"  # the registry was down
    assert batch[("nightly", "digest-pin")] == "warn"
    orep = list(yaml.safe_load_all(to_openreports(report)))
    assert [d["kind"] for d in orep] == ["Report"] * 4
    assert orep[-1]["results"] == shop["results"]


def test_command_writes_policyreports_for_kubectl(monkeypatch, capsys) -> None:
    reader = cluster()
    reader.forbidden.add("CronJob")
    monkeypatch.setattr("app.cli.main.kube_api", lambda kubeconfig, context=None: object())
    monkeypatch.setattr("app.cli.main.KubeReader", lambda api: reader)
    monkeypatch.setattr(
        "app.cli.main.RegistryVerdictSource",
        lambda config, acr_hosts, aad_hosts: _Closing(answers()),
    )
    assert main(["scan", "-n", "shop", "-o", "policyreport", "-q"]) == EXIT_OK
    out = capsys.readouterr()
    assert out.out.startswith("---\napiVersion: wgpolicyk8s.io/v1alpha2\nkind: PolicyReport\n")
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(out.out)] == ["streamgate-shop"]
    assert "streamgate scan: note: CronJob not listed in shop: HTTP 403 Forbidden" in out.err
    reader.add_ns("empty")
    assert main(["scan", "-n", "empty", "-o", "openreports", "-q"]) == EXIT_OK
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.endswith("\nstreamgate scan: no workloads found: no reports to write\n")
