import asyncio
import time

import pytest

from app.core.policy import Mode, parse_policy
from app.core.pools import NoInventory, Placement, PoolFit, Streaming
from app.core.verdicts import ImageVerdict, Verdict
from app.webhook.admission import Admission
from app.webhook.memo import DecisionMemo
from app.webhook.review import AdmissionRequest, ReviewError
from tests.memory import MemoryVerdicts

ACR = "myreg.azurecr.io"


class FixedPlacement:
    def __init__(self, placement=None, fail=False):
        self.placement = placement or Placement(False)
        self.fail = fail

    def place(self, pod_spec):
        if self.fail:
            raise ValueError("inventory bug")
        return self.placement


class Labels:
    def __init__(self, modes):
        self.modes = modes

    def mode(self, namespace):
        return self.modes.get(namespace)


def admission(verdicts=None, placement=None, namespaces=None, deadline=1.0, **policy):
    pol = parse_policy(policy)
    return Admission(
        policy=lambda: pol,
        verdicts=verdicts or MemoryVerdicts(),
        placement=placement or NoInventory(),
        namespaces=namespaces or Labels({}),
        lookup_deadline=deadline,
    )


def pod(*images, name="p"):
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]},
    }


def request(obj, *, op="CREATE", old=None, sub="", kind="Pod", group="", ns="default", user="me"):
    return AdmissionRequest(
        api_version="admission.k8s.io/v1",
        uid="u",
        group=group,
        kind=kind,
        sub_resource=sub,
        operation=op,
        namespace=ns,
        name="p",
        obj=obj,
        old_obj=old,
        dry_run=False,
        user=user,
    )


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (request(None, op="DELETE"), "operation DELETE"),
        (request(pod(f"{ACR}/a:1"), op="CONNECT"), "operation CONNECT"),
        (request(pod(f"{ACR}/a:1"), op="UPDATE", sub="status"), "subresource status"),
        (
            request({"spec": {}}, op="UPDATE", sub="scale", kind="Deployment", group="apps"),
            "subresource scale",
        ),
        (request({"spec": {"ports": []}}, kind="Service"), "kind Service is not judged"),
        (request(pod(f"{ACR}/a:1"), ns="kube-system"), "namespace kube-system is exempt"),
        (
            request(pod(f"{ACR}/a:1"), op="UPDATE", old=pod(f"{ACR}/a:1", name="old")),
            "images and scheduling unchanged",
        ),
    ],
    ids=["delete", "connect", "status", "scale", "service", "kube-system", "unchanged-update"],
)
async def test_skips_without_registry_work(req, reason):
    source = MemoryVerdicts()
    decision, _ = await admission(source).decide(req)
    assert decision.skipped == reason and decision.allowed
    assert source.calls == []


async def test_changed_update_and_ephemeral_containers_are_judged():
    source = MemoryVerdicts({f"{ACR}/dbg:1": ImageVerdict(Verdict.NOT_STREAMABLE)})
    adm = admission(source, mode="enforce")
    old = pod(f"{ACR}/a:1")
    new = pod(f"{ACR}/a:1")
    new["spec"]["ephemeralContainers"] = [{"name": "dbg", "image": f"{ACR}/dbg:1"}]
    decision, _ = await adm.decide(request(new, op="UPDATE", old=old, sub="ephemeralcontainers"))
    assert not decision.allowed
    assert sorted(source.calls) == [f"{ACR}/a:1", f"{ACR}/dbg:1"]


async def test_one_lookup_per_distinct_image():
    source = MemoryVerdicts()
    await admission(source).decide(request(pod(f"{ACR}/a:1", f"{ACR}/a:1", f"{ACR}/b:1", "nginx")))
    assert sorted(source.calls) == [f"{ACR}/a:1", f"{ACR}/b:1"]


async def test_deadline_gives_unknown_and_lookup_goes_on():
    source = MemoryVerdicts(delay=0.5)
    adm = admission(source, deadline=0.05)
    started = time.perf_counter()
    decision, _ = await adm.decide(request(pod(f"{ACR}/slow:1")))
    assert time.perf_counter() - started < 0.45  # the look-up takes 0.5 s: it was not awaited
    assert decision.reports[0].verdict == ImageVerdict(Verdict.UNKNOWN, "registry timed out")
    assert len(adm._background) == 1
    (task,) = adm._background
    await asyncio.wait_for(asyncio.shield(task), 5)  # the look-up went on to its end
    await asyncio.sleep(0)  # its done-callback runs one loop turn later
    assert adm._background == set()


