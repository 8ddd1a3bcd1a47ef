import json
from dataclasses import replace

import pytest

from app.core.evaluate import evaluate
from app.core.images import parse_image
from app.core.messages import fix_command
from app.core.plan import plan
from app.core.policy import Mode, parse_policy
from app.core.pools import UNKNOWN_PLACEMENT, Placement, PoolFit, Streaming
from app.core.reports import (
    DIGEST_PIN,
    IMAGE_STREAMABLE,
    MANAGED_BY,
    OPENREPORTS,
    POOLS_CAN_STREAM,
    PULL_SECRETS,
    RULES,
    WGPOLICY,
    Outcome,
    Subject,
    namespace_reports,
    report_name,
    reports,
    workload_results,
)
from app.core.verdicts import ImageVerdict, Verdict
from app.core.workloads import workload

ACR = "myreg.azurecr.io"
D = "sha256:" + "b" * 64
STREAM = ImageVerdict(Verdict.STREAMABLE, digest=D)
NOPE = ImageVerdict(Verdict.NOT_STREAMABLE)
UNKNOWN = ImageVerdict(Verdict.UNKNOWN, "registry timed out")
OK_POOL = PoolFit("streamub", Streaming.YES)
ARM_POOL = PoolFit("arm", Streaming.NO, ("arm64",))
WEB = Subject("Deployment", "shop", "web", "uid-1")


def decide(
    *images,
    verdicts=None,
    pull_secrets=False,
    placement=UNKNOWN_PLACEMENT,
    mode=Mode.WARN,
    policy=None,
    annotations=None,
):
    spec = {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]}
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": "acr"}]
    obj = {
        "metadata": {"name": "web", "annotations": annotations or {}},
        "spec": {"template": {"metadata": {}, "spec": spec}},
    }
    pol = parse_policy(policy or {})
    planned = plan(workload("apps", "Deployment", obj), pol)
    got = {ref: (verdicts or {}).get(ref.raw, STREAM) for ref in planned.to_check}
    decision = evaluate(planned, mode=mode, policy=pol, verdicts=got, placement=placement)
    return decision, pol


def by_rule(results):
    assert [r.rule for r in results] == list(RULES)
    return {r.rule: r for r in results}


def test_a_workload_that_streams_passes_every_rule():
    d, pol = decide(f"{ACR}/web:1", placement=Placement(True, (OK_POOL,)))
    got = by_rule(workload_results(WEB, d, pol, timestamp=1700000000))
    assert {r: x.outcome for r, x in got.items()} == dict.fromkeys(RULES, Outcome.PASS)
    assert got[IMAGE_STREAMABLE].message == "the ACR image has a streaming artifact"
    assert got[POOLS_CAN_STREAM].message == "every node pool it fits can stream (1/1 can stream)"
    assert got[DIGEST_PIN].properties == {"mode": "warn"}


def test_a_deny_rule_fails_in_warn_mode_and_carries_the_message_and_the_fix():
    image = f"{ACR}/web:1"
    d, pol = decide(image, verdicts={image: NOPE})
    assert d.allowed  # warn mode: admission only warned
    got = by_rule(workload_results(WEB, d, pol))
    r = got[IMAGE_STREAMABLE]
    assert r.outcome is Outcome.FAIL
    assert r.message == d.warnings[0]  # the same words kubectl apply printed
    assert r.properties["fix"] == fix_command(parse_image(image))
    assert got[POOLS_CAN_STREAM].outcome is Outcome.SKIP  # no node inventory
    assert "node pools unknown" in got[POOLS_CAN_STREAM].message


def test_audit_mode_still_reports_what_the_policy_wants():
    image = f"{ACR}/web:1"
    d, pol = decide(image, verdicts={image: NOPE}, mode=Mode.AUDIT)
    r = by_rule(workload_results(WEB, d, pol))[IMAGE_STREAMABLE]
    assert (r.outcome, r.properties["mode"]) == (Outcome.FAIL, "audit")


