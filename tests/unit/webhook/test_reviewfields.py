"""The typed decoder keeps every field a decision reads: reviews parsed the fast way and the
general way get the same answers, patches and Events; odd input takes the general way."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import orjson
import pytest

from app.core.policy import parse_policy
from app.core.pools import Placement, PoolFit, Streaming
from app.core.verdicts import ImageVerdict, Verdict
from app.telemetry.events import event_for
from app.webhook import reviewfields
from app.webhook.admission import Admission
from app.webhook.memo import DecisionMemo
from app.webhook.review import ReviewError, parse_review, render
from bench.reviews import review_set
from tests.memory import MemoryVerdicts

REVIEWS = Path(__file__).parents[2] / "reviews"


class Fixed:
    def __init__(self, placement: Placement) -> None:
        self.placement = placement

    def place(self, pod_spec):
        return self.placement


def admission() -> Admission:
    policy = parse_policy(
        {
            "mode": "enforce",
            "acrRegistries": ["127.0.0.1:25000"],
            "steering": {"enabled": True},
            # the "exempt" variant: honoured in enforce only where the policy says
            "exemptions": {"annotation": {"enforceNamespaces": ["*"]}},
        }
    )
    answers = {
        "streamgatedemo.azurecr.io/sidecar:v2": ImageVerdict(Verdict.NOT_STREAMABLE, "none"),
        "127.0.0.1:25000/sgbench/plain:v1": ImageVerdict(Verdict.NOT_STREAMABLE, "none"),
    }
    pools = Placement(
        True,
        (PoolFit("fast", Streaming.YES), PoolFit("arm", Streaming.NO, ("arm64",))),
        steer_label=("kubernetes.azure.com/artifactstreaming-enabled", "true"),
    )
    return Admission(
        policy=lambda: policy,
        verdicts=MemoryVerdicts(answers, instant=True),
        placement=Fixed(pools),
        memo=DecisionMemo(size=0),
    )


def variants(review: dict) -> list[dict]:
    """The review, and versions with the fields decisions read moved about: owner
    references, pull secrets, annotations, an affinity, an exempt annotation."""
    out = [review]
    obj = review["request"].get("object")
    if not isinstance(obj, dict):
        return out
    owned = copy.deepcopy(review)
    owned["request"]["object"].setdefault("metadata", {})["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "rs",
            "uid": "1",
            "controller": True,
        }
    ]
    out.append(owned)
    bare = copy.deepcopy(review)
    bare["request"]["object"].get("metadata", {}).pop("annotations", None)
    out.append(bare)
    for spec in _pod_specs(owned["request"]["object"]):
        spec["imagePullSecrets"] = [{"name": "pull"}]
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "a", "operator": "Exists"}]}
                    ]
                }
            }
        }
    exempt = copy.deepcopy(review)
    exempt["request"]["object"].setdefault("metadata", {})["annotations"] = {
        "streamgate.io/exempt": "legacy"
    }
    out.append(exempt)
    return out


def _pod_specs(obj: dict) -> list[dict]:
    spec = obj.get("spec") or {}
    for path in (("template", "spec"), ("jobTemplate", "spec", "template", "spec")):
        node = spec
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return [node]
    return [spec] if "containers" in spec else []


def all_reviews() -> list[tuple[str, dict]]:
    fixtures = [(p.stem, json.loads(p.read_text())) for p in sorted(REVIEWS.glob("*.json"))]
    assert len(fixtures) >= 20, f"captured reviews not found under {REVIEWS}"
    bench = review_set("127.0.0.1:25000", "sgbench")
    out = []
    for name, review in [*fixtures, *bench]:
        for i, variant in enumerate(variants(review)):
            out.append((f"{name}#{i}", variant))
    return out


CASES = all_reviews()


@pytest.mark.parametrize(("name", "review"), CASES, ids=[n for n, _ in CASES])
async def test_fast_and_general_parse_answer_alike(name, review, monkeypatch):
    body = orjson.dumps(review)
    assert reviewfields.decode(body) is not None, "a valid review must take the fast way"
    fast = parse_review(body)
    monkeypatch.setattr(reviewfields, "decode", lambda body: None)
    general = parse_review(body)
    assert (fast.uid, fast.kind, fast.operation, fast.name, fast.user, fast.dry_run) == (
        general.uid,
        general.kind,
        general.operation,
        general.name,
        general.user,
        general.dry_run,
    )
    adm = admission()
    for endpoint in ("validate", "mutate"):
        a = await adm.answer(fast, endpoint)
        b = await adm.answer(general, endpoint)
        assert render(fast, a) == render(general, b)
    decision_fast, _ = await adm.decide(fast)
    decision_general, _ = await adm.decide(general)
    assert event_for(fast, decision_fast) == event_for(general, decision_general)


async def test_the_cases_exercise_patches_warnings_and_steering():
    """The comparison above is only worth something if the answers vary."""
    adm = admission()
    seen = set()
    for _, review in CASES:
        req = parse_review(orjson.dumps(review))
        validate = await adm.answer(req, "validate")
        seen.add("allow" if validate.allowed else "deny")
        seen.add("warn" if validate.warnings else "quiet")
        patch = (await adm.answer(req, "mutate")).patch
        seen.add("patch" if patch else "no patch")
        if any("affinity" in str(op.get("path")) for op in patch):
            seen.add("steer")
    assert seen == {"allow", "deny", "warn", "quiet", "patch", "no patch", "steer"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        # invalid UTF-8 in a field the typed decoder would skip: still a 400
        (b'{"kind":"AdmissionReview","junk":"\xff","request":{}}', "not valid UTF-8 JSON"),
        # a field of the wrong type: the general way gives the usual message
        (
            b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1",'
            b'"request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":[]}}',
            "request.object: Input should be a valid dictionary",
        ),
        (b"[1, 2]", "not a JSON object"),
        # nesting deeper than either decoder takes, in a field the typed decoder skips
        (
            b'{"kind":"AdmissionReview","request":' + b'{"a":' * 3000 + b"1" + b"}" * 3001,
            "not valid UTF-8 JSON",
        ),
        (b'{"kind": NaN}', "not valid UTF-8 JSON"),
    ],
)
def test_odd_input_takes_the_general_way(body, fragment):
    assert reviewfields.decode(body) is None
    with pytest.raises(ReviewError, match=fragment):
        parse_review(body)


def test_skipped_fields_are_left_out():
    review = dict(CASES[0][1])
    data = reviewfields.decode(orjson.dumps(review))
    assert data is not None
    assert "resource" not in data["request"]  # not read by any decision
