"""The Helm chart and the self-managed certificates against the real local control plane
(hack/cluster.sh): `helm install` is accepted by the apiserver (under Pod Security
"restricted"), RBAC is what the webhook needs and no more, `ensure_certificates` acting as the
chart's ServiceAccount creates one Secret for two concurrent starters and publishes its CA,
a renewal reaches a running server without failed requests, the out-of-cluster URL values
route real admissions to a local webhook, and `helm uninstall` leaves nothing behind.

The installed webhooks only select namespaces labelled with this run's id, so other tests
sharing the cluster never wait on a Service whose fake (KWOK) pods can't answer.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime as dt
import json
import os
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from kubernetes import client, config

from app.certs.keeper import CertPolicy, ensure_certificates
from app.core.verdicts import OfflineVerdicts
from app.webhook.serve import ServeSettings, build_admission, build_server
from tests.unit.test_chart import CHART, helm_binary

pytestmark = pytest.mark.e2e

RUN = secrets.token_hex(3)
SCOPE_LABEL = "streamgate-e2e-chart"
DAY = dt.timedelta(days=1)
DEFAULT_POLICY = CertPolicy()
T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float = 60, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Release:
    name: str
    namespace: str
    kubeconfig: Path
    install_output: str

    @property
    def fullname(self) -> str:
        return f"{self.name}-streamgate"

    @property
    def secret(self) -> str:
        return f"{self.fullname}-tls"

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"


def helm(kubeconfig: Path, *args: str, values: dict[str, Any] | None = None, check: bool = True):
    cmd = [helm_binary(), "--kubeconfig", str(kubeconfig), *args]
    if values is not None:
        cmd += ["--values", "-"]
    out = subprocess.run(
        cmd,
        input=json.dumps(values or {}),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/streamgate-helm-cache"},
        check=False,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def scoped(values: dict[str, Any]) -> dict[str, Any]:
    """Values whose webhooks only see namespaces labelled for this run."""
    webhook = {
        **values.get("webhook", {}),
        "namespaceSelectorExpressions": [{"key": SCOPE_LABEL, "operator": "In", "values": [RUN]}],
    }
    return {**values, "webhook": webhook}


def api_client(kubeconfig: Path, *, as_user: str | None = None) -> Any:
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
    )
    api = client.ApiClient(configuration)
    if as_user:
        api.set_default_header("Impersonate-User", as_user)
    return api


@pytest.fixture(scope="module")
def release(cluster: Path, kubectl: Any) -> Iterator[Release]:
    namespace = f"sg-chart-{RUN}"
    kubectl("create", "namespace", namespace)
    kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    name = f"sgc{RUN}"
    try:
        out = helm(
            cluster,
            "install",
            name,
            str(CHART),
            "--namespace",
            namespace,
            "--wait",
            "--timeout",
            "180s",
            values=scoped({}),
        )
        yield Release(name, namespace, cluster, out.stdout)
    finally:
        helm(cluster, "uninstall", name, "--namespace", namespace, check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# ---- install ----------------------------------------------------------------------------


def test_helm_install_creates_every_object(release: Release, kubectl: Any) -> None:
    ns, full = release.namespace, release.fullname
    for kind in (
        "deployment",
        "service",
        "serviceaccount",
        "configmap",
        "pdb",
        "role",
        "rolebinding",
    ):
        name = (
            f"{full}-policy"
            if kind == "configmap"
            else f"{full}-certs"
            if kind.startswith("role")
            else full
        )
        kubectl("get", kind, name, "-n", ns)
    for kind in (
        "clusterrole",
        "clusterrolebinding",
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ):
        kubectl("get", kind, full)
    status = json.loads(
        helm(release.kubeconfig, "status", release.name, "-n", ns, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    # NOTES.txt says how to see it working
    assert f"rollout status deployment/{full}" in release.install_output
    assert "--dry-run=server" in release.install_output
    # ...and that uninstall removes the webhook configurations first, through the hook
    assert "a pre-delete hook Job, uninstallHook.enabled" in release.install_output


def test_rbac_allows_what_the_webhook_needs_and_nothing_else(
    release: Release, kubectl: Any
) -> None:
    ns, sa, full = release.namespace, release.service_account, release.fullname

    def can(*args: str) -> bool:
        out = kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
        return out.stdout.strip() == "yes"

    allowed = [
        ("list", "nodes"),
        ("watch", "nodes"),
        ("watch", "namespaces"),
        ("list", "runtimeclasses.node.k8s.io"),
        ("get", f"secret/{release.secret}", "-n", ns),
        ("update", f"secret/{release.secret}", "-n", ns),
        ("create", "secrets", "-n", ns),
        ("get", f"validatingwebhookconfigurations/{full}"),
        ("patch", f"mutatingwebhookconfigurations/{full}"),
    ]
    denied = [
        ("list", "secrets", "-n", ns),
        ("get", "secret/other", "-n", ns),
        ("create", "secrets", "-n", "default"),
        ("get", "pods", "-n", ns),
        ("patch", "validatingwebhookconfigurations/someone-elses"),
        ("delete", f"validatingwebhookconfigurations/{full}"),
        ("create", "validatingwebhookconfigurations"),
        ("update", "nodes"),
    ]
    assert [a for a in allowed if not can(*a)] == []
    assert [d for d in denied if can(*d)] == []


def test_pods_admitted_under_pod_security_restricted(release: Release, kubectl: Any) -> None:
    ns = release.namespace
    selector = f"app.kubernetes.io/instance={release.name}"
    pods = eventually(
        lambda: (
            (p := kubectl.json("get", "pods", "-n", ns, "-l", selector)["items"])
            and len(p) == 2
            and p
        ),
        what="the Deployment's two pods",
    )
    assert {p["spec"]["nodeName"] for p in pods}, "pods were scheduled"
    events = kubectl.json("get", "events", "-n", ns, "--field-selector", "reason=FailedCreate")
    assert [e["message"] for e in events["items"]] == []
    # control: the namespace really enforces "restricted"
    bad = kubectl("run", "plain", "--image=busybox", "-n", ns, "--dry-run=server", check=False)
    assert bad.returncode != 0 and "PodSecurity" in bad.stderr


# ---- self-managed certificates, as the chart's ServiceAccount -----------------------------


@dataclass
class Started:
    files: list[Any]
    resource_version: str


@pytest.fixture(scope="module")
def two_starters(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Started:
    """Two replicas starting at once, each with its own client and directory."""
    barrier = threading.Barrier(2)

    def start(i: int) -> Any:
        api = api_client(release.kubeconfig, as_user=release.service_account)
        barrier.wait()
        return ensure_certificates(
            api,
            namespace=release.namespace,
            secret_name=release.secret,
            service_name=release.fullname,
            webhook_names=[release.fullname],
            out_dir=tmp_path_factory.mktemp(f"replica{i}"),
        )

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        files = list(pool.map(start, range(2)))
    core = client.CoreV1Api(api_client(release.kubeconfig))
    secret = core.read_namespaced_secret(release.secret, release.namespace)
    return Started(files, secret.metadata.resource_version)


def test_concurrent_starters_agree_on_one_secret(release: Release, two_starters: Started) -> None:
    a, b = two_starters.files
    for name in ("ca", "cert", "key"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes()
    core = client.CoreV1Api(api_client(release.kubeconfig))
    secret = core.read_namespaced_secret(release.secret, release.namespace)
    assert secret.type == "kubernetes.io/tls"
    assert base64.b64decode(secret.data["tls.crt"]) == a.cert.read_bytes()
    serving = x509.load_pem_x509_certificate(a.cert.read_bytes())
    names = set(
        serving.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    )
    assert f"{release.fullname}.{release.namespace}.svc" in names
    (owner,) = secret.metadata.owner_references
    assert (owner.kind, owner.name) == ("ValidatingWebhookConfiguration", release.fullname)


def test_a_restart_reuses_the_secret(
    release: Release, two_starters: Started, tmp_path: Path
) -> None:
    again = ensure_certificates(
        api_client(release.kubeconfig, as_user=release.service_account),
        namespace=release.namespace,
        secret_name=release.secret,
        service_name=release.fullname,
        webhook_names=[release.fullname],
        out_dir=tmp_path,
    )
    assert again.cert.read_bytes() == two_starters.files[0].cert.read_bytes()
    core = client.CoreV1Api(api_client(release.kubeconfig))
    secret = core.read_namespaced_secret(release.secret, release.namespace)
    assert secret.metadata.resource_version == two_starters.resource_version


def test_ca_bundle_patched_in_both_configurations(
    release: Release, two_starters: Started, kubectl: Any
) -> None:
    bundle = base64.b64encode(two_starters.files[0].ca.read_bytes()).decode()
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        config_ = kubectl.json("get", kind, release.fullname)
        assert [w["clientConfig"]["caBundle"] for w in config_["webhooks"]] == [bundle], kind
    # and `helm upgrade` keeps it (the chart looks the published bundle up)
    helm(
        release.kubeconfig,
        "upgrade",
        release.name,
        str(CHART),
        "-n",
        release.namespace,
        values=scoped({"policy": {"mode": "audit"}}),
    )
    config_ = kubectl.json("get", "validatingwebhookconfiguration", release.fullname)
    assert config_["webhooks"][0]["clientConfig"]["caBundle"] == bundle


def _served_serial(port: int, ca: ssl.SSLContext, host: str) -> int:
    """GET /healthz over TLS, verifying `host` against the bundle; the certificate's serial."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ca.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
        der = tls.getpeercert(binary_form=True)
        assert der
        return x509.load_der_x509_certificate(der).serial_number