def test_warn_rules_warn_and_a_registry_failure_is_an_error():
    pinned = f"{ACR}/web:1@{D}"
    d, pol = decide(pinned, pull_secrets=True)
    got = by_rule(workload_results(WEB, d, pol))
    assert got[DIGEST_PIN].outcome is Outcome.WARN
    assert got[DIGEST_PIN].properties["fix"] == "pull it by tag (web:1)"
    assert got[PULL_SECRETS].outcome is Outcome.WARN
    assert "--attach-acr" in got[PULL_SECRETS].properties["fix"]
    image = f"{ACR}/web:1"
    d, pol = decide(image, verdicts={image: UNKNOWN})
    r = by_rule(workload_results(WEB, d, pol))[IMAGE_STREAMABLE]
    assert r.outcome is Outcome.ERROR
    assert "registry timed out" in r.message


def test_the_worst_problem_of_a_rule_wins_and_every_message_is_kept():
    a, b = f"{ACR}/a:1", f"{ACR}/b:1"
    d, pol = decide(a, b, verdicts={a: NOPE, b: UNKNOWN})
    r = by_rule(workload_results(WEB, d, pol))[IMAGE_STREAMABLE]
    assert r.outcome is Outcome.FAIL
    assert len(r.message.split("\n")) == 2


def test_pools_that_cannot_stream_fail_with_the_pool_and_its_reason():
    d, pol = decide(f"{ACR}/web:1", placement=Placement(True, (ARM_POOL,)))
    r = by_rule(workload_results(WEB, d, pol))[POOLS_CAN_STREAM]
    assert r.outcome is Outcome.FAIL
    assert "arm (arm64)" in r.message
    assert r.properties["fix"] == "target a streaming pool"


def test_a_rule_the_policy_ignores_is_skipped_not_passed():
    d, pol = decide(f"{ACR}/web:1@{D}", policy={"rules": {"digestPinned": "ignore"}})
    r = by_rule(workload_results(WEB, d, pol))[DIGEST_PIN]
    assert (r.outcome, r.message) == (Outcome.SKIP, "switched off by the policy (ignore)")


def test_no_acr_image_skips_every_rule():
    d, pol = decide("nginx:1.27")
    got = workload_results(WEB, d, pol)
    assert {r.outcome for r in got} == {Outcome.SKIP}
    assert got[0].message == "no image from ACR: nothing to stream"


def test_an_exempt_or_unjudged_workload_is_skipped_and_an_unreadable_one_is_an_error():
    d, pol = decide(f"{ACR}/web:1", mode=Mode.OFF)
    got = workload_results(WEB, d, pol)
    assert {(r.outcome, r.message) for r in got} == {(Outcome.SKIP, "not judged: mode off")}
    got = workload_results(WEB, None, pol, error="spec.template: not an object")
    assert {(r.outcome, r.message) for r in got} == {
        (Outcome.ERROR, "not judged: spec.template: not an object")
    }


def test_control_characters_from_an_image_name_are_escaped():
    image = f"{ACR}/web:1\x1b[31m"
    d, pol = decide(image)
    for r in workload_results(WEB, d, pol):
        assert "\x1b" not in r.message


def results_for(namespace, names, kind="Deployment", timestamp=5):
    d, pol = decide(f"{ACR}/web:1")
    out = []
    for name in names:
        out.extend(workload_results(Subject(kind, namespace, name), d, pol, timestamp=timestamp))
    return out


