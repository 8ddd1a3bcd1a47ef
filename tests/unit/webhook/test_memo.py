"""The decision memo: signatures, and decisions handed back only for the same inputs."""

from __future__ import annotations

import pytest

from app.core.evaluate import evaluate
from app.core.images import parse_image
from app.core.plan import plan
from app.core.policy import Mode, parse_policy
from app.core.pools import Placement, PoolFit, Streaming
from app.core.verdicts import ImageVerdict, Verdict
from app.core.workloads import workload
from app.webhook.memo import DecisionMemo, Judged, signature

ACR = "myreg.azurecr.io"
POLICY = parse_policy({"mode": "enforce"})


def pod(containers, *, owner=None, secrets=None, **spec):
    meta = {"name": "p"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "controller": True}]
    spec = {"containers": containers, **spec}
    if secrets:
        spec["imagePullSecrets"] = secrets
    return workload("", "Pod", {"metadata": meta, "spec": spec})


def c(name, image):
    return {"name": name, "image": image}


def test_pods_of_one_template_share_a_signature():
    a = workload(
        "",
        "Pod",
        {"metadata": {"name": "web-1", "uid": "1"}, "spec": {"containers": [c("a", "x:1")]}},
    )
    b = workload(
        "",
        "Pod",
        {
            "metadata": {"name": "web-2", "uid": "2", "labels": {"x": "y"}},
            "spec": {"containers": [{**c("a", "x:1"), "env": [{"name": "E", "value": "1"}]}]},
        },
    )
    assert signature(a, Mode.ENFORCE) == signature(b, Mode.ENFORCE)


@pytest.mark.parametrize(
    "other",
    [
        pod([c("a", "x:2")]),  # another image
        pod([c("b", "x:1")]),  # another container name (messages name it)
        pod([c("a", "x:1"), c("b", "y:1")]),  # one more container
        pod([], initContainers=[c("a", "x:1")]),  # the same container, as an init container
        pod([c("a", "x:1")], owner="ReplicaSet"),  # a controlled pod: deny becomes warn
        pod([c("a", "x:1")], secrets=[{"name": "s"}]),  # pull secrets: their own warning
    ],
)
def test_what_evaluate_reads_changes_the_signature(other):
    assert signature(pod([c("a", "x:1")]), Mode.ENFORCE) != signature(other, Mode.ENFORCE)


def test_the_mode_is_part_of_the_signature():
    wl = pod([c("a", "x:1")])
    assert signature(wl, Mode.ENFORCE) != signature(wl, Mode.WARN)


@pytest.mark.parametrize(
    "spec",
    [{"containers": [{"name": "a", "image": ["x"]}]}, {"containers": [{"name": "a", "image": 7}]}],
)
def test_images_that_are_not_strings_are_not_memoised(spec):
    assert signature(workload("", "Pod", {"spec": spec}), Mode.ENFORCE) is None


@pytest.mark.parametrize(
    ("spec", "same_as"),
    [
        ({"containers": "not a list"}, {}),
        ({"containers": ["not an object"]}, {"containers": []}),
        (
            {"containers": ["junk", {"name": "a", "image": "x:1"}]},
            {"containers": [{"name": "b"}, {"name": "a", "image": "x:1"}]},
        ),
    ],
    ids=["not a list", "not an object", "skipped item"],
)
def test_unusual_shapes_share_a_key_only_with_what_evaluate_reads_the_same(spec, same_as):
    def key(s):
        return signature(workload("", "Pod", {"spec": s}), Mode.ENFORCE)

    # Containers evaluate skips are not in the key; the index of those it reads is.
    assert key(spec) is not None
    assert (key(spec) == key(same_as)) is (
        spec["containers"] != ["junk", {"name": "a", "image": "x:1"}]
    )


def judged(verdict, placement):
    wl = pod([c("a", f"{ACR}/a:1")])
    ref = parse_image(f"{ACR}/a:1")
    decision = evaluate(
        plan(wl, POLICY),
        mode=Mode.ENFORCE,
        policy=POLICY,
        verdicts={ref: verdict},
        placement=placement,
    )
    return signature(wl, Mode.ENFORCE), Judged((ref,), (verdict,), placement, decision)


YES = Placement(True, (PoolFit("a", Streaming.YES),))
NO = Placement(True, (PoolFit("a", Streaming.NO, ("arm64",)),))
STREAMABLE = ImageVerdict(Verdict.STREAMABLE, digest="sha256:1")


def test_the_decision_comes_back_only_for_the_same_inputs():
    memo = DecisionMemo()
    key, entry = judged(STREAMABLE, YES)
    memo.put(key, POLICY, entry)
    assert memo.refs_for(key, POLICY) == entry.refs
    assert memo.get(key, POLICY, (STREAMABLE,), YES) is entry.decision
    # an equal verdict (rebuilt from the same cache entries) is the same input
    assert memo.get(key, POLICY, (ImageVerdict(Verdict.STREAMABLE, digest="sha256:1"),), YES)
    assert memo.get(key, POLICY, (ImageVerdict(Verdict.NOT_STREAMABLE),), YES) is None
    assert memo.get(key, POLICY, (None,), YES) is None  # not cached now: must be looked up
    assert memo.get(key, POLICY, (STREAMABLE,), NO) is None  # the pools changed
    assert (memo.hits, memo.misses) == (2, 3)


def test_a_new_policy_empties_the_memo():
    memo = DecisionMemo()
    key, entry = judged(STREAMABLE, YES)
    memo.put(key, POLICY, entry)
    reloaded = parse_policy({"mode": "enforce"})
    assert memo.refs_for(key, reloaded) is None
    assert memo.get(key, reloaded, (STREAMABLE,), YES) is None
    memo.put(("other",), reloaded, entry)
    assert len(memo) == 1 and memo.refs_for(key, POLICY) is None


def test_the_memo_is_bounded_oldest_first():
    memo = DecisionMemo(size=2)
    _, entry = judged(STREAMABLE, YES)
    for key in ("a", "b", "c"):
        memo.put((key,), POLICY, entry)
    assert len(memo) == 2
    assert memo.refs_for(("a",), POLICY) is None
    assert memo.refs_for(("c",), POLICY) == entry.refs
    off = DecisionMemo(size=0)
    off.put(("a",), POLICY, entry)
    assert len(off) == 0


def test_the_memo_is_bounded_in_characters_not_only_entries():
    from app.webhook import memo as memo_module

    memo = DecisionMemo(size=100_000)
    placement = NO
    big = "x" * 4000
    for i in range(3000):
        wl = pod([c(f"a{i}", f"{ACR}/{big}{i}:1"), c("b", f"{ACR}/b:1")])
        ref = parse_image(f"{ACR}/b:1")
        decision = evaluate(
            plan(wl, POLICY),
            mode=Mode.ENFORCE,
            policy=POLICY,
            verdicts={ref: STREAMABLE},
            placement=placement,
        )
        memo.put(
            signature(wl, Mode.ENFORCE), POLICY, Judged((ref,), (STREAMABLE,), placement, decision)
        )
    assert memo._total <= memo_module.MAX_TOTAL_CHARS
    assert 0 < len(memo) < 3000
    huge = pod([c("a", f"{ACR}/{'y' * (memo_module.MAX_KEY_CHARS + 1)}:1")])
    before = len(memo)
    memo.put(signature(huge, Mode.ENFORCE), POLICY, Judged((), (), placement, decision))
    assert len(memo) == before  # too large to keep
