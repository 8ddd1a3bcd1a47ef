"""`streamgate scan` and `streamgate explain` as users run them (the installed command),
against the local control plane (KWOK nodes in AKS-shaped pools) and olareg seeded with the
demo images. The scan is limited to this module's own namespaces, so it does not depend on
what other test runs keep in the shared cluster."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REGISTRY, ROOT, Kubectl

pytestmark = pytest.mark.e2e

BIN = ROOT / ".venv" / "bin" / "streamgate"
POLICY = ROOT / "examples" / "policy.yaml"
STREAMABLE = f"{REGISTRY}/demo/streamable:v1"
PLAIN = f"{REGISTRY}/demo/plain:v1"
MULTIARCH = f"{REGISTRY}/demo/multiarch:v1"
MISSING = f"{REGISTRY}/demo/missing-{uuid.uuid4().hex[:6]}:v1"
POOL = "kubernetes.azure.com/agentpool"


@pytest.fixture(scope="module")
def seeded(seeded_registry: str) -> dict[str, dict[str, Any]]:
    """What the seeder pushed (idempotent: the same digests again), by repo:tag."""
    from tests.support.registries import ensure_registries, run_seeder

    result = run_seeder(ensure_registries().olareg.seeder_args())
    return result.images


def streamgate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"streamgate {' '.join(args)} failed:\n{out.stderr}")
    return out


def template(image: str, restart: str = "Always", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "x"}},
        "spec": {"restartPolicy": restart, "containers": [{"name": "app", "image": image}], **spec},
    }


def obj(kind: str, name: str, ns: str, image: str, **spec: Any) -> dict[str, Any]:
    selector = {"matchLabels": {"app": "x"}}
    bodies: dict[str, dict[str, Any]] = {
        "Deployment": {"apiVersion": "apps/v1", "spec": {"selector": selector}},
        "StatefulSet": {
            "apiVersion": "apps/v1",
            "spec": {"selector": selector, "serviceName": name},
        },
        "DaemonSet": {"apiVersion": "apps/v1", "spec": {"selector": selector}},
        "ReplicaSet": {"apiVersion": "apps/v1", "spec": {"selector": selector, "replicas": 0}},
        "ReplicationController": {"apiVersion": "v1", "spec": {"selector": {"app": "x"}}},
        "Job": {"apiVersion": "batch/v1", "spec": {"suspend": True}},
    }
    if kind == "Pod":
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "spec": {"containers": [{"name": "app", "image": image}], **spec},
        }
    elif kind == "CronJob":
        job = {"template": template(image, "OnFailure", **spec)}
        body = {
            "apiVersion": "batch/v1",
            "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": job}},
        }
    else:
        body = bodies[kind]
        restart = "Never" if kind == "Job" else "Always"
        body["spec"]["template"] = template(image, restart, **spec)
    body.update(kind=kind, metadata={"name": name, "namespace": ns})
    return body


@pytest.fixture(scope="module")
def workloads(kubectl: Kubectl, seeded: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """Two fresh namespaces (one labelled enforce) holding one workload per case."""
    suffix = uuid.uuid4().hex[:5]
    apps, batch = f"sg-scan-apps-{suffix}", f"sg-scan-batch-{suffix}"
    kubectl("create", "namespace", apps)
    kubectl("create", "namespace", batch)
    pinned = f"{REGISTRY}/demo/streamable@{seeded['demo/streamable:v1']['digest']}"
    on_streaming_pool = {"nodeSelector": {POOL: "streamub"}}
    items = [
        obj("Deployment", "web", apps, STREAMABLE, **on_streaming_pool),
        obj("Deployment", "legacy", apps, PLAIN),
        obj("StatefulSet", "multi", apps, MULTIARCH, **on_streaming_pool),
        obj("DaemonSet", "agent", apps, MISSING),
        obj("Pod", "nginx", apps, "registry.example.com/nginx:1.27"),
        obj("Deployment", "armed", apps, STREAMABLE, nodeSelector={POOL: "arm"}),
        obj("CronJob", "nightly", batch, pinned, **on_streaming_pool),
        obj("Job", "migrate", batch, PLAIN, **on_streaming_pool),
        obj("ReplicationController", "old", batch, STREAMABLE, **on_streaming_pool),
        obj("ReplicaSet", "lonely", batch, MULTIARCH, **on_streaming_pool),
    ]
    exempt = obj("Deployment", "skipme", apps, PLAIN)
    exempt["metadata"]["annotations"] = {"streamgate.io/exempt": "test"}
    items.append(exempt)
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    kubectl("apply", "-f", "-", stdin=manifest, timeout=120)
    # enforce only now: a webhook judging every namespace (a running `make demo`) would have
    # refused the plain Job
    kubectl("label", "namespace", batch, "streamgate.io/mode=enforce")
    yield apps, batch
    for ns in (apps, batch):
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def scan_json(cluster: Path, *namespaces: str) -> dict[str, Any]:
    args = ["scan", "--kubeconfig", str(cluster), "--policy", str(POLICY), "-o", "json"]
    for ns in namespaces:
        args += ["-n", ns]
    out = streamgate(*args)
    return json.loads(out.stdout)


def test_scan_finds_the_seeded_workloads_with_the_right_verdicts(cluster, workloads, seeded):
    apps, batch = workloads
    doc = scan_json(cluster, apps, batch)
    got = {
        f"{w['kind']} {w['namespace']}/{w['name']}": (w["mode"], w["verdict"])
        for w in doc["workloads"]
    }
    assert got == {
        f"Deployment {apps}/web": ("warn", "streamable"),
        f"Deployment {apps}/legacy": ("warn", "not-streamable"),
        f"Deployment {apps}/armed": ("warn", "streamable"),
        f"Deployment {apps}/skipme": ("warn", "skipped"),
        f"StatefulSet {apps}/multi": ("warn", "streamable"),
        f"DaemonSet {apps}/agent": ("warn", "unknown"),
        f"Pod {apps}/nginx": ("warn", "not-acr"),
        f"CronJob {batch}/nightly": ("enforce", "streamable"),
        f"Job {batch}/migrate": ("enforce", "not-streamable"),
        f"ReplicationController {batch}/old": ("enforce", "streamable"),
        f"ReplicaSet {batch}/lonely": ("enforce", "streamable"),
    }
    assert doc["totals"] == {
        "workloads": 11,
        "namespaces": 2,
        "streamable": 6,
        "not-streamable": 2,
        "unknown": 1,
        "not-acr": 1,
        "skipped": 1,
        "error": 0,
        "digestPinned": 1,  # nightly
        "poolsCannotStream": 1,  # armed: only the arm pool
        "poolsMayNotStream": 2,  # legacy, agent: no nodeSelector
        "willStream": 4,  # web, multi, old, lonely
    }
    assert doc["imageTotals"] == {"streamable": 3, "not-streamable": 1, "unknown": 1}
    images = {i["image"]: i for i in doc["images"]}
    assert images[PLAIN]["reason"] == "no streaming artifact"
    assert images[MISSING]["reason"] == "image not found in registry"
    streamable = seeded["demo/streamable:v1"]
    assert images[STREAMABLE]["digest"] == streamable["digest"]
    assert images[STREAMABLE]["artifact"] == streamable["referrers"][0]["digest"]
    armed = next(w for w in doc["workloads"] if w["name"] == "armed")
    assert armed["pools"] == {"known": True, "total": 1, "streaming": [], "notStreaming": ["arm"]}
    web = next(w for w in doc["workloads"] if w["name"] == "web")
    assert web["pools"]["streaming"] == ["streamub"] and web["streaming"] == "all"
    # the Deployments' ReplicaSets and Pods the controllers made are judged through them
    assert all(w["name"] != "lonely" or w["kind"] == "ReplicaSet" for w in doc["workloads"])


def test_scan_table_and_markdown(cluster, workloads):
    apps, batch = workloads
    table = streamgate(
        "scan", "--kubeconfig", str(cluster), "--policy", str(POLICY), "-n", f"{apps},{batch}"
    ).stdout
    lines = table.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "KIND",
        "NAME",
        "MODE",
        "VERDICT",
        "IMAGES",
        "PINNED",
        "POOLS",
        "NOTES",
    ]
    legacy = next(line.split() for line in lines if " legacy " in line)
    assert legacy[:8] == [
        apps,
        "Deployment",
        "legacy",
        "warn",
        "not-streamable",
        "0/1",
        "-",
        "2/10",
    ]
    assert f"Totals: 11 workloads in 2 namespaces (namespaces {apps}, {batch})" in table
    assert "  will stream (streamable, by tag, on streaming pools)  4" in table
    assert "    warn: app: 127.0.0.1:25000/demo/plain:v1 has no streaming artifact" in table
    markdown = streamgate(
        "scan", "--kubeconfig", str(cluster), "--policy", str(POLICY), "-n", apps, "-o", "markdown"
    ).stdout
    assert markdown.startswith("# streamgate scan")
    assert f"## {apps}" in markdown and "| not streamable | 1 |" in markdown


def test_scan_usage_errors(cluster):
    out = streamgate(
        "scan", "--kubeconfig", str(cluster), "-n", f"nope-{uuid.uuid4().hex[:5]}", check=False
    )
    assert out.returncode == 2 and "not found" in out.stderr
    out = streamgate("scan", "--bogus", check=False)
    assert out.returncode == 2


def explain(image: str, *extra: str) -> str:
    return streamgate("explain", image, "--policy", str(POLICY), *extra).stdout


def test_explain_streamable_shows_the_referrer(seeded):
    text = explain(STREAMABLE)
    pushed = seeded["demo/streamable:v1"]
    (referrer,) = pushed["referrers"]
    assert f"digest      tag v1 -> {pushed['digest']}" in text
    assert "referrers   streaming artifact found" in text
    assert f"via the referrers API: streaming artifact {referrer['digest']}" in text
    assert "artifactType application/vnd.azure.artifact.streaming.v1" in text
    assert "streaming.platform.arch: amd64" in text
    assert "conversion  not asked: a streaming artifact was found" in text
    assert "\nverdict     streamable\n" in text
    assert f"GET http://{REGISTRY}/v2/demo/streamable/manifests/v1 -> 200" in text


def test_explain_multiarch_shows_the_platform_choice(seeded):
    text = explain(MULTIARCH)
    pushed = seeded["demo/multiarch:v1"]
    amd = pushed["platforms"]["linux/amd64"]
    assert f"platform    linux/amd64 -> {amd}" in text
    assert "index lists: linux/amd64, linux/arm64" in text
    assert f"of {amd[:19]}… (platform entry), via the referrers API: streaming artifact" in text
    assert "\nverdict     streamable\n" in text


def test_explain_plain_has_no_streaming_artifact(cluster, workloads):
    text = explain(PLAIN)
    assert "referrers   no streaming artifact" in text
    assert "conversion  never requested" in text
    assert "verdict     not-streamable: no streaming artifact" in text
    assert (
        "to ask ACR for one: az acr artifact-streaming create -n demoacr --image demo/plain:v1"
        in text
    )
    # with the cluster: the namespace's mode and the node pools
    _, batch = workloads
    text = explain(PLAIN, "--kubeconfig", str(cluster), "-n", batch)
    assert "would be denied (mode enforce)" in text
    assert "can stream: streamazl, streamub" in text
    doc = json.loads(explain(PLAIN, "-o", "json"))
    assert doc["verdict"] == "not-streamable" and doc["webhook"]["warnings"]


CHROMIUM = ROOT / "hack" / "chromium.sh"


def chromium(*args: str) -> str:
    """hack/chromium.sh (installs Debian's chromium when missing); pages open with no network."""
    out = subprocess.run(
        [str(CHROMIUM), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, f"hack/chromium.sh {args[0]} failed:\n{out.stderr}"
    return out.stdout


def test_scan_html_in_headless_chromium(cluster, workloads, kubectl, tmp_path):
    """The report of the seeded workloads, opened in Chromium without network: the script ran
    (its CSP hash holds), the numbers match the scan's other outputs, and a screenshot is not
    blank and shows the charts."""
    from tests.support.png import colour_stats, read_png

    apps, batch = workloads
    base = ["scan", "--kubeconfig", str(cluster), "--policy", str(POLICY), "-n", f"{apps},{batch}"]
    page = tmp_path / "report.html"
    page.write_text(streamgate(*base, "-o", "html").stdout)
    dom = chromium("dump-dom", str(page))
    assert 'data-sortable="ready"' in dom  # the sorting script ran under the page's CSP
    totals = json.loads(streamgate(*base, "-o", "json").stdout)["totals"]
    assert f"{totals['willStream']} of {totals['workloads']} workloads" in dom  # 4 of 11
    # the plain image: legacy (1 replica) and migrate (1 pod); its command as the table says it
    table = streamgate(*base).stdout
    fix = re.search(r"fix: (az acr artifact-streaming create \S+ \S+ \S+ demo/plain:v1)", table)
    assert fix, table
    row = re.search(r"<tr><td><code>([^<]*)</code></td>(.*?)</tr>", dom)
    assert row and row.group(1) == PLAIN
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(2))
    assert cells[:2] == ["2", "2"] and cells[3] == f"<code>{fix.group(1)}</code>"
    assert "<td>arm</td><td>no</td><td>arm64</td>" in dom  # a pool that can't stream, and why
    assert f"<td>{batch}</td><td>CronJob</td><td>nightly</td>" in dom  # digest-pinned
    png = tmp_path / "report.png"
    chromium("screenshot", str(page), str(png), "1280x1400")
    image = read_png(png.read_bytes())
    assert (image.width, image.height) == (1280, 1400)
    drawn, colours = colour_stats(image)
    assert drawn > 0.05 and colours > 20, (drawn, colours)  # not blank: text, tables, charts
    green = {image.pixel(x, y) for y in range(0, 1400, 2) for x in range(0, 1280, 2)}
    assert (46, 125, 50) in green  # the streaming share's bars (#2e7d32)


def test_scan_html_escapes_a_hostile_image(cluster, kubectl, tmp_path):
    """An image string the apiserver accepts but that is HTML: shown as text in the browser's
    DOM, never as an element."""
    ns = f"sg-scan-evil-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", ns)
    try:
        hostile = f'{REGISTRY}/demo/x:v1"><img src=x onerror=alert(1)>'
        manifest = obj("Pod", "evil", ns, hostile)
        kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        page = tmp_path / "evil.html"
        page.write_text(
            streamgate(
                "scan",
                "--kubeconfig",
                str(cluster),
                "--policy",
                str(POLICY),
                "-n",
                ns,
                "-o",
                "html",
            ).stdout
        )
        dom = chromium("dump-dom", str(page))
        assert "<img" not in dom and "onerror=alert(1)&gt;" in dom
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


# Clicks headers of the last table (every workload) as a user would and writes down the
# order of one column after each click. Run by a test copy of the page whose CSP allows it.
_CLICKS = """
(function () {
  var table = Array.prototype.slice.call(document.querySelectorAll("table.sortable")).pop();
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function col(name) { return heads.map(function (h) { return h.textContent; }).indexOf(name); }
  function order(name) {
    var i = col(name);
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      return r.cells[i].textContent;
    }).join("|");
  }
  heads[col("name")].click();
  document.body.setAttribute("data-name-up", order("name"));
  heads[col("name")].click();
  document.body.setAttribute("data-name-down", order("name"));
  heads[col("pods")].click();
  document.body.setAttribute("data-pods-up", order("pods"));
  document.body.setAttribute("data-pods-sort", heads[col("pods")].getAttribute("aria-sort"));
})();
"""


def test_scan_html_tables_sort_in_the_browser(cluster, workloads, tmp_path):
    import base64
    import hashlib
    import html

    apps, batch = workloads
    page = streamgate(
        "scan", "--kubeconfig", str(cluster), "--policy", str(POLICY), "-n", f"{apps},{batch}",
        "-o", "html",
    ).stdout  # fmt: skip
    digest = base64.b64encode(hashlib.sha256(_CLICKS.encode()).digest()).decode()
    harness = page.replace("script-src ", f"script-src 'sha256-{digest}' ", 1).replace(
        "</body>", f"<script>{_CLICKS}</script></body>", 1
    )
    path = tmp_path / "sorting.html"
    path.write_text(harness)
    dom = chromium("dump-dom", str(path))

    def attr(name: str) -> list[str]:
        found = re.search(rf'{name}="([^"]*)"', dom)
        assert found, f"{name} not set: the clicks did not run"
        return html.unescape(found.group(1)).split("|")

    names = attr("data-name-up")
    assert len(names) == 11 and names == sorted(names)
    assert attr("data-name-down") == sorted(names, reverse=True)
    pods = [int(p.replace(",", "")) for p in attr("data-pods-up")]
    assert pods == sorted(pods) and len(set(pods)) > 1
    assert attr("data-pods-sort") == ["ascending"]


# ---- -o policyreport: the real CRDs, the real apiserver's schema validation ----------------


def _results(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(r["resources"][0]["name"], r["rule"]): r["result"] for r in doc["results"]}


def test_scan_policyreports_are_accepted_by_the_apiserver(
    cluster, kubectl, workloads, policyreport_crds
):
    apps, batch = workloads
    base = ["scan", "--kubeconfig", str(cluster), "--policy", str(POLICY), "-n", f"{apps},{batch}"]
    out = streamgate(*base, "-o", "policyreport", "-q")
    applied = kubectl("apply", "-f", "-", stdin=out.stdout)  # kubectl validates strictly
    assert f"policyreport.wgpolicyk8s.io/streamgate-{apps} created" in applied.stdout
    table = kubectl("get", "policyreports", "-n", apps).stdout.splitlines()
    assert table[0].split()[:7] == ["NAME", "KIND", "NAME", "PASS", "FAIL", "WARN", "ERROR"]
    assert table[1].split()[0] == f"streamgate-{apps}"
    stored = kubectl.json("get", "policyreport", f"streamgate-{apps}", "-n", apps)
    # what the apiserver kept after pruning unknown fields is what streamgate wrote
    (written, _) = [d for d in yaml.safe_load_all(out.stdout)]
    assert stored["results"] == written["results"]
    assert stored["summary"] == written["summary"]
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "streamgate"}
    got = _results(stored)
    assert got[("legacy", "image-streamable")] == "fail"
    assert got[("legacy", "pools-can-stream")] == "warn"
    assert got[("web", "image-streamable")] == "pass"
    assert got[("web", "pools-can-stream")] == "pass"
    assert got[("armed", "pools-can-stream")] == "fail"
    assert got[("agent", "image-streamable")] == "error"  # image not found in the registry
    assert got[("nginx", "image-streamable")] == "skip"  # not from ACR
    assert got[("skipme", "digest-pin")] == "skip"  # exempt
    legacy = next(
        r
        for r in stored["results"]
        if r["resources"][0]["name"] == "legacy" and r["rule"] == "image-streamable"
    )
    assert (
        legacy["resources"][0]["uid"]
        == kubectl.json("get", "deployment", "legacy", "-n", apps)["metadata"]["uid"]
    )
    batch_report = kubectl.json("get", "policyreport", f"streamgate-{batch}", "-n", batch)
    assert _results(batch_report)[("nightly", "digest-pin")] == "warn"
    # applied again: nothing changes but the timestamps
    again = kubectl("apply", "-f", "-", stdin=streamgate(*base, "-o", "policyreport", "-q").stdout)
    assert f"streamgate-{apps} " in again.stdout

    orep = streamgate(*base, "-o", "openreports", "-q").stdout
    applied = kubectl("apply", "-f", "-", stdin=orep)
    assert f"report.openreports.io/streamgate-{batch} created" in applied.stdout
    stored = kubectl.json("get", "reports.openreports.io", f"streamgate-{batch}", "-n", batch)
    assert stored["source"] == "streamgate"
    assert _results(stored) == _results(batch_report)


def test_the_apiserver_refuses_a_report_outside_the_schema(kubectl, workloads, policyreport_crds):
    """The check above can fail: the CRD's schema is enforced."""
    apps, _ = workloads
    bad = {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {"name": "bad", "namespace": apps},
        "results": [{"policy": "p", "result": "maybe"}],
    }
    out = kubectl("apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert out.returncode != 0
    assert 'Unsupported value: "maybe"' in out.stderr
