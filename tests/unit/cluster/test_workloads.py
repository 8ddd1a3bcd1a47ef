"""What the reporter keeps of each workload (trimmed on arrival) and which namespaces a change
marks."""

from app.cluster.workloads import WorkloadStore, trim
from app.core.workloads import judged_signature, workload

ACR = "myreg.azurecr.io"


def deployment(name="web", ns="shop", image=f"{ACR}/web:1", **meta):
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": "u-1",
            "labels": {"app": name},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 5000},
            **meta,
        },
        "spec": {
            "replicas": 3,
            "template": {
                "metadata": {"annotations": {"streamgate.io/exempt": "yes", "other": "y"}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": image, "env": [{"name": "A", "value": "1"}]}
                    ],
                    "nodeSelector": {"pool": "a"},
                    "imagePullSecrets": [{"name": "acr"}],
                    "volumes": [{"name": "v", "emptyDir": {}}],
                },
            },
        },
        "status": {"replicas": 3},
    }


def test_trim_keeps_what_judging_reads_and_nothing_else():
    obj = deployment()
    stored = trim("Deployment", obj)
    assert stored is not None and stored.key == ("Deployment", "shop", "web")
    assert stored.uid == "u-1"
    assert stored.obj == {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "template": {
                "spec": {
                    "nodeSelector": {"pool": "a"},
                    "imagePullSecrets": [{"name": "acr"}],
                    "containers": [{"name": "app", "image": f"{ACR}/web:1"}],
                },
                "metadata": {"annotations": {"streamgate.io/exempt": "yes"}},
            }
        },
    }
    # judging the trimmed object reads the same as judging the whole one
    whole = workload("apps", "Deployment", obj)
    small = workload("apps", "Deployment", stored.obj)
    assert whole is not None and small is not None
    assert judged_signature(whole) == judged_signature(small)
    assert small.template_annotations() == {"streamgate.io/exempt": "yes"}


def test_trim_a_cronjob_and_a_pod_and_what_is_left_out():
    cron = {
        "metadata": {"name": "n", "namespace": "b"},
        "spec": {
            "jobTemplate": {
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}
            }
        },
    }
    stored = trim("CronJob", cron)
    assert stored is not None
    assert stored.obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"] == [
        {"name": "c", "image": "x"}
    ]
    pod = {"metadata": {"name": "p", "namespace": "b"}, "spec": {"containers": [{"image": "x"}]}}
    assert trim("Pod", pod).obj == {
        "metadata": {"name": "p", "namespace": "b"},
        "spec": {"containers": [{"name": None, "image": "x"}]},
    }
    owned = {
        **pod,
        "metadata": {
            **pod["metadata"],
            "ownerReferences": [{"kind": "ReplicaSet", "name": "r", "controller": True}],
        },
    }
    assert trim("Pod", owned) is None  # judged through its controller
    assert trim("Pod", {"metadata": {"namespace": "b"}, "spec": {}}) is None  # no name
    broken = trim("DaemonSet", {"metadata": {"name": "d", "namespace": "b"}, "spec": {}})
    assert broken is not None and broken.error == "DaemonSet has no spec.template object"


def test_the_store_marks_namespaces_only_when_something_judged_changed():
    changes = []
    store = WorkloadStore(lambda: changes.append(1))
    store.replace("Deployment", [deployment(), deployment("db", ns="data")])
    assert store.take_dirty() == {"shop", "data"} and len(store) == 2
    status_only = deployment()
    status_only["status"] = {"replicas": 1}
    store.event("Deployment", "MODIFIED", status_only)
    assert store.take_dirty() == set()
    store.event("Deployment", "MODIFIED", deployment(image=f"{ACR}/web:2"))
    assert store.take_dirty() == {"shop"}
    store.event("Deployment", "DELETED", deployment())
    assert store.take_dirty() == {"shop"} and store.namespaces() == ["data"]
    store.replace("Deployment", [])  # a new list without them
    assert store.take_dirty() == {"data"} and len(store) == 0


def test_the_store_keeps_only_the_namespaces_asked_for():
    store = WorkloadStore(namespaces=["shop"])
    store.replace("Deployment", [deployment(), deployment("db", ns="data")])
    store.event("Deployment", "ADDED", deployment("x", ns="other"))
    assert store.namespaces() == ["shop"] and store.take_dirty() == {"shop"}
