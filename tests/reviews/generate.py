"""Writes the AdmissionReview fixtures in this folder, shaped as kube-apiserver 1.34 sends
them: defaulted objects, requestKind/requestResource, userInfo, options, uid.

Run `python -m tests.reviews.generate` after changing a case; the JSON files are committed.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
REG = "streamgatedemo.azurecr.io"


def container(name: str, image: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def pod_spec(images: list[str], init: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container(f"c{i}", im) for i, im in enumerate(images)],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "securityContext": {},
        "schedulerName": "default-scheduler",
    }
    if init:
        spec["initContainers"] = [container(f"init{i}", im) for i, im in enumerate(init)]
    return spec


def meta(name: str, ns: str = "apps", **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "creationTimestamp": None, **extra}


def template(images: list[str], init: list[str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": None, "labels": {"app": "web"}},
        "spec": pod_spec(images, init),
    }


IMAGES = [f"{REG}/web:v1", f"{REG}/sidecar:v2"]
INIT = [f"{REG}/migrate@sha256:" + "c" * 64]

OBJECTS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    # name: (group, version, kind/resource, object)
    "pod": (
        "",
        "v1",
        "Pod/pods",
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": meta("web"),
            "spec": pod_spec(IMAGES, INIT),
            "status": {},
        },
    ),
    "deployment": (
        "apps",
        "v1",
        "Deployment/deployments",
        {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": meta("web"),
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template(IMAGES, INIT),
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
                },
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            },
            "status": {},
        },
    ),
    "statefulset": (
        "apps",
        "v1",
        "StatefulSet/statefulsets",
        {
            "kind": "StatefulSet",
            "apiVersion": "apps/v1",
            "metadata": meta("db"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template(IMAGES),
                "serviceName": "db",
                "podManagementPolicy": "OrderedReady",
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                "revisionHistoryLimit": 10,
            },
            "status": {"replicas": 0, "availableReplicas": 0},
        },
    ),
    "daemonset": (
        "apps",
        "v1",
        "DaemonSet/daemonsets",
        {
            "kind": "DaemonSet",
            "apiVersion": "apps/v1",
            "metadata": meta("agent"),
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": template(IMAGES),
                "updateStrategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
                },
                "revisionHistoryLimit": 10,
            },
            "status": {
                "currentNumberScheduled": 0,
                "numberMisscheduled": 0,
                "desiredNumberScheduled": 0,
                "numberReady": 0,
            },
        },
    ),
    "replicaset": (
        "apps",
        "v1",
        "ReplicaSet/replicasets",
        {
            "kind": "ReplicaSet",
            "apiVersion": "apps/v1",
            "metadata": meta("web-rs"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template(IMAGES),
            },
            "status": {"replicas": 0},
        },
    ),
    "replicationcontroller": (
        "",
        "v1",
        "ReplicationController/replicationcontrollers",
        {
            "kind": "ReplicationController",
            "apiVersion": "v1",
            "metadata": meta("web-rc"),
            "spec": {"replicas": 1, "selector": {"app": "web"}, "template": template(IMAGES)},
            "status": {"replicas": 0},
        },
    ),
    "job": (
        "batch",
        "v1",
        "Job/jobs",
        {
            "kind": "Job",
            "apiVersion": "batch/v1",
            "metadata": meta("once"),
            "spec": {
                "parallelism": 1,
                "completions": 1,
                "backoffLimit": 6,
                "template": {
                    **template(IMAGES),
                    "spec": {**pod_spec(IMAGES), "restartPolicy": "Never"},
                },
                "completionMode": "NonIndexed",
                "suspend": False,
            },
            "status": {},
        },
    ),
    "cronjob": (
        "batch",
        "v1",
        "CronJob/cronjobs",
        {
            "kind": "CronJob",
            "apiVersion": "batch/v1",
            "metadata": meta("nightly"),
            "spec": {
                "schedule": "0 3 * * *",
                "concurrencyPolicy": "Allow",
                "suspend": False,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 1,
                "jobTemplate": {
                    "metadata": {"creationTimestamp": None},
                    "spec": {
                        "template": {
                            **template(IMAGES),
                            "spec": {**pod_spec(IMAGES), "restartPolicy": "OnFailure"},
                        }
                    },
                },
            },
            "status": {},
        },
    ),
}


def review(
    name: str,
    operation: str,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None,
    *,
    sub: str = "",
) -> dict[str, Any]:
    group, version, kr = OBJECTS[name][:3]
    kind, resource = kr.split("/")
    gvk = {"group": group, "version": version, "kind": kind}
    gvr = {"group": group, "version": version, "resource": resource}
    options_kind = {
        "CREATE": "CreateOptions",
        "UPDATE": "UpdateOptions",
        "DELETE": "DeleteOptions",
    }[operation]
    source = obj or old or {}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{operation}/{sub}")),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": source["metadata"]["name"],
        "namespace": source["metadata"]["namespace"],
        "operation": operation,
        "userInfo": {
            "username": "kubernetes-admin",
            "groups": ["system:masters", "system:authenticated"],
        },
        "object": obj,
        "oldObject": old,
        "dryRun": False,
        "options": {
            "kind": options_kind,
            "apiVersion": "meta.k8s.io/v1",
            **({"fieldManager": "kubectl-client-side-apply"} if operation != "DELETE" else {}),
        },
    }
    if sub:
        request["subResource"] = sub
        request["requestSubResource"] = sub
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}


def stored(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"].update(
        uid=str(uuid.uuid5(uuid.NAMESPACE_DNS, out["metadata"]["name"])),
        resourceVersion="1234",
        creationTimestamp="2026-11-27T10:00:00Z",
    )
    return out


def cases() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, (_, _, _, obj) in OBJECTS.items():
        out[f"{name}-create"] = review(name, "CREATE", obj, None)
        old = stored(obj)
        new = copy.deepcopy(old)
        spec = new["spec"]["containers"] if name == "pod" else None
        if spec is None:
            node = new["spec"]
            if name == "cronjob":
                node = node["jobTemplate"]["spec"]
            spec = node["template"]["spec"]["containers"]
        spec[0]["image"] = f"{REG}/web:v2"
        out[f"{name}-update"] = review(name, "UPDATE", new, old)
        out[f"{name}-delete"] = review(name, "DELETE", None, old)
    pod = stored(OBJECTS["pod"][3])
    ephemeral = copy.deepcopy(pod)
    ephemeral["spec"]["ephemeralContainers"] = [
        {**container("debugger", f"{REG}/tools/debug:v1"), "targetContainerName": "c0"}
    ]
    out["pod-ephemeralcontainers"] = review(
        "pod", "UPDATE", ephemeral, pod, sub="ephemeralcontainers"
    )
    status = copy.deepcopy(pod)
    status["status"] = {"phase": "Running"}
    out["pod-status"] = review("pod", "UPDATE", status, pod, sub="status")
    relabelled = copy.deepcopy(pod)
    relabelled["metadata"]["labels"] = {"tier": "front"}
    out["pod-update-labels-only"] = review("pod", "UPDATE", relabelled, pod)
    return out


def main() -> None:
    for path in HERE.glob("*.json"):
        path.unlink()
    for name, data in cases().items():
        (HERE / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