def test_renewal_reaches_a_running_server_without_failed_requests(
    release: Release, two_starters: Started, tmp_path: Path
) -> None:
    api = api_client(release.kubeconfig, as_user=release.service_account)

    def ensure(policy: CertPolicy = DEFAULT_POLICY) -> Any:
        return ensure_certificates(
            api,
            namespace=release.namespace,
            secret_name=release.secret,
            service_name=release.fullname,
            webhook_names=[release.fullname],
            out_dir=tmp_path,
            policy=policy,
        )

    files = ensure()
    settings = ServeSettings(
        host="127.0.0.1",
        port=free_port(),
        cert=files.cert,
        key=files.key,
        cert_reload_interval=0.2,
        log_level="warning",
    )
    running = build_server(settings, build_admission(settings, verdicts=OfflineVerdicts()))
    stop = threading.Event()
    served: list[int] = []
    failures: list[str] = []
    host = f"{release.fullname}.{release.namespace}.svc"
    trust = ssl.create_default_context(cadata=files.ca.read_text())

    async def serve_and_reload() -> None:
        reload_task = asyncio.create_task(running.reloader.run())
        try:
            await running.server.serve()
        finally:
            reload_task.cancel()

    def run_server() -> None:
        asyncio.run(serve_and_reload())

    def hammer() -> None:
        while not stop.is_set():
            try:
                served.append(_served_serial(settings.port, trust, host))
            except (OSError, ssl.SSLError, AssertionError) as err:
                failures.append(repr(err))
            time.sleep(0.02)

    server = threading.Thread(target=run_server, daemon=True)
    server.start()
    eventually(lambda: running.server.started, timeout=10, what="the server")
    client_thread = threading.Thread(target=hammer, daemon=True)
    client_thread.start()
    try:
        before = eventually(lambda: served[-1] if served else None, timeout=10)
        # A renewal window longer than the 90-day serving lifetime: this check must renew.
        renewed = ensure(CertPolicy(serving_renew_before=100 * DAY))
        new = x509.load_pem_x509_certificate(renewed.cert.read_bytes()).serial_number
        assert new != before
        eventually(lambda: served[-1] == new, timeout=10, what="the renewed certificate served")
        count = len(served)
        eventually(lambda: len(served) > count + 5, timeout=10, what="more requests")
    finally:
        stop.set()
        client_thread.join(10)
        running.server.should_exit = True
        server.join(10)
    assert failures == []
    assert running.reloader.reloads >= 1


