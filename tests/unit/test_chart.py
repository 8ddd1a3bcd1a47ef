"""The Helm chart, rendered by the real `helm` (built into the cache by hack/k8s-binaries.sh
when missing) with several sets of values; the objects are checked against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict) and against what the chart promises: safe
webhook defaults, every judged kind, hardened pods, least-privilege RBAC, the three
certificate modes and the out-of-cluster URL mode. Also the Dockerfile."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.cli.main import parser
from app.core.policy import Policy, parse_policy
from app.webhook.reload import load_policy

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "chart"
RELEASE, NAMESPACE = "sg", "streamgate-system"
FULLNAME = "sg-streamgate"
CA_B64 = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
).decode()
URL_VALUES = {
    "webhook": {"url": "https://127.0.0.1:9443", "caBundle": CA_B64},
    "deployment": {"enabled": False},
}
PROVIDED = {
    "certificates": {"mode": "provided", "provided": {"secretName": "mine", "caBundle": CA_B64}}
}
CERT_MANAGER = {"certificates": {"mode": "cert-manager"}}
JUDGED = {
    ("", "pods"),
    ("", "pods/ephemeralcontainers"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
}


@cache
def helm_binary() -> str:
    """The cached helm, else whatever hack/k8s-binaries.sh provides (it builds it)."""
    cache_dir = Path(os.environ.get("STREAMGATE_CACHE", Path.home() / ".cache" / "streamgate"))
    cached = cache_dir / "bin" / "helm"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    out = subprocess.run(
        [str(ROOT / "hack" / "k8s-binaries.sh"), "--print-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    found = Path(out.stdout.strip().splitlines()[-1]) / "helm"
    assert found.is_file(), f"hack/k8s-binaries.sh did not provide helm in {found.parent}"
    return str(found)


def helm(*args: str, values: dict[str, Any] | None = None, check: bool = True):
    cmd = [helm_binary(), *args]
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/streamgate-helm-cache"}
    env.pop("KUBECONFIG", None)
    if values is not None:
        cmd += ["--values", "-"]
    return subprocess.run(
        cmd,
        input=json.dumps(values or {}),
        capture_output=True,
        text=True,
        check=check,
        env=env,
    )


def render(
    values: dict[str, Any] | None = None, *extra: str, hooks: bool = False
) -> list[dict[str, Any]]:
    """The release's objects (`hooks`: also the Helm hooks, e.g. the pre-delete Job)."""
    flags = [*extra] if hooks else ["--no-hooks", *extra]
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *flags, values=values)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_error(values: dict[str, Any]) -> str:
    out = helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values, check=False
    )
    assert out.returncode != 0, "helm template accepted bad values"
    return out.stderr


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def webhooks(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in docs:
        if d["kind"].endswith("WebhookConfiguration"):
            out.extend((d["kind"], w) for w in d["webhooks"])
    return out


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render()


# ---- lint and the Kubernetes schemas ----------------------------------------------------


MODES = {
    "default": {},
    "cert-manager": CERT_MANAGER,
    "cert-manager-issuer": {
        "certificates": {
            "mode": "cert-manager",
            "certManager": {"issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"}},
        }
    },
    "provided": PROVIDED,
    "url": URL_VALUES,
    "everything-on": {
        "networkPolicy": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Admission"}},
        "events": {"enabled": True, "intervalSeconds": 600},
        "reports": {"enabled": True, "api": "openreports.io"},
        "workloadIdentity": {"clientId": "00000000-0000-0000-0000-000000000001"},
        "podAntiAffinity": {"type": "hard"},
        "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10},
    },
}


@pytest.mark.parametrize("values", MODES.values(), ids=MODES.keys())
def test_lint_strict(values):
    out = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=values, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("values", MODES.values(), ids=MODES.keys())
def test_objects_valid_against_kubernetes_schemas(values, version):
    docs = render(values, "--kube-version", version, hooks=True)  # the pre-delete Job too
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(("cert-manager.io/", "monitoring.coreos.com/")):
            continue  # CRDs: not in the Kubernetes schemas
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 2


def test_kube_version_floor():
    out = helm("template", RELEASE, str(CHART), "--kube-version", "1.25.0", check=False)
    assert out.returncode != 0 and "kubeVersion" in out.stderr
    render({}, "--kube-version", "1.26.0")


# ---- the webhook configurations ---------------------------------------------------------


def test_both_configurations_with_safe_defaults(default):
    hooks = webhooks(default)
    assert sorted(k for k, _ in hooks) == [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ]
    for kind, w in hooks:
        assert w["failurePolicy"] == "Ignore"
        assert w["timeoutSeconds"] == 5
        assert w["sideEffects"] == "None"
        assert w["admissionReviewVersions"] == ["v1"]
        path = "/validate" if kind.startswith("Validating") else "/mutate"
        assert w["clientConfig"]["service"] == {
            "name": FULLNAME,
            "namespace": NAMESPACE,
            "path": path,
            "port": 443,
        }
        assert "caBundle" not in w["clientConfig"]  # self-managed: the pods patch it
    mutating = one(default, "MutatingWebhookConfiguration")["webhooks"][0]
    assert mutating["reinvocationPolicy"] == "Never"
    assert one(default, "ValidatingWebhookConfiguration")["metadata"]["name"] == FULLNAME


def test_rules_cover_every_judged_kind_on_create_and_update(default):
    for _, w in webhooks(default):
        covered = set()
        for rule in w["rules"]:
            assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
            assert rule["apiVersions"] == ["v1"]
            assert rule["scope"] == "Namespaced"
            covered |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
        assert covered == JUDGED