async def test_source_that_raises_gives_unknown():
    decision, _ = await admission(MemoryVerdicts(fail=True)).decide(request(pod(f"{ACR}/a:1")))
    assert decision.reports[0].verdict.verdict is Verdict.UNKNOWN
    assert decision.allowed


@pytest.mark.parametrize(
    ("on_error", "mode", "allowed"),
    [("allow", "enforce", True), ("deny", "enforce", False), ("deny", "warn", True)],
    ids=["allow", "deny-enforce", "deny-warn"],
)
async def test_internal_failure_answers_on_error(on_error, mode, allowed):
    adm = admission(placement=FixedPlacement(fail=True), onError=on_error, mode=mode)
    answer = await adm.answer(request(pod(f"{ACR}/a:1")), "validate")
    assert answer.allowed is allowed
    text = answer.warnings[0] if allowed else answer.message
    assert "internal error" in text


async def test_missing_pod_spec_is_a_bad_review():
    with pytest.raises(ReviewError, match=r"spec\.template"):
        await admission().answer(request({"spec": {}}, kind="Deployment", group="apps"), "validate")


async def test_namespace_label_overrides_policy_mode():
    nope = MemoryVerdicts({f"{ACR}/a:1": ImageVerdict(Verdict.NOT_STREAMABLE)})
    adm = admission(
        nope, namespaces=Labels({"strict": Mode.ENFORCE}), namespaceModes={"quiet": "off"}
    )
    strict = await adm.answer(request(pod(f"{ACR}/a:1"), ns="strict"), "validate")
    assert not strict.allowed and "can't use artifact streaming" in strict.message
    relaxed = await adm.answer(request(pod(f"{ACR}/a:1"), ns="other"), "validate")
    assert relaxed.allowed and len(relaxed.warnings) == 1
    quiet = await adm.answer(request(pod(f"{ACR}/a:1"), ns="quiet"), "validate")
    assert quiet.allowed and quiet.warnings == ()


NOPE = MemoryVerdicts({f"{ACR}/a:1": ImageVerdict(Verdict.NOT_STREAMABLE)})


@pytest.mark.parametrize(
    ("policy", "label", "mode"),
    [
        ({"mode": "enforce"}, Mode.OFF, Mode.ENFORCE),
        ({"mode": "enforce"}, Mode.WARN, Mode.ENFORCE),
        ({"mode": "warn", "namespaceModes": {"team": "enforce"}}, Mode.AUDIT, Mode.ENFORCE),
        ({"mode": "warn"}, Mode.ENFORCE, Mode.ENFORCE),
        ({"mode": "audit"}, Mode.WARN, Mode.WARN),
        ({"mode": "enforce", "namespaceLabel": {"allowRelax": True}}, Mode.OFF, Mode.OFF),
        ({"mode": "warn", "namespaceModes": {"team": "off"}}, Mode.WARN, Mode.WARN),
    ],
    ids=str,
)
def test_the_namespace_label_only_makes_the_mode_stricter(policy, label, mode):
    """Issue 18 finding 5: a tenant who can label its namespace turned the admin's enforce off."""
    adm = admission(namespaces=Labels({"team": label}), **policy)
    assert adm.mode_for("team", parse_policy(policy)) is mode


async def test_an_ignored_label_is_said_beside_the_denial():
    adm = admission(NOPE, namespaces=Labels({"team": Mode.OFF}), mode="enforce")
    answer = await adm.answer(request(pod(f"{ACR}/a:1"), ns="team"), "validate")
    assert not answer.allowed
    assert answer.warnings == (
        "namespace label streamgate.io/mode=off ignored: labels may only be stricter "
        "than enforce (policy namespaceLabel)",
    )


def owned_pod():
    obj = pod(f"{ACR}/a:1")
    obj["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-1",
            "uid": "x",
            "controller": True,
        }
    ]
    return obj