def test_a_namespace_report_has_the_schema_the_summary_and_a_stable_order():
    results = results_for("shop", ["b", "a"]) + results_for("shop", ["z"], kind="Pod")
    (doc,) = namespace_reports("shop", list(reversed(results)))
    assert doc["apiVersion"] == WGPOLICY and doc["kind"] == "PolicyReport"
    assert doc["metadata"] == {"name": "streamgate-shop", "namespace": "shop", "labels": MANAGED_BY}
    assert doc["summary"] == {"pass": 9, "fail": 0, "warn": 0, "error": 0, "skip": 3}
    names = [
        (r["resources"][0]["kind"], r["resources"][0]["name"], r["rule"]) for r in doc["results"]
    ]
    assert names[:5] == [("Deployment", "a", rule) for rule in RULES] + [
        ("Deployment", "b", IMAGE_STREAMABLE)
    ]
    assert names[-1] == ("Pod", "z", PULL_SECRETS)
    first = doc["results"][0]
    assert first["resources"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a", "namespace": "shop"}
    ]
    assert first["timestamp"] == {"nanos": 0, "seconds": 5}
    assert (first["policy"], first["source"], first["result"]) == (
        "artifact-streaming",
        "streamgate",
        "pass",
    )
    assert namespace_reports("shop", results) == [doc]  # the input's order does not matter


def test_the_openreports_form_has_the_same_results_and_its_source():
    results = results_for("shop", ["a"])
    (wg,) = namespace_reports("shop", results)
    (orep,) = namespace_reports("shop", results, api=OPENREPORTS)
    assert (orep["apiVersion"], orep["kind"], orep["source"]) == (
        OPENREPORTS,
        "Report",
        "streamgate",
    )
    assert orep["results"] == wg["results"] and orep["summary"] == wg["summary"]
    with pytest.raises(ValueError, match="unknown report API"):
        namespace_reports("shop", results, api="v1")


def test_a_big_namespace_is_split_into_numbered_reports_with_whole_workloads():
    results = results_for("big", [f"w{i:04d}" for i in range(300)])
    docs = namespace_reports("big", results, max_bytes=50_000)
    assert len(docs) > 2
    assert [d["metadata"]["name"] for d in docs[:3]] == [
        "streamgate-big",
        "streamgate-big-2",
        "streamgate-big-3",
    ]
    seen = []
    for doc in docs:
        assert len(json.dumps(doc, separators=(",", ":"))) <= 50_000
        assert len(doc["results"]) % len(RULES) == 0
        assert sum(doc["summary"].values()) == len(doc["results"])
        seen.extend(r["resources"][0]["name"] for r in doc["results"][:: len(RULES)])
    assert sorted(seen) == [f"w{i:04d}" for i in range(300)]  # each workload once
    assert report_name("big", 0) == "streamgate-big"
    # one workload's change rewrites only the report it is in
    changed = [
        r if r.subject.name != "w0123" else replace(r, outcome=Outcome.FAIL, message="x" * 200)
        for r in results
    ]
    again = namespace_reports("big", changed, max_bytes=50_000)
    assert [d["metadata"]["name"] for d in again] == [d["metadata"]["name"] for d in docs]
    assert sum(a != b for a, b in zip(docs, again, strict=True)) == 1


def test_reports_cover_each_namespace_and_none_for_an_empty_one():
    docs = reports(results_for("b", ["x"]) + results_for("a", ["y"]))
    assert [d["metadata"]["namespace"] for d in docs] == ["a", "b"]
    assert namespace_reports("empty", []) == []


def test_a_result_that_did_not_change_is_the_same_whatever_its_timestamp():
    one, two = results_for("a", ["x"], timestamp=1)[0], results_for("a", ["x"], timestamp=2)[0]
    assert one.same(two) and one != two


def test_policy_notes_are_in_no_rule():
    pol = parse_policy({})
    wl = workload(
        "apps",
        "Deployment",
        {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": f"{ACR}/web:1"}]}}}},
    )
    planned = plan(wl, pol)
    d = evaluate(
        planned,
        mode=Mode.WARN,
        policy=pol,
        verdicts={r: STREAM for r in planned.to_check},
        placement=UNKNOWN_PLACEMENT,
        notes=("a note about the policy",),
    )
    assert any(p.rule == "policyNote" for p in d.problems)
    assert all("a note" not in r.message for r in workload_results(WEB, d, pol))