# ---- out-of-cluster URL mode: the chart's webhook objects, a local webhook ---------------


@pytest.fixture
def local_webhook(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    settings = ServeSettings(
        host="127.0.0.1",
        port=free_port(),
        self_signed_dir=tmp_path,
        log_level="warning",
    )
    running = build_server(settings, build_admission(settings, verdicts=OfflineVerdicts()))
    thread = threading.Thread(target=running.server.run, daemon=True)
    thread.start()
    eventually(lambda: running.server.started, timeout=10, what="the local webhook")
    assert running.ca
    yield running.url, running.ca
    running.server.should_exit = True
    thread.join(10)


def test_url_mode_routes_admissions_to_a_local_webhook(
    cluster: Path, kubectl: Any, local_webhook: tuple[str, Path]
) -> None:
    url, ca = local_webhook
    name, target = f"sgu{RUN}", f"sg-url-{RUN}"
    values = scoped(
        {
            "webhook": {"url": url, "caBundle": base64.b64encode(ca.read_bytes()).decode()},
            "deployment": {"enabled": False},
        }
    )
    kubectl("create", "namespace", f"{name}-home")
    kubectl("create", "namespace", target)
    kubectl("label", "namespace", target, f"{SCOPE_LABEL}={RUN}")
    try:
        out = helm(cluster, "install", name, str(CHART), "-n", f"{name}-home", values=values)
        assert "Out-of-cluster" in out.stdout
        manifest = helm(cluster, "get", "manifest", name, "-n", f"{name}-home").stdout
        assert "kind: Deployment" not in manifest

        def pod(podname: str, annotations: dict[str, str]) -> str:
            return json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": podname, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "demo.azurecr.io/app:v1"}]},
                }
            )

        judged = kubectl(
            "create",
            "-n",
            target,
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            stdin=pod("judged", {}),
        )
        annotations = json.loads(judged.stdout)["metadata"].get("annotations", {})
        assert any(k.startswith("streamgate.io/") for k in annotations), judged.stdout
        # an exempt object (mode warn: the annotation is honoured) gets nothing added
        exempt = kubectl(
            "create",
            "-n",
            target,
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            stdin=pod("exempt", {"streamgate.io/exempt": "team says so"}),
        )
        annotations = json.loads(exempt.stdout)["metadata"]["annotations"]
        assert set(annotations) == {"streamgate.io/exempt"}
    finally:
        helm(cluster, "uninstall", name, "-n", f"{name}-home", check=False)
        kubectl("delete", "namespace", f"{name}-home", target, "--wait=false", check=False)