@pytest.mark.parametrize(
    ("user", "allowed"),
    [
        ("system:serviceaccount:kube-system:replicaset-controller", True),
        ("system:kube-controller-manager", True),
        ("alice", False),
        ("system:serviceaccount:team:replicaset-controller", False),
    ],
)
async def test_a_claimed_owner_softens_only_a_controllers_request(user, allowed):
    """Issue 18 finding 5: a bare Pod claiming a ReplicaSet owner had its denial softened."""
    adm = admission(NOPE, mode="enforce")
    answer = await adm.answer(request(owned_pod(), user=user), "validate")
    assert answer.allowed is allowed
    again = await adm.answer(request(owned_pod(), user="alice"), "validate")  # memo: per user
    assert not again.allowed


async def test_exempt_annotation_in_enforce_is_ignored_and_said():
    obj = pod(f"{ACR}/a:1")
    obj["metadata"]["annotations"] = {"streamgate.io/exempt": "trust me"}
    adm = admission(NOPE, mode="enforce")
    answer = await adm.answer(request(obj), "validate")
    assert not answer.allowed
    assert answer.warnings == (
        "streamgate.io/exempt ignored in enforce mode here; "
        "an admin can allow it (policy exemptions.annotation)",
    )
    allowed = admission(
        NOPE, mode="enforce", exemptions={"annotation": {"enforceNamespaces": ["default"]}}
    )
    assert (await allowed.answer(request(obj), "validate")).allowed


async def test_mutate_patches_but_never_warns_and_validate_never_patches():
    adm = admission(
        placement=FixedPlacement(
            Placement(
                True,
                (PoolFit("a", Streaming.YES), PoolFit("b", Streaming.NO, ("arm64",))),
                ("k", "true"),
            )
        ),
        steering={"enabled": True},
    )
    req = request(pod(f"{ACR}/a:1"))
    mutate = await adm.answer(req, "mutate")
    validate = await adm.answer(req, "validate")
    assert mutate.warnings == () and mutate.allowed
    paths = [op["path"] for op in mutate.patch]
    assert paths == ["/metadata/annotations", "/spec/affinity"]
    assert validate.patch == () and len(validate.warnings) == 1


async def test_admit_is_mutate_and_validate_in_one_answer():
    steer = Placement(
        True, (PoolFit("a", Streaming.YES), PoolFit("b", Streaming.NO, ("arm64",))), ("k", "true")
    )
    adm = admission(placement=FixedPlacement(steer), steering={"enabled": True})
    req = request(pod(f"{ACR}/a:1"))
    admit = await adm.answer(req, "admit")
    mutate = await adm.answer(req, "mutate")
    validate = await adm.answer(req, "validate")
    assert admit.allowed and admit.patch == mutate.patch and admit.patch
    assert admit.warnings == validate.warnings and admit.warnings


async def test_admit_denies_like_validate_and_sends_no_patch_with_a_denial():
    adm = admission(
        verdicts=MemoryVerdicts({f"{ACR}/a:1": ImageVerdict(Verdict.NOT_STREAMABLE)}),
        mode="enforce",
    )
    req = request(pod(f"{ACR}/a:1"))
    admit = await adm.answer(req, "admit")
    validate = await adm.answer(req, "validate")
    assert not admit.allowed and admit.message == validate.message
    assert "has no streaming artifact" in admit.message
    assert admit.patch == ()


async def test_mutate_leaves_subresource_updates_alone():
    old = pod(f"{ACR}/a:1")
    new = pod(f"{ACR}/a:1")
    new["spec"]["ephemeralContainers"] = [{"name": "d", "image": f"{ACR}/d:1"}]
    answer = await admission().answer(
        request(new, op="UPDATE", old=old, sub="ephemeralcontainers"), "mutate"
    )
    assert answer.patch == ()


async def test_known_verdicts_are_answered_without_a_task():
    img = f"{ACR}/known:1"
    source = MemoryVerdicts({img: ImageVerdict(Verdict.NOT_STREAMABLE)}, instant=True)
    adm = admission(source, mode="enforce")
    before = len(asyncio.all_tasks())
    decision, _ = await adm.decide(request(pod(img, f"{ACR}/unknown:1")))
    assert not decision.allowed
    assert sorted(source.calls) == [f"{ACR}/known:1", f"{ACR}/unknown:1"]  # one each way
    assert len(asyncio.all_tasks()) == before


