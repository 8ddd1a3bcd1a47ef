import pytest

from app.core.workloads import KINDS, WorkloadError, judged_signature, pointer, workload


def pod_spec(image="nginx"):
    return {
        "initContainers": [{"name": "init", "image": "busybox"}],
        "containers": [{"name": "app", "image": image}],
        "ephemeralContainers": [{"name": "dbg", "image": "debian"}],
    }


def wrap(kind, spec):
    template = {"metadata": {}, "spec": spec}
    if kind == "Pod":
        return {"metadata": {"name": "x"}, "spec": spec}
    if kind == "CronJob":
        return {
            "metadata": {"name": "x"},
            "spec": {"jobTemplate": {"spec": {"template": template}}},
        }
    return {"metadata": {"name": "x"}, "spec": {"template": template}}


@pytest.mark.parametrize(("group", "kind"), list(KINDS), ids=[k for _, k in KINDS])
def test_every_kind_yields_all_container_fields(group, kind):
    wl = workload(group, kind, wrap(kind, pod_spec("myreg.azurecr.io/a:1")))
    assert wl is not None
    got = [(c.field, c.label, c.image) for c in wl.containers]
    assert got == [
        ("initContainers", "init:init", "busybox"),
        ("containers", "app", "myreg.azurecr.io/a:1"),
        ("ephemeralContainers", "debug:dbg", "debian"),
    ]


def test_unknown_kind_is_not_judged():
    assert workload("", "Service", {"spec": {}}) is None
    assert workload("example.com", "Deployment", {"spec": {}}) is None


@pytest.mark.parametrize(
    ("kind", "obj", "where"),
    [
        ("Pod", {"metadata": {}}, "spec"),
        ("Deployment", {"spec": {"template": {}}}, "spec.template.spec"),
        ("CronJob", {"spec": {"jobTemplate": "x"}}, "spec.jobTemplate"),
    ],
    ids=["pod", "deployment", "cronjob"],
)
def test_missing_pod_spec_says_where(kind, obj, where):
    group = {"Pod": "", "Deployment": "apps", "CronJob": "batch"}[kind]
    with pytest.raises(WorkloadError, match=where):
        workload(group, kind, obj)


def test_malformed_containers_are_skipped_not_fatal():
    wl = workload(
        "",
        "Pod",
        {"spec": {"containers": ["x", {"image": 3}, {"name": "a"}], "initContainers": "no"}},
    )
    got = [(c.name, c.image) for c in wl.containers]
    assert got == [("#1", 3), ("a", None)]


def test_template_metadata_path_and_controller():
    dep = workload("apps", "Deployment", wrap("Deployment", pod_spec()))
    assert dep.template_metadata_path == ("spec", "template", "metadata")
    pod = workload(
        "",
        "Pod",
        {"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "controller": True}]}, "spec": {}},
    )
    assert pod.template_metadata_path is None
    assert pod.controller_kind == "ReplicaSet"


def test_signature_ignores_labels_but_not_images_or_scheduling():
    base = pod_spec()
    same = {**pod_spec(), "serviceAccountName": "other"}

    def sig(spec):
        return judged_signature(workload("", "Pod", {"spec": spec}))

    assert sig(base) == sig(same)
    assert sig(base) != sig(pod_spec("nginx:2"))
    assert sig(base) != sig({**base, "nodeSelector": {"a": "b"}})


def test_pointer_escapes():
    assert pointer(("metadata", "annotations", "streamgate.io/x~y")) == (
        "/metadata/annotations/streamgate.io~1x~0y"
    )