def test_namespace_selector_excludes_kube_system_release_namespace_and_off(default):
    for _, w in webhooks(default):
        exprs = {e["key"]: e for e in w["namespaceSelector"]["matchExpressions"]}
        names = exprs["kubernetes.io/metadata.name"]
        assert names["operator"] == "NotIn"
        assert {"kube-system", NAMESPACE} <= set(names["values"])
        # Issue 18 finding 5: whoever can label a namespace must not take it away from the
        # webhook unless the policy lets labels relax the mode.
        assert "streamgate.io/mode" not in exprs
    relaxed = render({"policy": {"namespaceLabel": {"allowRelax": True}}})
    for _, w in webhooks(relaxed):
        exprs = {e["key"]: e for e in w["namespaceSelector"]["matchExpressions"]}
        assert exprs["streamgate.io/mode"] == {
            "key": "streamgate.io/mode",
            "operator": "NotIn",
            "values": ["off"],
        }


def test_policy_exemptions_and_off_namespaces_never_reach_the_webhook():
    docs = render(
        {
            "policy": {
                "exemptions": {"namespaces": ["kube-system", "monitoring"]},
                "namespaceModes": {"legacy": "off", "payments": "enforce"},
            },
            "webhook": {
                "excludeNamespaces": ["gatekeeper-system"],
                "namespaceSelectorExpressions": [
                    {"key": "streamgate.io/enabled", "operator": "In", "values": ["true"]}
                ],
            },
        }
    )
    for _, w in webhooks(docs):
        exprs = w["namespaceSelector"]["matchExpressions"]
        names = next(e for e in exprs if e["key"] == "kubernetes.io/metadata.name")["values"]
        assert sorted(names) == sorted(
            ["kube-system", NAMESPACE, "monitoring", "legacy", "gatekeeper-system"]
        )
        assert {"key": "streamgate.io/enabled", "operator": "In", "values": ["true"]} in exprs


def test_match_conditions_skip_null_objects_and_unchanged_specs_from_1_28(default):
    for _, w in webhooks(default):
        conds = {c["name"]: c["expression"] for c in w["matchConditions"]}
        # No "not-exempt" condition (issue 18 finding 5): the annotation counts only where the
        # policy honours it, which the apiserver can't know.
        assert set(conds) == {"has-object", "spec-changed"}
        assert conds["has-object"] == "object != null"
        assert not any("exempt" in e for e in conds.values())
    old = render({}, "--kube-version", "1.27.0")
    assert all("matchConditions" not in w for _, w in webhooks(old))
    off = render({"webhook": {"matchConditions": False}})
    assert all("matchConditions" not in w for _, w in webhooks(off))


def test_failure_policy_and_timeout_are_values():
    docs = render({"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10}})
    assert {(w["failurePolicy"], w["timeoutSeconds"]) for _, w in webhooks(docs)} == {("Fail", 10)}


def test_url_mode_renders_only_the_webhooks_with_url_and_ca_bundle():
    docs = render(URL_VALUES)
    assert kinds(docs) == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    urls = {}
    for kind, w in webhooks(docs):
        assert "service" not in w["clientConfig"]
        assert w["clientConfig"]["caBundle"] == CA_B64
        urls[kind] = w["clientConfig"]["url"]
        assert w["failurePolicy"] == "Ignore"
    assert urls == {
        "ValidatingWebhookConfiguration": "https://127.0.0.1:9443/validate",
        "MutatingWebhookConfiguration": "https://127.0.0.1:9443/mutate",
    }
    trailing = render(
        {**URL_VALUES, "webhook": {**URL_VALUES["webhook"], "url": "https://127.0.0.1:9443/"}}
    )
    assert {w["clientConfig"]["url"] for _, w in webhooks(trailing)} == set(urls.values())


def test_one_webhook_can_be_left_out():
    docs = render({"webhook": {"mutating": {"enabled": False}}})
    assert "MutatingWebhookConfiguration" not in kinds(docs)
    assert "ValidatingWebhookConfiguration" in kinds(docs)


def test_one_call_mode_registers_only_the_mutating_webhook_on_admit():
    docs = render({"webhook": {"calls": "one", "reinvocationPolicy": "IfNeeded"}})
    assert "ValidatingWebhookConfiguration" not in kinds(docs)
    ((kind, hook),) = webhooks(docs)
    assert kind == "MutatingWebhookConfiguration"
    assert hook["name"] == "admit.streamgate.io"
    assert hook["clientConfig"]["service"]["path"] == "/admit"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    url = render({**URL_VALUES, "webhook": {**URL_VALUES["webhook"], "calls": "one"}})
    assert [w["clientConfig"]["url"] for _, w in webhooks(url)] == ["https://127.0.0.1:9443/admit"]
    assert "/webhook/calls" in render_error({"webhook": {"calls": "three"}})


# ---- the Deployment ---------------------------------------------------------------------


def test_default_objects(default):
    assert kinds(default) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "MutatingWebhookConfiguration",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PriorityClass",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingWebhookConfiguration",
        ]
    )
    cluster_wide = (
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "PriorityClass",
    )
    for d in default:
        if not d["kind"].startswith(cluster_wide) and not d["kind"].endswith(
            "WebhookConfiguration"
        ):
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


