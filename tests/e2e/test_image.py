"""The container image, built by `make image` (hack/image.sh: Docker, else podman) and run as
the Helm chart runs it: read-only root filesystem, user 65532, every capability dropped, no new
privileges, a tmpfs /tmp, the chart's own container arguments (`--kubeconfig=in-cluster` with a
real ServiceAccount token from the chart's RBAC), mounted certificate and policy files. Then the
chart's webhook configurations (URL mode) send the apiserver's admissions to it, and `kubectl
apply --dry-run=server` of the examples prints the same warnings as from the local process the
demo runs (hack/webhook.sh).

The build is reused while the Dockerfile, pyproject.toml, constraints.txt and app/ are
unchanged (hack/image.sh keys the image on their hash): a warm run costs seconds, a cold one
the base (~1 min) and the build (~1 min)."""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import RUN_LABEL, Kubectl, free_port, local_webhook
from tests.unit.test_chart import CHART, helm_binary

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
IMAGE_SH = ROOT / "hack" / "image.sh"
TAG = "localhost/streamgate:e2e"
UID = 65532
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The examples a namespace of the test can take (05 creates its own namespace, `payments`).
EXAMPLES = [
    "01-streamable-deployment.yaml",
    "02-no-artifact-pod.yaml",
    "03-multiarch-cronjob.yaml",
    "04-arm-and-secrets-statefulset.yaml",
    "06-digest-pinned-job.yaml",
]
# What kubectl prints for examples/02 (tests/e2e/test_admission_e2e.py asserts the same text).
NO_ARTIFACT = (
    "app: 127.0.0.1:25000/demo/plain:v1 has no streaming artifact; fix: az acr "
    "artifact-streaming create -n demoacr --image demo/plain:v1"
)