async def test_malformed_old_object_counts_as_changed_not_as_a_bad_review():
    source = MemoryVerdicts({f"{ACR}/a:1": ImageVerdict(Verdict.NOT_STREAMABLE)})
    req = request(pod(f"{ACR}/a:1"), op="UPDATE", old={"spec": "not a pod spec"}, kind="Pod")
    decision, _ = await admission(source, mode="enforce").decide(req)
    assert decision.skipped is None and not decision.allowed
    deployment_req = request(
        {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": f"{ACR}/a:1"}]}}}},
        op="UPDATE",
        old={"spec": {}},
        kind="Deployment",
        group="apps",
    )
    decision, _ = await admission(source, mode="enforce").decide(deployment_req)
    assert decision.skipped is None and not decision.allowed


async def test_repeated_template_is_evaluated_once_and_follows_changes():
    img, other = f"{ACR}/a:1", f"{ACR}/b:1"
    answers = {img: ImageVerdict(Verdict.STREAMABLE), other: ImageVerdict(Verdict.STREAMABLE)}
    source = MemoryVerdicts(answers, instant=True)
    yes = Placement(True, (PoolFit("a", Streaming.YES),))
    no = Placement(True, (PoolFit("a", Streaming.NO, ("arm64",)),))
    pools = FixedPlacement(yes)
    memoised = admission(source, pools, mode="enforce")
    fresh = admission(source, pools, mode="enforce")
    fresh.memo = DecisionMemo(size=0)

    async def both(obj):
        got, _ = await memoised.decide(request(obj))
        want, _ = await fresh.decide(request(obj))
        assert got == want
        return got

    first = await both(pod(img, other, name="web-1"))
    assert await both(pod(img, other, name="web-2")) is first  # another replica: no new work
    assert memoised.memo.hits == 1
    source.answers[img] = ImageVerdict(Verdict.NOT_STREAMABLE, "no streaming artifact")
    changed = await both(pod(img, other, name="web-3"))  # the verdict changed
    assert changed is not first and not changed.allowed
    pools.placement = no
    moved = await both(pod(img, other, name="web-4"))  # the pools changed
    assert "arm64" in " ".join(moved.denials + moved.warnings)
    await both(pod(other, img, name="web-5"))  # another template
    assert memoised.memo.hits == 1


async def test_memo_hit_asks_each_image_once_and_misses_reuse_known_verdicts():
    img, slow = f"{ACR}/a:1", f"{ACR}/slow:1"
    source = MemoryVerdicts({img: ImageVerdict(Verdict.STREAMABLE)}, instant=True)
    adm = admission(source, mode="warn")
    await adm.decide(request(pod(img, slow)))  # slow is not cached: looked up
    source.calls.clear()
    await adm.decide(request(pod(img, slow)))  # memo entry, but slow still not cached: a miss
    assert sorted(source.calls) == [img, slow]  # img: cached, asked once; slow: looked up
    assert adm.memo.hits == 0


async def test_one_object_naming_300_registries_looks_up_only_the_capped_few():
    source = MemoryVerdicts()
    images = [f"r{i}.azurecr.io/x:1" for i in range(300)]
    adm = admission(source, mode="enforce", onError="deny")
    answer = await adm.answer(request(pod(*images)), "validate")
    assert len(source.calls) == 8  # registry.maxRegistriesPerReview
    assert not answer.allowed  # the rest are unknown, and onError: deny denies in enforce
    assert "not looked up: more than 8 registries in one object" in answer.message
    assert "registry.maxRegistriesPerReview" in answer.message


async def test_images_per_object_are_capped_too_and_the_cap_is_a_setting():
    source = MemoryVerdicts()
    images = [f"{ACR}/img{i}:1" for i in range(40)]
    adm = admission(source, registry={"maxImagesPerReview": 5})
    answer = await adm.answer(request(pod(*images)), "validate")
    assert len(source.calls) == 5
    assert answer.allowed  # onError: allow (the default) warns
    assert any("more than 5 images in one object" in w for w in answer.warnings)