def test_pods_are_hardened(default):
    spec = one(default, "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is True  # the watches need it
    c = container(default)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # Pod Security "restricted" allows these volume types only (and no hostPath, no hostPort)
    assert {next(k for k in v if k != "name") for v in spec["volumes"]} <= {
        "emptyDir",
        "configMap",
        "secret",
        "projected",
    }
    assert all("hostPort" not in p for p in c["ports"])
    tmp = next(m for m in c["volumeMounts"] if m["name"] == "tmp")
    assert tmp["mountPath"] == "/tmp"
    sa = one(default, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_probes_https_on_readyz_and_healthz(default):
    c = container(default)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert c["ports"] == [
        {"name": "https", "containerPort": 8443, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    svc = one(default, "Service")
    assert svc["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"},
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
    ]


def test_two_replicas_spread_across_nodes_with_a_pdb(default):
    dep = one(default, "Deployment")
    assert dep["spec"]["replicas"] == 2
    spec = dep["spec"]["template"]["spec"]
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    keys = {t["topologyKey"] for t in spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    pdb = one(default, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    hard = render({"podAntiAffinity": {"type": "hard"}})
    required = one(hard, "Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in required


def test_self_managed_args(default):
    args = container(default)["args"]
    assert "--manage-certs" in args
    assert f"--cert-secret={FULLNAME}-tls" in args
    assert f"--cert-service={FULLNAME}" in args
    assert f"--webhook-config={FULLNAME}" in args
    assert "--cert-namespace=$(POD_NAMESPACE)" in args
    assert "--cert-dir=/tmp/certs" in args
    assert "--policy=/etc/streamgate/policy/policy.yaml" in args
    env = {e["name"]: e for e in container(default)["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert not any(a.startswith("--cert=") for a in args)


def test_workload_identity():
    client_id = "11111111-2222-3333-4444-555555555555"
    docs = render({"workloadIdentity": {"clientId": client_id}})
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == client_id
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    plain = render()
    assert "annotations" not in one(plain, "ServiceAccount")["metadata"]
    assert (
        "azure.workload.identity/use"
        not in one(plain, "Deployment")["spec"]["template"]["metadata"]["labels"]
    )


def _parse_serve_args(docs: list[dict[str, Any]]) -> Any:
    """The container's args through the real `streamgate serve` parser (the image's entry
    point): argparse exits on an unknown flag."""
    return parser().parse_args(["serve", *container(docs)["args"]])


@pytest.mark.parametrize("values", [CERT_MANAGER, PROVIDED], ids=["cert-manager", "provided"])
def test_container_args_are_flags_streamgate_serve_knows(values):
    args = _parse_serve_args(render(values))
    assert args.kubeconfig == "in-cluster"
    assert str(args.cert) == "/etc/streamgate/tls/tls.crt"
    assert str(args.policy) == "/etc/streamgate/policy/policy.yaml"
    assert args.port == 8443


def test_self_managed_args_are_flags_streamgate_serve_knows(default):
    args = _parse_serve_args(default)
    assert args.manage_certs is True
    assert args.cert_namespace and args.cert_secret and args.webhook_config


def test_server_stack_is_a_value_fast_by_default(default):
    args = _parse_serve_args(default)
    assert (args.http, args.loop) == ("httptools", "uvloop")
    portable = _parse_serve_args(render({"server": {"http": "h11", "loop": "asyncio"}}))
    assert (portable.http, portable.loop) == ("h11", "asyncio")


# ---- RBAC -------------------------------------------------------------------------------


def _rules(doc: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    out = []
    for r in doc["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                out.append((g, res, tuple(sorted(r["verbs"])), tuple(r.get("resourceNames", ()))))
    return sorted(out)


def test_rbac_least_privilege_self_managed(default):
    watch = ("list", "watch")
    assert _rules(one(default, "ClusterRole")) == sorted(
        [
            ("", "nodes", watch, ()),
            ("", "namespaces", watch, ()),
            ("node.k8s.io", "runtimeclasses", watch, ()),
            (
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                ("get", "patch"),
                (FULLNAME,),
            ),
            (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                ("get", "patch"),
                (FULLNAME,),
            ),
        ]
    )
    assert _rules(one(default, "Role")) == sorted(
        [
            ("", "secrets", ("create",), ()),
            ("", "secrets", ("get", "update"), (f"{FULLNAME}-tls",)),
        ]
    )
    for doc in (one(default, "ClusterRoleBinding"), one(default, "RoleBinding")):
        assert doc["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]


@pytest.mark.parametrize("values", [CERT_MANAGER, PROVIDED], ids=["cert-manager", "provided"])
def test_rbac_without_self_managed_certificates_is_read_only(values):
    docs = render(values)
    assert "Role" not in kinds(docs)
    for _, _, verbs, _ in _rules(one(docs, "ClusterRole")):
        assert verbs == ("list", "watch")


def test_events_off_by_default_and_on_with_their_rbac_rule(default):
    args = _parse_serve_args(default)
    assert args.events is False
    assert all(res != "events" for _, res, _, _ in _rules(one(default, "ClusterRole")))
    docs = render({"events": {"enabled": True, "intervalSeconds": 120}})
    args = _parse_serve_args(docs)
    assert args.events is True and args.event_interval == 120.0
    assert args.kubeconfig == "in-cluster"
    rules = _rules(one(docs, "ClusterRole"))
    assert ("", "events", ("create", "patch"), ()) in rules
    # an Event only on an object confirmed to exist: read (get only) the judged kinds
    reads = {(group, res) for group, res, verbs, _ in rules if verbs == ("get",)}
    assert reads == {
        ("", "pods"),
        ("", "replicationcontrollers"),
        *{("apps", r) for r in ("deployments", "statefulsets", "daemonsets", "replicasets")},
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    }
    # nothing else was added: events are the only write beyond the certificate rules
    assert len(rules) == len(_rules(one(default, "ClusterRole"))) + 1 + len(reads)
    # Events are a side effect of admission, never made for a dry run
    # (tests/unit/telemetry/test_events.py): the configurations say NoneOnDryRun, not None.
    assert {w["sideEffects"] for _, w in webhooks(default)} == {"None"}
    assert {w["sideEffects"] for _, w in webhooks(docs)} == {"NoneOnDryRun"}


def test_reports_off_by_default_and_on_with_their_rbac_and_lease(default):
    args = _parse_serve_args(default)
    assert args.reports is False
    assert ("Role", f"{FULLNAME}-reporter") not in {
        (d["kind"], d["metadata"]["name"]) for d in default
    }
    docs = render({"reports": {"enabled": True, "resyncSeconds": 60, "writesPerSecond": 2}})
    args = _parse_serve_args(docs)
    assert args.reports is True and args.kubeconfig == "in-cluster"
    assert (args.reports_api, args.lease_name) == ("policyreport", f"{FULLNAME}-reporter")
    assert args.lease_namespace == "$(POD_NAMESPACE)"  # the pod's env, set by the kubelet
    assert (args.resync, args.writes_per_second, args.lease_seconds) == (60.0, 2.0, 15)
    rules = _rules(one(docs, "ClusterRole"))
    added = sorted(set(rules) - set(_rules(one(default, "ClusterRole"))))
    watch = ("list", "watch")
    assert added == sorted(
        [
            ("", "pods", watch, ()),
            ("", "replicationcontrollers", watch, ()),
            *[
                ("apps", r, watch, ())
                for r in ("deployments", "statefulsets", "daemonsets", "replicasets")
            ],
            ("batch", "jobs", watch, ()),
            ("batch", "cronjobs", watch, ()),
            ("wgpolicyk8s.io", "policyreports", ("create", "delete", "get", "list", "update"), ()),
        ]
    )
    assert _rules(one(docs, "Role", f"{FULLNAME}-reporter")) == sorted(
        [
            ("coordination.k8s.io", "leases", ("create",), ()),
            ("coordination.k8s.io", "leases", ("get", "update"), (f"{FULLNAME}-reporter",)),
        ]
    )
    binding = one(docs, "RoleBinding", f"{FULLNAME}-reporter")
    assert binding["roleRef"]["name"] == f"{FULLNAME}-reporter"
    assert any(e["name"] == "POD_NAME" for e in container(docs)["env"])  # the Lease identity
    docs = render({"reports": {"enabled": True, "api": "openreports.io"}})
    assert _parse_serve_args(docs).reports_api == "openreports"
    assert ("openreports.io", "reports", ("create", "delete", "get", "list", "update"), ()) in (
        _rules(one(docs, "ClusterRole"))
    )


def test_ca_bundle_only_policy_with_self_managed_certificates_on_1_30_and_later():
    docs = render({}, "--kube-version", "1.34.0")
    policy = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resourceNames"] == [f"{RELEASE}-streamgate"]
    assert rule["operations"] == ["UPDATE", "DELETE"]
    (cond,) = policy["spec"]["matchConditions"]
    sa = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-streamgate"
    assert cond["expression"] == f'request.userInfo.username == "{sa}"'
    assert policy["spec"]["failurePolicy"] == "Fail"
    kept = next(v for v in policy["spec"]["variables"] if v["name"] == "webhooksKept")
    for field in (
        "rules",
        "failurePolicy",
        "namespaceSelector",
        "objectSelector",
        "matchConditions",
        "clientConfig.service",
        "clientConfig.url",
    ):
        assert f"w.{field} == o.{field}" in kept["expression"], field
    assert "caBundle" not in kept["expression"]
    for values, version in (
        ({}, "1.29.0"),  # no ValidatingAdmissionPolicy v1 yet
        ({"certificates": {"selfManaged": {"caBundleOnlyPolicy": False}}}, "1.34.0"),
        ({"certificates": {"mode": "cert-manager"}}, "1.34.0"),  # no patch rights to narrow
    ):
        assert "ValidatingAdmissionPolicy" not in kinds(render(values, "--kube-version", version))


# ---- policy -----------------------------------------------------------------------------


def test_policy_values_match_the_default_policy_file():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert parse_policy(values["policy"]) == load_policy(ROOT / "app" / "default-policy.yaml")
    assert values["policy"] == yaml.safe_load((ROOT / "app" / "default-policy.yaml").read_text())


def test_policy_configmap_is_a_valid_policy_and_rolls_the_pods(default):
    cm = one(default, "ConfigMap")
    assert cm["metadata"]["name"] == f"{FULLNAME}-policy"
    assert parse_policy(yaml.safe_load(cm["data"]["policy.yaml"])) == Policy()
    strict = render(
        {
            "policy": {
                "mode": "enforce",
                "rules": {"digestPinned": "deny"},
                "registry": {"deadlineSeconds": 1.5},
                "pools": {"kubelet": {"minVersion": "1.30"}},
            }
        }
    )
    policy = parse_policy(yaml.safe_load(one(strict, "ConfigMap")["data"]["policy.yaml"]))
    assert policy.mode == "enforce" and policy.rules.digest_pinned == "deny"
    assert policy.registry.deadline_seconds == 1.5
    checksum = "checksum/policy"
    before = one(default, "Deployment")["spec"]["template"]["metadata"]["annotations"][checksum]
    after = one(strict, "Deployment")["spec"]["template"]["metadata"]["annotations"][checksum]
    assert before != after


# ---- certificate modes ------------------------------------------------------------------


def test_cert_manager_mode():
    docs = render(CERT_MANAGER)
    assert kinds(docs).count("Issuer") == 2 and kinds(docs).count("Certificate") == 2
    ca = one(docs, "Certificate", f"{FULLNAME}-ca")
    assert ca["spec"]["isCA"] is True
    serving = one(docs, "Certificate", f"{FULLNAME}-serving")
    svc = f"{FULLNAME}.{NAMESPACE}"
    assert serving["spec"]["dnsNames"] == [FULLNAME, svc, f"{svc}.svc", f"{svc}.svc.cluster.local"]
    assert serving["spec"]["issuerRef"] == {"kind": "Issuer", "name": f"{FULLNAME}-ca"}
    assert serving["spec"]["secretName"] == f"{FULLNAME}-tls"
    for d in docs:
        if d["kind"].endswith("WebhookConfiguration"):
            annotations = d["metadata"]["annotations"]
            assert (
                annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}-serving"
            )
    c = container(docs)
    assert "--cert=/etc/streamgate/tls/tls.crt" in c["args"] and "--manage-certs" not in c["args"]
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "tls",
        "secret": {"secretName": f"{FULLNAME}-tls", "defaultMode": 0o440},
    } in volumes


def test_cert_manager_with_an_existing_issuer():
    docs = render(MODES["cert-manager-issuer"])
    assert "Issuer" not in kinds(docs)
    serving = one(docs, "Certificate")
    assert serving["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}


def test_provided_mode():
    docs = render(PROVIDED)
    assert {w["clientConfig"]["caBundle"] for _, w in webhooks(docs)} == {CA_B64}
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("secret", {}).get("secretName") == "mine" for v in volumes)
    assert "Certificate" not in kinds(docs)


# ---- values that must be refused, with a message that says why ---------------------------


BAD = {
    "replicas-0": ({"replicas": 0}, "/replicas"),
    "failure-policy": ({"webhook": {"failurePolicy": "Never"}}, "'Ignore', 'Fail'"),
    "mode": ({"policy": {"mode": "strict"}}, "'enforce', 'warn', 'audit', 'off'"),
    "rule-action": (
        {"policy": {"rules": {"notStreamable": "block"}}},
        "/policy/rules/notStreamable",
    ),
    "timeout-31": ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
    "timeout-0": ({"webhook": {"timeoutSeconds": 0}}, "/webhook/timeoutSeconds"),
    "cert-mode": (
        {"certificates": {"mode": "vault"}},
        "'self-managed', 'cert-manager', 'provided'",
    ),
    "typo": ({"replicass": 3}, "'replicass' not allowed"),
    "event-interval-0": ({"events": {"enabled": True, "intervalSeconds": 0}}, "/events"),
    "http-url": ({"webhook": {"url": "http://127.0.0.1:9443", "caBundle": CA_B64}}, "/webhook/url"),
    "url-without-ca": (
        {"webhook": {"url": "https://127.0.0.1:9443"}, "deployment": {"enabled": False}},
        "webhook.url needs webhook.caBundle",
    ),
    "provided-without-secret": (
        {"certificates": {"mode": "provided", "provided": {"caBundle": CA_B64}}},
        "needs certificates.provided.secretName",
    ),
    "provided-without-ca": (
        {"certificates": {"mode": "provided", "provided": {"secretName": "mine"}}},
        "needs certificates.provided.caBundle",
    ),
    "no-deployment-no-url": ({"deployment": {"enabled": False}}, "set webhook.url"),
    "deadline-over-timeout": (
        {"policy": {"registry": {"deadlineSeconds": 4}}, "webhook": {"timeoutSeconds": 3}},
        "policy.registry.deadlineSeconds (4 s) must be below webhook.timeoutSeconds (3 s)",
    ),
    "root-user": ({"runAsUser": 0}, "/runAsUser"),
    "bad-client-id": ({"workloadIdentity": {"clientId": "me"}}, "/workloadIdentity/clientId"),
    "client-ca-not-base64": ({"clientAuth": {"caBundle": "-----BEGIN"}}, "/clientAuth/caBundle"),
    "anti-affinity-twice": ({"affinity": {"podAntiAffinity": {}}}, "/affinity"),
    "privileged-port": ({"containerPort": 443}, "/containerPort"),
    "http-h2": ({"server": {"http": "h2"}}, "/server/http"),
    "loop-trio": ({"server": {"loop": "trio"}}, "/server/loop"),
    "reports-api": ({"reports": {"enabled": True, "api": "kyverno.io"}}, "/reports/api"),
    "reports-lease-2": ({"reports": {"leaseSeconds": 2}}, "/reports/leaseSeconds"),
    "reports-writes-0": ({"reports": {"writesPerSecond": 0}}, "/reports/writesPerSecond"),
}


@pytest.mark.parametrize(("values", "message"), BAD.values(), ids=BAD.keys())
def test_bad_values_are_refused_with_a_clear_message(values, message):
    assert message in render_error(values)


def test_lint_refuses_bad_values_too():
    out = helm("lint", "--strict", str(CHART), values={"replicas": 0}, check=False)
    assert out.returncode != 0 and "/replicas" in out.stdout + out.stderr


# ---- extras -----------------------------------------------------------------------------


def test_network_policy_and_service_monitor():
    docs = render(MODES["everything-on"])
    netpol = one(docs, "NetworkPolicy")
    assert [r["ports"] for r in netpol["spec"]["ingress"]] == [
        [{"port": "https", "protocol": "TCP"}],
        [{"port": "metrics", "protocol": "TCP"}],
    ]
    egress_ports = {p["port"] for rule in netpol["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443}
    monitor = one(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    # /metrics is plain HTTP on its own port: the webhook port serves only admission.
    assert endpoint == {"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "30s"}


KONNECTIVITY = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"app": "konnectivity-agent"}},
}


def test_network_policy_on_by_default_and_open_only_to_the_apiserver_on_aks(default):
    netpol = one(default, "NetworkPolicy")
    webhook, metrics = netpol["spec"]["ingress"]
    # AKS without API Server VNet Integration: the apiserver's calls come through the
    # konnectivity agent's pods in kube-system; no other pod may post reviews
    assert webhook == {"ports": [{"port": "https", "protocol": "TCP"}], "from": [KONNECTIVITY]}
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert metrics == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [monitoring]}


def test_network_policy_for_api_server_vnet_integration_and_own_peers():
    extra = {"podSelector": {"matchLabels": {"probe": "yes"}}}
    scraper = {"namespaceSelector": {"matchLabels": {"team": "obs"}}}
    docs = render(
        {
            "networkPolicy": {
                "apiserver": {"konnectivity": {"enabled": False}, "cidrs": ["10.225.0.0/28"]},
                "ingressFrom": [extra],
                "metricsFrom": [scraper],
            }
        }
    )
    webhook, metrics = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert webhook["from"] == [{"ipBlock": {"cidr": "10.225.0.0/28"}}, extra]
    assert metrics["from"] == [scraper]
    assert "NetworkPolicy" not in kinds(render({"networkPolicy": {"enabled": False}}))


def test_network_policy_that_admits_nobody_is_refused():
    err = render_error({"networkPolicy": {"apiserver": {"konnectivity": {"enabled": False}}}})
    assert "nothing may reach the webhook port" in err
    assert "networkPolicy.apiserver.cidrs" in err
    assert "cidrs" in render_error({"networkPolicy": {"apiserver": {"cidrs": ["10.0.0.1"]}}})


def test_values_schema_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} missing from values.schema.json"
                walk(sub, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


# ---- the image --------------------------------------------------------------------------


def _stages(dockerfile: str) -> list[list[str]]:
    """Instructions (continuations joined, comments dropped) per build stage."""
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    build, final = _stages(text)
    # The default base: the official Python 3.11 slim image on bookworm (the Debian release
    # hack/image.sh builds its stand-in base from), pinned by digest.
    assert re.search(
        r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$", text, re.M
    )
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    user = next(line for line in final if line.startswith("USER "))
    uid, gid = user.split()[1].split(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (int(uid), int(gid)) == (values["runAsUser"], values["runAsGroup"])
    # The entry point is the virtualenv's, wherever the base keeps its Python.
    assert final[-1] == 'ENTRYPOINT ["/opt/streamgate/bin/streamgate", "serve"]'
    assert "RUN python3 -m venv /opt/streamgate" in build
    # The OCI labels people expect; the license is pyproject's.
    labels = next(line for line in final if line.startswith("LABEL "))
    for key in ("source", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f'org.opencontainers.image.licenses="{pyproject["project"]["license"]}"' in labels
    assert not any("HEALTHCHECK" in line for line in final)
    # The final stage only copies the virtualenv: no package manager, no compilers.
    assert not any(
        re.search(r"apt-get|apk |pip install|gcc|build-essential", line) for line in final
    )
    assert "COPY --from=build /opt/streamgate /opt/streamgate" in final
    # The package itself is installed from pyproject.toml, so its dependencies are exactly
    # pyproject's (pinned by constraints.txt when that file exists).
    assert any(line.startswith("COPY pyproject.toml") for line in build)
    install = next(line for line in build if "pip install" in line)
    assert re.search(r"pip install [^&]*\. ", install + " ")
    assert "--constraint constraints.txt" in install
    ignored = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and line[0] != "#"
    ]
    assert ignored[0] == "*" and {"!pyproject.toml", "!app/", "!README.md"} <= set(ignored)


# ---- metrics ----------------------------------------------------------------------------


def test_metrics_port_is_served_exposed_and_scraped_over_http():
    docs = render({"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True}})
    by_kind = {d["kind"]: d for d in docs}
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=9090" in container["args"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"} in (
        by_kind["Service"]["spec"]["ports"]
    )
    endpoint = by_kind["ServiceMonitor"]["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["scheme"], endpoint["path"]) == (
        "metrics",
        "http",
        "/metrics",
    )
    ingress_ports = [
        p["port"] for rule in by_kind["NetworkPolicy"]["spec"]["ingress"] for p in rule["ports"]
    ]
    assert ingress_ports == ["https", "metrics"]
    args = _parse_serve_args(docs)
    assert args.metrics_port == 9090


def test_metrics_can_be_turned_off():
    docs = render({"metrics": {"enabled": False}, "serviceMonitor": {"enabled": True}})
    kinds = [d["kind"] for d in docs]
    assert "ServiceMonitor" not in kinds
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert not any(a.startswith("--metrics-port") for a in container["args"])


# ---- client certificates from the apiserver (self-managed control planes) ----------------


def test_client_auth_mounts_the_ca_and_passes_client_ca(default):
    assert "--client-ca" not in " ".join(container(default)["args"])
    docs = render({"clientAuth": {"caBundle": CA_B64}})
    cm = one(docs, "ConfigMap", f"{FULLNAME}-client-ca")
    assert cm["data"]["ca.crt"].strip() == base64.b64decode(CA_B64).decode().strip()
    args = _parse_serve_args(docs)
    assert str(args.client_ca) == "/etc/streamgate/client-ca/ca.crt"
    c = container(docs)
    assert {"name": "client-ca", "mountPath": "/etc/streamgate/client-ca", "readOnly": True} in (
        c["volumeMounts"]
    )
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "client-ca", "configMap": {"name": f"{FULLNAME}-client-ca"}} in volumes
    # the probes stay on the webhook port: the server serves them without a certificate
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_alerts_and_dashboard_are_opt_in_and_name_metrics_streamgate_exposes():

    docs = render(
        {
            "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
            "grafanaDashboard": {"enabled": True},
            "webhook": {"timeoutSeconds": 10},
        }
    )
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    fullname = one(docs, "Service")["metadata"]["name"]
    assert all(f'job="{fullname}"' in e for e in exprs)  # the ServiceMonitor's job
    latency = next(e for e in exprs if "admission_duration" in e)
    assert latency.endswith("> 8")  # 0.8 of the 10 s webhook timeout
    board = one(docs, "ConfigMap", f"{fullname}-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(board["data"]["streamgate.json"])
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    # Every streamgate_* name they read is one the code registers (metrics.py, serve.py).
    source = "".join(
        (ROOT / "app" / f).read_text() for f in ("telemetry/metrics.py", "webhook/serve.py")
    )
    for name in set(re.findall(r"streamgate_[a-z_]+", " ".join(exprs + queries))):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert f'"{base}"' in source, name


# ---- helm uninstall's pre-delete hook ------------------------------------------------------


def test_the_pre_delete_hook_deletes_only_this_releases_webhook_configurations():
    docs = render(hooks=True)
    hooks = [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]
    assert sorted(d["kind"] for d in hooks) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
        "ServiceAccount",
    ]
    for d in hooks:
        annotations = d["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    (role,) = [d for d in hooks if d["kind"] == "ClusterRole"]
    assert role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
            "resourceNames": [FULLNAME],
            "verbs": ["get", "delete"],
        }
    ]
    (job,) = [d for d in hooks if d["kind"] == "Job"]
    # RBAC and ServiceAccount exist before the Job runs
    assert int(role["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["streamgate", "uninstall-hook"]
    assert f"--webhook-config={FULLNAME}" in c["args"] and "--kubeconfig=in-cluster" in c["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Pod Security "restricted" (the real check: tests/e2e/test_uninstall_hook_e2e.py)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert "volumes" not in pod and "hostNetwork" not in pod
    # the subcommand the Job runs parses these arguments
    from app.cli.main import parser

    args = parser().parse_args(["uninstall-hook", *c["args"]])
    assert args.webhook_config == [FULLNAME] and args.kubeconfig == "in-cluster"


def test_the_hook_can_be_turned_off_and_is_not_rendered_in_url_mode():
    def hook_kinds(docs: list[dict[str, Any]]) -> list[str]:
        return [
            d["kind"] for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})
        ]

    assert hook_kinds(render({"uninstallHook": {"enabled": False}}, hooks=True)) == []
    assert hook_kinds(render(URL_VALUES, hooks=True)) == []
    assert "/uninstallHook/timeoutSeconds" in render_error({"uninstallHook": {"timeoutSeconds": 1}})


# ---- AKS Admissions Enforcer, annotations and labels on the webhook configurations ---------


def test_aks_admissions_enforcer_manages_by_default_and_can_be_turned_off(default):
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = one(default, kind)["metadata"].get("annotations") or {}
        assert "admissions.enforcer/disabled" not in annotations
    docs = render(
        {
            "webhook": {
                "aksAdmissionsEnforcer": "disabled",
                "annotations": {"example.com/owner": "platform"},
                "labels": {"team": "platform"},
            }
        }
    )
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        meta = one(docs, kind)["metadata"]
        assert meta["annotations"] == {
            "admissions.enforcer/disabled": "true",
            "example.com/owner": "platform",
        }
        assert meta["labels"]["team"] == "platform"
        assert meta["labels"]["app.kubernetes.io/name"] == "streamgate"
    assert "/webhook/aksAdmissionsEnforcer" in render_error(
        {"webhook": {"aksAdmissionsEnforcer": "off"}}
    )
    assert "/webhook/annotations" in render_error({"webhook": {"annotations": {"a": 1}}})


# ---- knobs admins rely on ------------------------------------------------------------------


def test_the_pods_get_the_charts_priority_class_unless_one_is_named(default):
    (pc,) = [d for d in default if d["kind"] == "PriorityClass"]
    assert pc["value"] == 1000000 and pc["globalDefault"] is False
    assert pod_spec(default)["priorityClassName"] == pc["metadata"]["name"] == FULLNAME
    named = render({"priorityClassName": "platform-critical"})
    assert "PriorityClass" not in kinds(named)
    assert pod_spec(named)["priorityClassName"] == "platform-critical"
    off = render({"priorityClass": {"create": False}})
    assert "PriorityClass" not in kinds(off) and "priorityClassName" not in pod_spec(off)
    assert "/priorityClass/value" in render_error({"priorityClass": {"value": 2000000000}})


def test_log_format_extra_volumes_and_per_webhook_timeouts(default):
    assert "--log-format=json" in container(default)["args"]
    assert _parse_serve_args(default).log_format == "json"
    docs = render(
        {
            "logFormat": "text",
            "extraVolumes": [{"name": "regpass", "secret": {"secretName": "reg"}}],
            "extraVolumeMounts": [{"name": "regpass", "mountPath": "/etc/reg", "readOnly": True}],
            "webhook": {
                "validating": {"timeoutSeconds": 3},
                "objectSelector": {
                    "matchExpressions": [{"key": "streamgate.io/skip", "operator": "DoesNotExist"}]
                },
                "extraMatchConditions": [{"name": "not-ci", "expression": "true"}],
            },
        }
    )
    assert "--log-format=text" in container(docs)["args"]
    assert {"name": "regpass", "mountPath": "/etc/reg", "readOnly": True} in container(docs)[
        "volumeMounts"
    ]
    assert {"name": "regpass", "secret": {"secretName": "reg"}} in pod_spec(docs)["volumes"]
    hooks = dict(webhooks(docs))
    assert hooks["ValidatingWebhookConfiguration"]["timeoutSeconds"] == 3
    assert hooks["MutatingWebhookConfiguration"]["timeoutSeconds"] == 5
    for w in hooks.values():
        assert w["objectSelector"]["matchExpressions"][0]["key"] == "streamgate.io/skip"
        assert w["matchConditions"][-1] == {"name": "not-ci", "expression": "true"}
    for bad, path in (
        ({"logFormat": "xml"}, "/logFormat"),
        ({"webhook": {"validating": {"timeoutSeconds": 31}}}, "/webhook/validating/timeoutSeconds"),
        ({"webhook": {"extraMatchConditions": [{"name": "x"}]}}, "/webhook/extraMatchConditions/0"),
        ({"extraVolumeMounts": [{"name": "x"}]}, "/extraVolumeMounts/0"),
    ):
        assert path in render_error(bad), bad


def test_service_monitor_scrape_settings():
    docs = render(
        {
            "serviceMonitor": {
                "enabled": True,
                "scrapeTimeout": "10s",
                "relabelings": [{"action": "labeldrop", "regex": "pod"}],
                "metricRelabelings": [{"action": "drop", "regex": "go_.*"}],
            }
        }
    )
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scrapeTimeout"] == "10s"
    assert endpoint["relabelings"] == [{"action": "labeldrop", "regex": "pod"}]
    assert endpoint["metricRelabelings"] == [{"action": "drop", "regex": "go_.*"}]
    assert "/serviceMonitor/scrapeTimeout" in render_error(
        {"serviceMonitor": {"scrapeTimeout": "soon"}}
    )
    assert endpoint["interval"] == "30s"
    assert "/serviceMonitor/interval" in render_error({"serviceMonitor": {"interval": "30"}})
    assert "/serviceMonitor/relabelings" in render_error({"serviceMonitor": {"relabelings": {}}})


def test_topology_spread_constraints_are_a_list_with_the_pods_selector_filled_in(default):
    dep = one(default, "Deployment")
    selector = dep["spec"]["selector"]
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [(c["topologyKey"], c["whenUnsatisfiable"], c["maxSkew"]) for c in spread] == [
        ("topology.kubernetes.io/zone", "ScheduleAnyway", 1),
        ("kubernetes.io/hostname", "ScheduleAnyway", 1),
    ]
    assert all(c["labelSelector"] == selector for c in spread)
    own = {"matchLabels": {"team": "platform"}}
    docs = render(
        {
            "topologySpreadConstraints": [
                {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"},
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": own,
                    "minDomains": 2,
                },
            ]
        }
    )
    first, second = pod_spec(docs)["topologySpreadConstraints"]
    assert first == {
        "maxSkew": 2,
        "topologyKey": "zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": selector,
    }
    assert second["labelSelector"] == own and second["minDomains"] == 2
    assert "topologySpreadConstraints" not in pod_spec(render({"topologySpreadConstraints": []}))
    for bad, path in (
        # the 0.1 form: refused with the path, not silently ignored
        ({"topologySpreadConstraints": {"enabled": True}}, "topologySpreadConstraints"),
        (
            {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]},
            "whenUnsatisfiable",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
                ]
            },
            "/topologySpreadConstraints/0/maxSkew",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "Sometimes"}
                ]
            },
            "/topologySpreadConstraints/0/whenUnsatisfiable",
        ),
    ):
        assert path in render_error(bad), bad


@pytest.mark.parametrize(
    ("remediation", "side_effects"),
    [
        ({"action": "convert"}, "NoneOnDryRun"),
        ("convert", "NoneOnDryRun"),
        ({"namespaces": {"team-a": "convert"}}, "NoneOnDryRun"),
        ({"namespaces": {"team-a": "none"}}, "None"),
        ({"action": "none"}, "None"),
    ],
)
def test_remediation_is_a_side_effect_never_made_for_a_dry_run(remediation, side_effects):
    docs = render({"policy": {"remediation": remediation}})
    assert {w["sideEffects"] for _, w in webhooks(docs)} == {side_effects}
    policy = yaml.safe_load(one(docs, "ConfigMap")["data"]["policy.yaml"])
    assert (
        parse_policy(policy).remediation == parse_policy({"remediation": remediation}).remediation
    )