def engine(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The container engine hack/image.sh picked, with this machine's flags."""
    out = subprocess.run(
        [str(IMAGE_SH), "cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def image() -> str:
    """hack/image.sh build: reuses the image while its sources are unchanged."""
    out = subprocess.run(
        [str(IMAGE_SH), "build"],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "IMAGE": TAG},
        check=False,
    )
    assert out.returncode == 0, f"hack/image.sh build failed:\n{out.stdout}\n{out.stderr}"
    # What make image prints: the ID, the size and the SBOM's place.
    assert re.search(r"^id: +[0-9a-f]{64}$", out.stdout, re.M), out.stdout
    assert re.search(r"^size: +\d+ MB", out.stdout, re.M), out.stdout
    sbom = Path(re.search(r"^sbom: +(\S+)", out.stdout, re.M)[1])  # type: ignore[index]
    bom = json.loads(sbom.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    names = {c["name"].lower() for c in bom["components"]}
    assert {"fastapi", "uvicorn", "kubernetes", "cryptography"} <= names
    assert "pip" not in names and "pytest" not in names  # the image's environment, not .venv's
    return TAG


def helm_template(
    release: str, namespace: str, *sets: str, strings: tuple[str, ...] = ()
) -> list[dict]:
    args = [helm_binary(), "template", release, str(CHART), "--namespace", namespace]
    for value in sets:
        args += ["--set", value]
    for value in strings:  # kept strings even when they look like numbers
        args += ["--set-string", value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"helm template failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@dataclass
class Running:
    name: str
    port: int
    ca: Path
    namespace: str
    release: str
    chart: list[dict]
    work: Path
    api: tuple[str, str]


def _kubeconfig_ca(kubeconfig: Path) -> bytes:
    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        return base64.b64decode(cluster["certificate-authority-data"])
    return Path(cluster["certificate-authority"]).read_bytes()


def _service_account_dir(
    kubectl: Kubectl, kubeconfig: Path, directory: Path, account: str, namespace: str
) -> Path:
    """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
    directory.mkdir()
    token = kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout
    (directory / "token").write_text(token.strip())
    (directory / "ca.crt").write_bytes(_kubeconfig_ca(kubeconfig))
    (directory / "namespace").write_text(namespace)
    _readable_by_pod(directory, 0o750)
    for file in directory.iterdir():
        _readable_by_pod(file, 0o440)
    return directory


def _readable_by_pod(path: Path, mode: int) -> None:
    """As the chart's volumes: owned by root, group 65532 (fsGroup), no world access. (Not
    root, e.g. rootless podman: readable by everyone instead.)"""
    if os.geteuid() == 0:
        os.chown(path, 0, UID)
        path.chmod(mode)
    else:
        path.chmod(mode | (0o005 if path.is_dir() else 0o004))


def _get(url: str, ca: Path) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def running(
    image: str, cluster: Path, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    suffix = uuid.uuid4().hex[:5]
    release, namespace = f"sgimg-{suffix}", f"sg-image-{suffix}"
    work = tmp_path_factory.mktemp("image")
    port, metrics_port = free_port(), free_port()
    name = f"streamgate-e2e-{suffix}"
    applied: list[dict] = []
    kubectl("create", "namespace", namespace)
    kubectl("label", "namespace", namespace, f"{RUN_LABEL}={suffix}")
    try:
        # Serving certificate and policy, mounted read-only like the chart's Secret/ConfigMap.
        subprocess.run(
            [str(ROOT / ".venv/bin/streamgate"), "certs", str(work / "tls"), "--host", "127.0.0.1"],
            check=True,
            capture_output=True,
        )
        (work / "policy").mkdir()
        (work / "policy" / "policy.yaml").write_text((ROOT / "examples/policy.yaml").read_text())
        # In-cluster credentials: the chart's ServiceAccount and RBAC, a token for it.
        ca = base64.b64encode((work / "tls" / "ca.crt").read_bytes()).decode()
        chart = helm_template(
            release,
            namespace,
            "certificates.mode=provided",
            # the Secret the chart would mount; here its files are mounted from `work`
            f"certificates.provided.secretName={release}-tls",
            f"certificates.provided.caBundle={ca}",
            f"containerPort={port}",
            f"metrics.port={metrics_port}",
        )
        fullname = f"{release}-streamgate"
        # The webhook's and the uninstall hook's ServiceAccounts with their RBAC.
        rbac = [
            doc
            for doc in chart
            if doc["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
            and doc["metadata"]["name"] in {fullname, f"{fullname}-uninstall"}
        ]
        assert len(rbac) == 6, [d["kind"] for d in chart]
        kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}),
        )
        applied += rbac
        sa = _service_account_dir(kubectl, cluster, work / "serviceaccount", fullname, namespace)
        for directory in (work / "tls", work / "policy"):
            _readable_by_pod(directory, 0o750)
            for file in directory.iterdir():
                _readable_by_pod(file, 0o440)
        server = yaml.safe_load(cluster.read_text())["clusters"][0]["cluster"]["server"]
        api_host, api_port = re.fullmatch(r"https://([\d.]+):(\d+)", server).groups()  # type: ignore[union-attr]

        # The chart's container arguments, as rendered; only the bind address differs (the
        # container shares the host's network here: 127.0.0.1, not every interface).
        deployment = next(d for d in chart if d["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        args = ["--host=127.0.0.1" if a == "--host=0.0.0.0" else a for a in container["args"]]
        assert "--kubeconfig=in-cluster" in args and f"--port={port}" in args
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
        assert not security["allowPrivilegeEscalation"] and security["runAsUser"] == UID
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        engine(
            "run", "-d", "--name", name, "--network", "host",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "--read-only", "--user", f"{UID}:{UID}",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--tmpfs", f"{mounts['tmp']}:rw,size=16m,mode=1777",
            "-v", f"{work / 'tls'}:{mounts['tls']}:ro",
            "-v", f"{work / 'policy'}:{mounts['policy']}:ro",
            "-v", f"{sa}:{SA_DIR}:ro",
            "-e", f"KUBERNETES_SERVICE_HOST={api_host}",
            "-e", f"KUBERNETES_SERVICE_PORT={api_port}",
            "-e", f"POD_NAMESPACE={namespace}", "-e", f"POD_NAME={name}",
            image, *args,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(f"https://127.0.0.1:{port}/readyz", work / "tls" / "ca.crt")[0] == 200:
                    break
            except OSError:
                pass
            state = engine("inspect", "--format", "{{.State.Running}}", name, check=False)
            if state.stdout.strip() != "true" or time.monotonic() > deadline:
                logs = engine("logs", name, check=False)
                raise AssertionError(f"the container never got ready:\n{logs.stdout}{logs.stderr}")
            time.sleep(0.2)
        yield Running(
            name,
            port,
            work / "tls" / "ca.crt",
            namespace,
            release,
            chart,
            work,
            (api_host, api_port),
        )
    finally:
        logs = engine("logs", name, check=False)
        (work / "container.log").write_text(logs.stdout + logs.stderr)
        engine("rm", "-f", name, check=False)
        for doc in applied:
            kubectl("delete", doc["kind"], doc["metadata"]["name"], "-n", namespace,
                    "--ignore-not-found", "--wait=false", check=False)  # fmt: skip
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _exec(name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return engine("exec", name, *cmd, check=False)


def test_probes_answer(running: Running) -> None:
    for path in ("/healthz", "/readyz"):
        status, _ = _get(f"https://127.0.0.1:{running.port}{path}", running.ca)
        assert status == 200, path


def test_runs_as_the_chart_says(running: Running) -> None:
    # The server is the container's process 1 (the entry point itself, no shell or init);
    # its status as the container sees it.
    status = dict(
        line.split(":", 1)
        for line in _exec(running.name, "cat", "/proc/1/status").stdout.splitlines()
        if ":" in line
    )
    assert status["Name"].strip() == "streamgate", status["Name"]
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["Gid"].split() == [str(UID)] * 4
    assert status["NoNewPrivs"].strip() == "1"
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    # The root filesystem is read-only; /tmp (the chart's emptyDir) is not.
    probe = (
        "import sys\ntry:\n open(sys.argv[1], 'w')\n"
        "except OSError as e:\n print(e.errno)\nelse:\n print('ok')"
    )
    assert _exec(running.name, "python3", "-c", probe, "/opt/streamgate/x").stdout.strip() == "30"
    assert _exec(running.name, "python3", "-c", probe, "/etc/x").stdout.strip() == "30"
    assert _exec(running.name, "python3", "-c", probe, "/tmp/x").stdout.strip() == "ok"


def test_no_pip_and_compiled_byte_code(running: Running) -> None:
    find_pip = "import importlib.util; print(importlib.util.find_spec('pip'))"
    for python in ("python3", "/opt/streamgate/bin/python"):
        assert _exec(running.name, python, "-c", find_pip).stdout.strip() == "None", python
    which = _exec(running.name, "/opt/streamgate/bin/python", "-c",
                  "import shutil; print([shutil.which(p) for p in ('pip', 'pip3')])")  # fmt: skip
    assert which.stdout.strip() == "[None, None]"
    # Every module of the package and its dependencies loads from compiled byte-code
    # (`python -v` says where each code object comes from); nothing is compiled at start.
    verbose = _exec(
        running.name,
        "/opt/streamgate/bin/python",
        "-v",
        "-c",
        "import app.cli.main, app.webhook.serve",
    )
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    sources = re.findall(r"^# code object from '?(\S+?)'?$", verbose.stderr, re.M)
    ours = [s for s in sources if s.startswith("/opt/streamgate/")]
    assert len(ours) > 100, sources[:20]
    assert all(s.endswith(".pyc") for s in ours), [s for s in ours if not s.endswith(".pyc")][:10]
    assert "bytecode is stale" not in verbose.stderr


def test_labels(image: str) -> None:
    labels = json.loads(
        engine("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout
    )
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', pyproject, re.M)[1]  # type: ignore[index]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    revision = labels["org.opencontainers.image.revision"]
    assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?", revision), revision
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"]
    )
    assert "org.opencontainers.image.source" in labels


def _warnings(kubectl: Kubectl, namespace: str, example: str) -> list[str]:
    out = kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        str(ROOT / "examples" / example),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [
        line.replace(namespace, "<ns>")
        for line in out.stderr.splitlines()
        if line.startswith("Warning:")
    ]


def test_admissions_through_the_apiserver_match_the_local_process(
    running: Running,
    kubectl: Kubectl,
    cluster: Path,
    seeded_registry: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The chart's own webhook configurations in URL mode, sent only this run's namespace.
    ca = base64.b64encode(running.ca.read_bytes()).decode()
    suffix = running.namespace.rsplit("-", 1)[1]
    hooks = [
        doc
        for doc in helm_template(
            running.release,
            "streamgate-system",
            "deployment.enabled=false",
            f"webhook.url=https://127.0.0.1:{running.port}",
            f"webhook.caBundle={ca}",
            f"webhook.namespaceSelectorExpressions[0].key={RUN_LABEL}",
            "webhook.namespaceSelectorExpressions[0].operator=In",
            strings=(f"webhook.namespaceSelectorExpressions[0].values[0]={suffix}",),
        )
        if doc["kind"].endswith("WebhookConfiguration")
    ]
    assert len(hooks) == 2
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": hooks})
    other = f"sg-image-local-{suffix}"
    kubectl("create", "namespace", other)
    kubectl("label", "namespace", other, f"{RUN_LABEL}={suffix}l")
    kubectl("apply", "-f", "-", stdin=manifest)
    try:
        _wait_for_warning(kubectl, running.namespace)
        from_image = {ex: _warnings(kubectl, running.namespace, ex) for ex in EXAMPLES}
        with local_webhook(
            kubectl,
            tmp_path_factory.mktemp("local"),
            f"{suffix}l",
            policy=(ROOT / "examples" / "policy.yaml").read_text(),
            probe_namespace=other,
        ):
            from_local = {ex: _warnings(kubectl, other, ex) for ex in EXAMPLES}
        # helm uninstall's pre-delete hook, the chart's Job command in this image: both
        # configurations go.
        _run_uninstall_hook(running, kubectl, cluster)
        for doc in hooks:
            gone = kubectl("get", doc["kind"], doc["metadata"]["name"], check=False)
            assert gone.returncode != 0 and "NotFound" in gone.stderr, doc["kind"]
    finally:
        kubectl("delete", "-f", "-", "--ignore-not-found", stdin=manifest, check=False)
        kubectl("delete", "namespace", other, "--wait=false", check=False)
    assert from_image == from_local
    assert f"Warning: {NO_ARTIFACT}" in from_image["02-no-artifact-pod.yaml"]
    assert sum(len(w) for w in from_image.values()) >= 3, from_image


def _wait_for_warning(kubectl: Kubectl, namespace: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _warnings(kubectl, namespace, "02-no-artifact-pod.yaml"):
            return
        time.sleep(0.5)
    raise AssertionError("the apiserver never called the container's webhook")


def _run_uninstall_hook(running: Running, kubectl: Kubectl, cluster: Path) -> None:
    job = next(d for d in running.chart if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    account = job["spec"]["template"]["spec"]["serviceAccountName"]
    sa = _service_account_dir(
        kubectl, cluster, running.work / "hook-serviceaccount", account, running.namespace
    )
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    user = f"{security.get('runAsUser', UID)}:{security.get('runAsGroup', UID)}"
    out = engine(
        "run", "--rm", "--network", "host",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        "--read-only", "--user", user, "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "-v", f"{sa}:{SA_DIR}:ro",
        "-e", f"KUBERNETES_SERVICE_HOST={running.api[0]}",
        "-e", f"KUBERNETES_SERVICE_PORT={running.api[1]}",
        # the Job's command, resolved through the image's PATH as the kubelet would
        "--entrypoint", container["command"][0],
        TAG, *container["command"][1:], *container["args"],
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"the uninstall hook failed:\n{out.stdout}\n{out.stderr}"
