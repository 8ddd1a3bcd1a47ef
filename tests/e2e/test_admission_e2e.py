"""kubectl apply through a real kube-apiserver to streamgate, asserting on what kubectl
prints and on what the apiserver stores. Everything here is real: control plane, KWOK
nodes with AKS labels, olareg with streaming referrers, helm-rendered webhook objects."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid

import pytest

from tests.e2e.conftest import REGISTRY, ROOT, Kubectl

pytestmark = pytest.mark.e2e

PLAIN = f"{REGISTRY}/demo/plain:v1"
STREAMABLE = f"{REGISTRY}/demo/streamable:v1"
DIGEST = "sha256:50f5eab91715d7bf5746c0a00a280746bf36e37c9bb858e005464c577209ba62"
STREAMING_POOLS = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {
                        "key": "kubernetes.azure.com/agentpool",
                        "operator": "In",
                        "values": ["streamub", "streamazl"],
                    }
                ]
            }
        ]
    }
}


# What kubectl prints for PLAIN: the image as written, and the fix with the ACR name the
# demo policy gives the local registry (acrRegistryNames).
NO_ARTIFACT = (
    "app: 127.0.0.1:25000/demo/plain:v1 has no streaming artifact; fix: az acr "
    "artifact-streaming create -n demoacr --image demo/plain:v1"
)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def pod(pod_name: str, ns: str, image: str, **spec: object) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns},
            "spec": {"containers": [{"name": "app", "image": image}], **spec},
        }
    )


def template(image: str, restart: str = "Always", **spec: object) -> dict:
    return {
        "metadata": {"labels": {"app": "x"}},
        "spec": {"restartPolicy": restart, "containers": [{"name": "app", "image": image}], **spec},
    }


def workload(kind: str, obj_name: str, ns: str, image: str, **spec: object) -> str:
    sel = {"matchLabels": {"app": "x"}}
    body: dict
    if kind == "Deployment":
        body = {
            "apiVersion": "apps/v1",
            "spec": {"selector": sel, "template": template(image, **spec)},
        }
    elif kind == "StatefulSet":
        body = {
            "apiVersion": "apps/v1",
            "spec": {"selector": sel, "serviceName": obj_name, "template": template(image, **spec)},
        }
    elif kind in ("DaemonSet", "ReplicaSet"):
        body = {
            "apiVersion": "apps/v1",
            "spec": {"selector": sel, "template": template(image, **spec)},
        }
    elif kind == "ReplicationController":
        body = {
            "apiVersion": "v1",
            "spec": {"selector": {"app": "x"}, "template": template(image, **spec)},
        }
    elif kind == "Job":
        body = {"apiVersion": "batch/v1", "spec": {"template": template(image, "Never", **spec)}}
    elif kind == "CronJob":
        body = {
            "apiVersion": "batch/v1",
            "spec": {
                "schedule": "0 3 * * *",
                "jobTemplate": {"spec": {"template": template(image, "OnFailure", **spec)}},
            },
        }
    else:
        raise ValueError(kind)
    body.update(kind=kind, metadata={"name": obj_name, "namespace": ns})
    return json.dumps(body)


def apply(kubectl: Kubectl, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", *extra, "-f", "-", stdin=manifest, check=False)


def annotations(kubectl: Kubectl, kind: str, obj_name: str, ns: str) -> dict[str, str]:
    obj = kubectl.json("get", kind, obj_name, "-n", ns)
    return {
        k: v
        for k, v in obj["metadata"].get("annotations", {}).items()
        if k.startswith("streamgate.io/")
    }


def test_warn_mode_prints_one_warning_and_annotates(webhook, kubectl):
    pod_name = name("plain")
    out = apply(kubectl, pod(pod_name, webhook.ns("warn"), PLAIN))
    assert out.returncode == 0, out.stderr
    assert f"pod/{pod_name} created" in out.stdout
    assert f"Warning: {NO_ARTIFACT}" in out.stderr.splitlines()
    ann = annotations(kubectl, "pod", pod_name, webhook.ns("warn"))
    assert ann["streamgate.io/streaming"] == "none"
    assert ann["streamgate.io/report"] == "app=not-streamable"
    assert ann["streamgate.io/pools"].endswith(
        "can stream; not: arm,cvm,gen1,nostream,oldkube,osguard,sandbox,win"
    )


def test_enforce_mode_denies_with_every_problem(webhook, kubectl):
    pod_name = name("plain")
    out = apply(
        kubectl, pod(pod_name, webhook.ns("enforce"), PLAIN, imagePullSecrets=[{"name": "x"}])
    )
    assert out.returncode != 0
    assert (
        'admission webhook "validate.streamgate.io" denied the request: streamgate: Pod '
        f"{pod_name} can't use artifact streaming: (1) {NO_ARTIFACT}"
    ) in out.stderr
    assert "Warning: imagePullSecrets set" in out.stderr
    assert kubectl("get", "pod", pod_name, "-n", webhook.ns("enforce"), check=False).returncode != 0


def test_enforce_mode_admits_a_streamable_workload_silently(webhook, kubectl):
    dep = name("web")
    out = apply(
        kubectl,
        workload(
            "Deployment",
            dep,
            webhook.ns("enforce"),
            STREAMABLE,
            affinity={"nodeAffinity": STREAMING_POOLS},
        ),
    )
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr
    assert (
        annotations(kubectl, "deployment", dep, webhook.ns("enforce"))["streamgate.io/streaming"]
        == "all"
    )


def test_audit_mode_annotates_without_warnings(webhook, kubectl):
    pod_name = name("plain")
    out = apply(kubectl, pod(pod_name, webhook.ns("audit"), PLAIN))
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr
    assert (
        annotations(kubectl, "pod", pod_name, webhook.ns("audit"))["streamgate.io/streaming"]
        == "none"
    )


def test_off_namespace_is_never_sent(webhook, kubectl):
    pod_name = name("plain")
    out = apply(kubectl, pod(pod_name, webhook.ns("off"), PLAIN))
    assert out.returncode == 0 and "Warning" not in out.stderr
    assert annotations(kubectl, "pod", pod_name, webhook.ns("off")) == {}
    assert pod_name not in webhook.log_text()


def test_kube_system_is_never_sent(webhook, kubectl):
    """Even when kube-system carries this run's label, the chart's selector keeps it out."""
    pod_name = name("plain")
    kubectl("label", "--overwrite", "namespace", "kube-system", webhook.run_label)
    out = apply(kubectl, pod(pod_name, "kube-system", PLAIN))
    try:
        assert out.returncode == 0 and "Warning" not in out.stderr
        assert annotations(kubectl, "pod", pod_name, "kube-system") == {}
        assert pod_name not in webhook.log_text()
    finally:
        kubectl("delete", "pod", pod_name, "-n", "kube-system", "--wait=false", check=False)
        kubectl(
            "label", "namespace", "kube-system", webhook.run_label.split("=")[0] + "-", check=False
        )


def test_server_dry_run_gets_the_same_warnings(webhook, kubectl):
    pod_name = name("dry")
    out = apply(kubectl, pod(pod_name, webhook.ns("warn"), PLAIN), "--dry-run=server")
    assert out.returncode == 0
    assert f"Warning: {NO_ARTIFACT}" in out.stderr
    assert kubectl("get", "pod", pod_name, "-n", webhook.ns("warn"), check=False).returncode != 0


KINDS = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_workload_kind_is_judged_and_annotated(webhook, kubectl, kind):
    obj = name(kind.lower())
    out = apply(kubectl, workload(kind, obj, webhook.ns("warn"), PLAIN))
    assert out.returncode == 0, out.stderr
    assert f"Warning: {NO_ARTIFACT}" in out.stderr
    stored = kubectl.json("get", kind.lower(), obj, "-n", webhook.ns("warn"))
    assert stored["metadata"]["annotations"]["streamgate.io/streaming"] == "none"
    tmpl = (
        stored["spec"]["jobTemplate"]["spec"]["template"]
        if kind == "CronJob"
        else stored["spec"]["template"]
    )
    assert tmpl["metadata"]["annotations"]["streamgate.io/report"] == "app=not-streamable"
    assert tmpl["spec"]["containers"][0]["image"] == PLAIN  # never rewritten
    out = apply(kubectl, workload(kind, obj, webhook.ns("enforce"), PLAIN))
    assert out.returncode != 0 and "denied the request" in out.stderr


def _pods_with_label(kubectl: Kubectl, ns: str, selector: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = kubectl.json("get", "pods", "-n", ns, "-l", selector)["items"]
        if items:
            return items
        time.sleep(0.5)
    raise AssertionError(f"no pods with {selector} in {ns}")


def test_controller_created_pods_are_judged_not_denied(webhook, kubectl):
    dep = name("ctl")
    spec = workload(
        "Deployment",
        dep,
        webhook.ns("enforce"),
        STREAMABLE,
        affinity={"nodeAffinity": STREAMING_POOLS},
    )
    manifest = json.loads(spec)
    manifest["spec"]["replicas"] = 2
    manifest["spec"]["selector"] = {"matchLabels": {"app": dep}}
    manifest["spec"]["template"]["metadata"]["labels"] = {"app": dep}
    assert apply(kubectl, json.dumps(manifest)).returncode == 0
    pods = _pods_with_label(kubectl, webhook.ns("enforce"), f"app={dep}")
    for p in pods:
        ann = p["metadata"]["annotations"]
        assert ann["streamgate.io/streaming"] == "all"
        assert ann["streamgate.io/pools"] == "2/2 can stream"
    # The scheduler places them on the streaming pools the webhook predicted.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pods = kubectl.json("get", "pods", "-n", webhook.ns("enforce"), "-l", f"app={dep}")["items"]
        if pods and all(p["spec"].get("nodeName") for p in pods):
            break
        time.sleep(0.5)
    assert all(
        ("streamub" in p["spec"]["nodeName"] or "streamazl" in p["spec"]["nodeName"]) for p in pods
    )


def test_pods_of_job_and_cronjob_are_annotated(webhook, kubectl):
    job = name("job")
    assert apply(kubectl, workload("Job", job, webhook.ns("warn"), STREAMABLE)).returncode == 0
    pods = _pods_with_label(kubectl, webhook.ns("warn"), f"job-name={job}")
    assert pods[0]["metadata"]["annotations"]["streamgate.io/report"] == "app=streamable"
    cron = name("cron")
    assert apply(kubectl, workload("CronJob", cron, webhook.ns("warn"), PLAIN)).returncode == 0
    triggered = f"{cron}-manual"
    out = kubectl("create", "job", triggered, f"--from=cronjob/{cron}", "-n", webhook.ns("warn"))
    assert f"Warning: {NO_ARTIFACT}" in out.stderr
    pods = _pods_with_label(kubectl, webhook.ns("warn"), f"job-name={triggered}")
    assert pods[0]["metadata"]["annotations"]["streamgate.io/streaming"] == "none"


def test_digest_pinned_is_warned_even_in_enforce(webhook, kubectl):
    pod_name = name("pinned")
    image = f"{REGISTRY}/demo/streamable@{DIGEST}"
    out = apply(
        kubectl,
        pod(pod_name, webhook.ns("enforce"), image, affinity={"nodeAffinity": STREAMING_POOLS}),
    )
    assert out.returncode == 0, out.stderr
    assert (
        f"Warning: app: {REGISTRY}/demo/streamable@sha256:50f5eab91715… is pinned by "
        "digest; AKS streams tag pulls only: pull it by tag"
    ) in out.stderr
    ann = annotations(kubectl, "pod", pod_name, webhook.ns("enforce"))
    assert ann["streamgate.io/digest-pinned"] == "app"
    assert ann["streamgate.io/report"] == "app=streamable"  # the artifact exists...
    assert ann["streamgate.io/streaming"] == "unknown"  # ...but a digest pull may not stream


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"nodeSelector": {"kubernetes.io/arch": "arm64"}},
            "only fits pools that can't stream: arm (arm64)",
        ),
        (
            {"runtimeClassName": "kata-vm-isolation"},
            "only fits pools that can't stream: sandbox (Pod Sandboxing",
        ),
        (
            {"nodeSelector": {"kubernetes.azure.com/agentpool": "cvm"}},
            "only fits pools that can't stream: cvm (Confidential VM)",
        ),
    ],
    ids=["arm64", "sandboxing", "cvm"],
)
def test_pools_that_cannot_stream_are_denied_in_enforce(webhook, kubectl, spec, message):
    out = apply(kubectl, pod(name("p"), webhook.ns("enforce"), STREAMABLE, **spec))
    assert out.returncode != 0
    assert message in out.stderr


def test_pod_that_fits_no_pool_is_warned_not_denied(webhook, kubectl):
    out = apply(
        kubectl,
        pod(
            name("nowhere"),
            webhook.ns("enforce"),
            STREAMABLE,
            nodeSelector={"kubernetes.io/arch": "s390x"},
        ),
    )
    assert out.returncode == 0
    assert "Warning: fits no current node pool" in out.stderr


def test_ephemeral_debug_container_is_judged(webhook, kubectl):
    pod_name = name("dbg")
    assert (
        apply(
            kubectl,
            pod(
                pod_name, webhook.ns("warn"), STREAMABLE, affinity={"nodeAffinity": STREAMING_POOLS}
            ),
        ).returncode
        == 0
    )
    out = kubectl(
        "debug", pod_name, "-n", webhook.ns("warn"), f"--image={PLAIN}", "-c", "dbg", check=False
    )
    assert (
        "Warning: debug:dbg: 127.0.0.1:25000/demo/plain:v1 has no streaming artifact" in out.stderr
    )


def test_webhook_outage_never_blocks_the_cluster(webhook, kubectl, tmp_path):
    """A second pair of webhook configurations from the chart points at a port where
    nothing listens: with the default failurePolicy Ignore, applies still go through, and
    quickly (connection refused, well inside timeoutSeconds)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    helm = (
        subprocess.run(
            [str(ROOT / "hack" / "k8s-binaries.sh"), "--print-dir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        + "/helm"
    )
    rendered = subprocess.run(
        [
            helm,
            "template",
            f"sg-dead-{webhook.suffix}",
            str(ROOT / "chart"),
            "--namespace",
            "streamgate-system",
            "--set",
            "deployment.enabled=false",
            "--set",
            f"webhook.url=https://127.0.0.1:{dead_port}",
            "--set",
            "webhook.caBundle="
            + base64.b64encode((webhook.log.parent / "certs" / "ca.crt").read_bytes()).decode(),
            "--set",
            f"webhook.namespaceSelectorExpressions[0].key={webhook.run_label.split('=')[0]}",
            "--set",
            "webhook.namespaceSelectorExpressions[0].operator=In",
            "--set-string",  # a run suffix of digits only must stay a string
            f"webhook.namespaceSelectorExpressions[0].values[0]={webhook.suffix}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kubectl("apply", "-f", "-", stdin=rendered)
    try:
        time.sleep(2)
        pod_name = name("outage")
        started = time.monotonic()
        out = apply(
            kubectl,
            pod(
                pod_name,
                webhook.ns("enforce"),
                STREAMABLE,
                affinity={"nodeAffinity": STREAMING_POOLS},
            ),
        )
        took = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        assert took < 5
        assert kubectl("get", "pod", pod_name, "-n", webhook.ns("enforce")).returncode == 0
    finally:
        kubectl("delete", "-f", "-", stdin=rendered, check=False)


def _warnings(stderr: str) -> list[str]:
    return [ln.removeprefix("Warning: ") for ln in stderr.splitlines() if ln.startswith("Warning:")]


def test_a_hundred_container_pod_gets_grouped_warnings_pool_warning_first(webhook, kubectl):
    pod_name = name("many")
    containers = [{"name": f"c{i:03d}", "image": PLAIN} for i in range(100)]
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": webhook.ns("warn")},
        "spec": {"containers": containers},
    }
    out = apply(kubectl, json.dumps(body))
    assert out.returncode == 0, out.stderr
    warnings = _warnings(out.stderr)
    assert warnings[0].startswith("may land on pools that can't stream: arm (arm64)")
    assert warnings[1] == (
        "100 containers (c000, c001, c002, +97 more): " + NO_ARTIFACT.removeprefix("app: ")
    )
    assert len(warnings) == 2


def test_a_long_image_name_keeps_its_whole_fix_on_kubectl_apply(webhook, kubectl):
    repo = "demo/" + "/".join(["a-rather-long-team-name"] * 4) + "/service"
    image = f"{REGISTRY}/{repo}:release-2026.12.05-build.1234567"
    pod_name = name("long")
    out = apply(kubectl, pod(pod_name, webhook.ns("warn"), image))
    assert out.returncode == 0, out.stderr
    (warning,) = [w for w in _warnings(out.stderr) if w.startswith("app: ")]
    assert len(warning) <= 256, warning
    assert warning.startswith(f"app: {REGISTRY}/")
    # the registry answers "not found" for an image it does not hold; either way what follows
    # the image is whole (nothing cut by streamgate or by the apiserver)
    assert warning.endswith(("--image " + repo + ":release-2026.12.05-build.1234567", "allowed"))


def test_a_control_character_in_an_image_does_not_swallow_the_warning(webhook, kubectl):
    """The apiserver drops a warning holding a control character (it can't go into a Warning
    header): an image written with one (not a valid reference) must still be warned about,
    the character escaped. (Every warning goes through messages.printable as well.)"""
    image = f"{REGISTRY}/demo/plain:v1\x1b[2J"
    out = kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=pod(name("ctl"), webhook.ns("warn"), image)
    )
    assert out.returncode == 0, out.stderr
    mine = [w for w in _warnings(out.stderr) if w.startswith("app: ")]
    assert mine and "\x1b" not in out.stderr, out.stderr
    assert "plain:v1\\x1b[2J" in mine[0], mine
