"""The reporter's rounds with an in-memory writer and elector (the real API:
tests/e2e/test_reporter_e2e.py): what is written when, coalescing, leadership, resuming."""

from __future__ import annotations

from typing import Any

from app.cluster.policyreports import content_key
from app.cluster.workloads import WorkloadStore
from app.core.policy import parse_policy
from app.core.verdicts import ImageVerdict, Verdict
from app.webhook.reporter import Reporter, ReporterSettings
from app.webhook.serve import ServeSettings, build_admission
from tests.memory import MemoryVerdicts

ACR = "myreg.azurecr.io"


class NotFound(Exception):
    status = 404
    reason = "Not Found"


class MemoryWriter:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.known: dict[tuple[str, str], str] = {}
        self.writes = 0
        self.deletes = 0
        self.resumes = 0
        self.fail_resume: Exception | None = None

    def resume(self) -> None:
        if self.fail_resume is not None:
            raise self.fail_resume
        self.resumes += 1
        self.known = {k: content_key(v) for k, v in self.objects.items()}

    def names(self, namespace: str) -> set[str]:
        return {n for ns, n in self.known if ns == namespace}

    def namespaces(self) -> set[str]:
        return {ns for ns, _ in self.known}

    def apply(self, doc: dict[str, Any]) -> bool:
        key = (doc["metadata"]["namespace"], doc["metadata"]["name"])
        if self.known.get(key) == content_key(doc):
            return False
        self.objects[key] = doc
        self.known[key] = content_key(doc)
        self.writes += 1
        return True

    def delete(self, namespace: str, name: str) -> None:
        self.objects.pop((namespace, name), None)
        self.known.pop((namespace, name), None)
        self.deletes += 1


class Elector:
    def __init__(self, leader: bool = True) -> None:
        self.leader = leader
        self.released = False

    def step(self) -> bool:
        return self.leader

    def is_leader(self) -> bool:
        return self.leader

    def release(self) -> None:
        self.released = True


def deployment(name: str, ns: str = "shop", image: str = f"{ACR}/web:1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
    }


def reporter(
    elector: Elector | None = None, **settings: Any
) -> tuple[Reporter, WorkloadStore, MemoryWriter, list[float]]:
    verdicts = MemoryVerdicts({f"{ACR}/plain:1": ImageVerdict(Verdict.NOT_STREAMABLE)})
    admission = build_admission(ServeSettings(), verdicts=verdicts, policy=parse_policy({}))
    store = WorkloadStore()
    writer = MemoryWriter()
    now = [1_000.0]
    rep = Reporter(
        admission,
        store,
        writer,
        elector,
        settings=ReporterSettings(**{"min_write_interval": 0.0, **settings}),
        wall=lambda: now[0],
        clock=lambda: now[0],
    )
    return rep, store, writer, now


def results(writer: MemoryWriter, ns: str = "shop") -> dict[tuple[str, str], str]:
    doc = writer.objects[(ns, f"streamgate-{ns}")]
    return {(r["resources"][0]["name"], r["rule"]): r["result"] for r in doc["results"]}


async def test_a_round_writes_each_namespace_once_and_nothing_when_nothing_changed():
    rep, store, writer, now = reporter()
    store.replace("Deployment", [deployment("web"), deployment("db", ns="data")])
    await rep.round()
    assert writer.writes == 2 and set(writer.objects) == {
        ("shop", "streamgate-shop"),
        ("data", "streamgate-data"),
    }
    assert results(writer)[("web", "image-streamable")] == "pass"
    first = dict(writer.objects[("shop", "streamgate-shop")])
    now[0] += 400  # past the resync: everything judged again, nothing written
    await rep.round()
    assert writer.writes == 2
    assert writer.objects[("shop", "streamgate-shop")] == first  # timestamps kept


async def test_changes_in_one_namespace_coalesce_into_one_write():
    rep, store, writer, now = reporter()
    store.replace("Deployment", [deployment("web")])
    await rep.round()
    for i in range(50):
        store.event("Deployment", "ADDED", deployment(f"w{i}", image=f"{ACR}/plain:1"))
    now[0] += 1
    await rep.round()
    assert writer.writes == 2
    got = results(writer)
    assert len(got) == 51 * 4 and got[("w7", "image-streamable")] == "fail"
    # a changed result gets the round's timestamp; unchanged ones keep theirs
    store.event("Deployment", "MODIFIED", deployment("w7"))
    now[0] += 5
    await rep.round()
    doc = writer.objects[("shop", "streamgate-shop")]
    stamps = {
        (r["resources"][0]["name"], r["rule"]): r["timestamp"]["seconds"] for r in doc["results"]
    }
    assert stamps[("w7", "image-streamable")] == 1006 and stamps[("w8", "image-streamable")] == 1001


async def test_a_deleted_workload_goes_and_an_empty_namespace_loses_its_report():
    rep, store, writer, _ = reporter()
    store.replace("Deployment", [deployment("web"), deployment("db")])
    await rep.round()
    store.event("Deployment", "DELETED", deployment("db"))
    await rep.round()
    assert {k[0] for k in results(writer)} == {"web"}
    store.event("Deployment", "DELETED", deployment("web"))
    await rep.round()
    assert writer.objects == {} and writer.deletes == 1


async def test_only_the_leader_writes_and_a_new_leader_resumes_from_the_api():
    elector = Elector(leader=False)
    rep, store, writer, _ = reporter(elector)
    store.replace("Deployment", [deployment("web")])
    await rep.round()
    assert writer.writes == 0 and writer.resumes == 0
    # another replica wrote a report for a namespace that has no workload any more
    writer.objects[("gone", "streamgate-gone")] = {"metadata": {}, "results": []}
    elector.leader = True
    await rep.round()
    assert writer.resumes == 1
    assert set(writer.objects) == {("shop", "streamgate-shop")}  # rebuilt, stale one deleted
    assert writer.deletes == 1


async def test_a_missing_crd_is_said_once_and_the_reporter_keeps_trying(caplog):
    rep, store, writer, _ = reporter()
    store.replace("Deployment", [deployment("web")])
    writer.fail_resume = NotFound()
    await rep.round()
    await rep.round()
    said = [r.getMessage() for r in caplog.records if "cannot list" in r.getMessage()]
    assert said == [
        "reports: cannot list the existing reports: the wgpolicyk8s.io/v1alpha2 CRD is not "
        "installed (HTTP 404); install it (chart value reports.installCRDs, or the CRDs of "
        "Kyverno or Policy Reporter); retrying"
    ]
    writer.fail_resume = None
    await rep.round()
    assert writer.writes == 1


async def test_the_scope_leaves_other_namespaces_reports_alone():
    rep, store, writer, _ = reporter(namespaces=("shop",))
    writer.objects[("data", "streamgate-data")] = {"metadata": {}, "results": []}
    store.replace("Deployment", [deployment("web")])
    await rep.round()
    assert ("data", "streamgate-data") in writer.objects and writer.deletes == 0


async def test_a_namespace_written_a_moment_ago_waits_for_the_interval():
    rep, store, writer, now = reporter(min_write_interval=10.0)
    store.replace("Deployment", [deployment("web")])
    await rep.round()
    assert writer.writes == 1
    for i in range(5):  # steady churn: one change a second
        store.event("Deployment", "ADDED", deployment(f"w{i}"))
        now[0] += 1
        await rep.round()
    assert writer.writes == 1  # deferred, still marked
    now[0] += 6
    await rep.round()
    assert writer.writes == 2 and len(results(writer)) == 6 * 4
