"""Realistic AdmissionReviews for the load: Pods as the ReplicaSet controller creates them
(after the in-tree admission plugins: service-account volume, default tolerations) and
Deployments as `kubectl apply` sends them (last-applied annotation, managedFields), each with
2 to 6 containers whose images are the local registry's demo set (streamable, plain,
multi-arch, Docker v2, many referrers) plus a public image outside ACR.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from typing import Any

# image name (in the demo set, see hack/seed_registry.py) per container, cycled
DEMO_IMAGES = ("streamable", "plain", "multiarch", "docker-v2", "many-referrers", "config-form")
PUBLIC_IMAGE = "mcr.microsoft.com/oss/nginx/nginx:1.25.3"
CONTAINER_COUNTS = (2, 3, 4, 6)


def demo_images(registry: str, namespace: str) -> list[str]:
    return [f"{registry}/{namespace}/{name}:v1" for name in DEMO_IMAGES]


def _container(name: str, image: str, k: int, *, sa_mount: bool) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--port", str(8080 + k), "--log-level", "info"],
        "env": [
            {"name": "APP_NAME", "value": name},
            {"name": "APP_ENV", "value": "production"},
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector:4317"},
            {
                "name": "POD_NAME",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
            },
        ],
        "ports": [{"containerPort": 8080 + k, "name": f"http{k}", "protocol": "TCP"}],
        "resources": {
            "limits": {"cpu": "500m", "memory": "256Mi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": 8080 + k, "scheme": "HTTP"},
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"mountPath": "/tmp", "name": "tmp"}],
    }
    if sa_mount:
        c["volumeMounts"].append(
            {
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "name": "kube-api-access-x7k2p",
                "readOnly": True,
            }
        )
    return c


def _pod_spec(images: Sequence[str], *, sa_mount: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            _container(f"c{k}", image, k, sa_mount=sa_mount) for k, image in enumerate(images)
        ],
        "dnsPolicy": "ClusterFirst",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {"fsGroup": 2000},
        "serviceAccountName": "default",
        "terminationGracePeriodSeconds": 30,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if sa_mount:
        spec.update(
            enableServiceLinks=True,
            preemptionPolicy="PreemptLowerPriority",
            priority=0,
            serviceAccount="default",
            tolerations=[
                {
                    "effect": "NoExecute",
                    "key": f"node.kubernetes.io/{t}",
                    "operator": "Exists",
                    "tolerationSeconds": 300,
                }
                for t in ("not-ready", "unreachable")
            ],
        )
        spec["volumes"].append(
            {
                "name": "kube-api-access-x7k2p",
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                "name": "kube-root-ca.crt",
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "fieldRef": {
                                            "apiVersion": "v1",
                                            "fieldPath": "metadata.namespace",
                                        },
                                        "path": "namespace",
                                    }
                                ]
                            }
                        },
                    ],
                },
            }
        )
    return spec


def _envelope(
    kind: dict[str, str], resource: str, obj: dict[str, Any], user: str
) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": {"group": kind["group"], "version": kind["version"], "resource": resource},
            "requestKind": kind,
            "requestResource": {
                "group": kind["group"],
                "version": kind["version"],
                "resource": resource,
            },
            "name": meta.get("name", ""),
            "namespace": meta["namespace"],
            "operation": "CREATE",
            "userInfo": {
                "username": user,
                "uid": "8d7b6f0e-2f4e-4f7e-9a57-0d1c3b7f5a11",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {
                "apiVersion": "meta.k8s.io/v1",
                "kind": "CreateOptions",
                "fieldManager": "kubectl-client-side-apply"
                if kind["kind"] == "Deployment"
                else "kube-controller-manager",
            },
        },
    }


def pod_review(images: Sequence[str], namespace: str = "shop", app: str = "web") -> dict[str, Any]:
    """A Pod as the ReplicaSet controller creates it (generateName, owner, labels)."""
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{app}-7c9f8d6b5d-",
            "namespace": namespace,
            "labels": {"app": app, "pod-template-hash": "7c9f8d6b5d", "tier": "frontend"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{app}-7c9f8d6b5d",
                    "uid": "3f0c0a35-7e59-4a53-9d9e-6a7bb1d0c2f4",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-01-10T10:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {}}},
                }
            ],
        },
        "spec": _pod_spec(images, sa_mount=True),
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }
    return _envelope(
        {"group": "", "version": "v1", "kind": "Pod"},
        "pods",
        obj,
        "system:serviceaccount:kube-system:replicaset-controller",
    )


def deployment_review(
    images: Sequence[str], namespace: str = "shop", app: str = "web"
) -> dict[str, Any]:
    """A Deployment as `kubectl apply` sends it (last-applied annotation, managedFields)."""
    template_spec = _pod_spec(images, sa_mount=False)
    applied = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": template_spec},
        },
    }
    obj: dict[str, Any] = copy.deepcopy(applied)
    obj["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied) + "\n"
    }
    obj["metadata"]["managedFields"] = [
        {
            "manager": "kubectl-client-side-apply",
            "operation": "Update",
            "apiVersion": "apps/v1",
            "time": "2026-01-10T10:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {}, "f:labels": {}}, "f:spec": {}},
        }
    ]
    obj["spec"].update(
        progressDeadlineSeconds=600,
        revisionHistoryLimit=10,
        strategy={
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
        },
    )
    return _envelope(
        {"group": "apps", "version": "v1", "kind": "Deployment"}, "deployments", obj, "alice"
    )


def review_set(registry: str, namespace: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, review) pairs: a Pod and a Deployment for each container count."""
    pool = [*demo_images(registry, namespace), PUBLIC_IMAGE]
    out = []
    for n, count in enumerate(CONTAINER_COUNTS):
        images = [pool[(n + k) % len(pool)] for k in range(count)]
        out.append((f"pod-{count}c", pod_review(images, app=f"web{count}")))
        out.append((f"deployment-{count}c", deployment_review(images, app=f"web{count}")))
    return out


def bodies_file_lines(reviews: Sequence[tuple[str, dict[str, Any]]], paths: Sequence[str]) -> str:
    """The wrk script's input: "PATH<TAB>BODY" per line, every review on every path."""
    lines = []
    for path in paths:
        for _, review in reviews:
            lines.append(f"{path}\t{json.dumps(review, separators=(',', ':'))}")
    return "\n".join(lines) + "\n"