# ---- the ValidatingAdmissionPolicy: caBundle only -----------------------------------------


def test_service_account_may_change_only_ca_bundle(release: Release, kubectl: Any) -> None:
    """RBAC gives the webhook `patch` on its two configurations; the chart's
    ValidatingAdmissionPolicy narrows that to `caBundle`. Every attempt is a server-side dry
    run: admission (the policy included) runs in full, nothing is stored."""
    sa, full = release.service_account, release.fullname

    def patch_as(kind: str, ops: list[dict[str, Any]], *extra: str) -> Any:
        return kubectl(
            "patch",
            kind,
            full,
            "--type=json",
            "-p",
            json.dumps(ops),
            "--dry-run=server",
            f"--as={sa}",
            *extra,
            check=False,
        )

    label = [{"op": "add", "path": "/metadata/labels/probe", "value": "x"}]
    # a new policy takes effect within seconds (the apiserver's policy informer)
    eventually(
        lambda: patch_as("validatingwebhookconfiguration", label).returncode != 0,
        timeout=60,
        what="the caBundle-only policy to take effect",
    )
    refused = patch_as("validatingwebhookconfiguration", label)
    assert "ValidatingAdmissionPolicy" in refused.stderr
    assert f"{full}: its service account may only change caBundle here" in refused.stderr

    other_ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot-checked\n").decode()
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        ok = patch_as(
            kind,
            [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": other_ca}],
        )
        assert ok.returncode == 0, ok.stderr
        for path, value in (
            ("/webhooks/0/failurePolicy", "Fail"),  # the chart's default is Ignore
            ("/webhooks/0/namespaceSelector", {}),
            ("/webhooks/0/rules", []),
            ("/webhooks/0/timeoutSeconds", 30),
            ("/webhooks/0/clientConfig/service/name", "attacker"),
        ):
            out = patch_as(kind, [{"op": "replace", "path": path, "value": value}])
            assert out.returncode != 0, (kind, path)
            assert "may only change webhooks[*].clientConfig.caBundle" in out.stderr, out.stderr
        # caBundle together with anything else is refused as a whole
        both = [
            {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": other_ca},
            {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"},
        ]
        assert patch_as(kind, both).returncode != 0
        # delete: RBAC already refuses it; with RBAC out of the way (the same user in
        # system:masters) the policy still does
        out = kubectl("delete", kind, full, "--dry-run=server", f"--as={sa}", check=False)
        assert out.returncode != 0 and "forbidden" in out.stderr.lower()
        out = kubectl(
            "delete",
            kind,
            full,
            "--dry-run=server",
            f"--as={sa}",
            "--as-group=system:masters",
            check=False,
        )
        assert out.returncode != 0 and "not delete the configuration" in out.stderr, out.stderr
    # anyone else (helm, the admin) is not matched
    admin = kubectl(
        "patch",
        "validatingwebhookconfiguration",
        full,
        "--type=json",
        "-p",
        json.dumps(label),
        "--dry-run=server",
        check=False,
    )
    assert admin.returncode == 0, admin.stderr


# ---- uninstall (last: it removes the module's release) ------------------------------------


def test_uninstall_leaves_no_webhook_configuration_and_no_secret(
    release: Release, two_starters: Started, kubectl: Any
) -> None:
    helm(release.kubeconfig, "uninstall", release.name, "-n", release.namespace, "--wait")
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        out = kubectl("get", kind, release.fullname, check=False)
        assert out.returncode != 0 and "NotFound" in out.stderr
    # the Secret the webhook made is owned by its ValidatingWebhookConfiguration: collected
    eventually(
        lambda: (
            "NotFound"
            in kubectl("get", "secret", release.secret, "-n", release.namespace, check=False).stderr
        ),
        timeout=60,
        what="the certificate Secret to be garbage-collected",
    )
    for kind in ("clusterrole", "clusterrolebinding"):
        assert kubectl("get", kind, release.fullname, check=False).returncode != 0, kind
    for kind in ("validatingadmissionpolicy", "validatingadmissionpolicybinding"):
        name = f"{release.fullname}-cabundle-only"
        assert kubectl("get", kind, name, check=False).returncode != 0, kind
