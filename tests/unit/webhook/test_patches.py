import copy

import jsonpatch
import pytest

from app.core.workloads import workload
from app.webhook.patches import annotation_ops, steer_ops

VALUES = {"streamgate.io/streaming": "all", "streamgate.io/report": "app=streamable"}
LABEL = ("kubernetes.azure.com/artifactstreaming-enabled", "true")
EXPR = {"key": LABEL[0], "operator": "In", "values": ["true"]}


def apply(obj, ops):
    return jsonpatch.apply_patch(copy.deepcopy(obj), ops)


@pytest.mark.parametrize(
    "metadata",
    [{}, {"name": "d"}, {"name": "d", "annotations": None}, {"annotations": {"other": "x"}}],
    ids=["no-metadata-fields", "no-annotations", "null-annotations", "existing"],
)
def test_annotations_land_on_object_and_template(metadata):
    obj = {"metadata": metadata, "spec": {"template": {"spec": {"containers": []}}}}
    wl = workload("apps", "Deployment", obj)
    out = apply(obj, annotation_ops(wl, VALUES))
    for meta in (out["metadata"], out["spec"]["template"]["metadata"]):
        assert {k: meta["annotations"][k] for k in VALUES} == VALUES
    if metadata.get("annotations"):
        assert out["metadata"]["annotations"]["other"] == "x"


def test_cronjob_template_and_pod_metadata_only_once():
    cron = {"metadata": {}, "spec": {"jobTemplate": {"spec": {"template": {"spec": {}}}}}}
    out = apply(cron, annotation_ops(workload("batch", "CronJob", cron), VALUES))
    assert out["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"] == VALUES
    pod = {"metadata": {"name": "p"}, "spec": {}}
    ops = annotation_ops(workload("", "Pod", pod), VALUES)
    assert len(ops) == 1 and apply(pod, ops)["metadata"]["annotations"] == VALUES


def test_unchanged_annotations_make_no_ops():
    obj = {"metadata": {"annotations": dict(VALUES)}, "spec": {}}
    assert annotation_ops(workload("", "Pod", obj), VALUES) == []


def test_keys_are_escaped():
    obj = {"metadata": {"annotations": {}}, "spec": {}}
    ops = annotation_ops(workload("", "Pod", obj), {"a/b~c": "1"})
    assert ops == [{"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "1"}]


def terms(out, path=("spec",)):
    node = out
    for p in path:
        node = node[p]
    return node["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]


@pytest.mark.parametrize(
    ("affinity", "expected_terms"),
    [
        (None, [{"matchExpressions": [EXPR]}]),
        ({"podAntiAffinity": {}}, [{"matchExpressions": [EXPR]}]),
        (
            {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
            [{"matchExpressions": [EXPR]}],
        ),
        (
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
                            {
                                "matchFields": [
                                    {"key": "metadata.name", "operator": "In", "values": ["n"]}
                                ]
                            },
                        ]
                    }
                }
            },
            [
                {"matchExpressions": [{"key": "a", "operator": "Exists"}, EXPR]},
                {
                    "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}],
                    "matchExpressions": [EXPR],
                },
            ],
        ),
    ],
    ids=["none", "other-affinity", "preferred-only", "terms-anded"],
)
def test_steering_adds_the_label_to_every_term(affinity, expected_terms):
    spec = {"containers": []}
    if affinity is not None:
        spec["affinity"] = affinity
    obj = {"metadata": {}, "spec": {"template": {"spec": spec}}}
    ops = steer_ops(workload("apps", "Deployment", obj), LABEL)
    out = apply(obj, ops)
    assert terms(out, ("spec", "template", "spec")) == expected_terms
    again = workload("apps", "Deployment", out)
    assert steer_ops(again, LABEL) == []  # idempotent
