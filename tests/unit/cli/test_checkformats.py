import json
from pathlib import Path
from xml.etree import ElementTree as ET

import yaml

from app.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
ACR = "myacr.azurecr.io"

ENFORCED = f"""apiVersion: v1
kind: Namespace
metadata:
  name: pay
  labels: {{streamgate.io/mode: enforce}}
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: DeploymentList
  items:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: checkout, namespace: pay}}
    spec:
      template:
        spec:
          containers: [{{name: app, image: "{ACR}/web@sha256:{"a" * 64}"}}]
"""


def _run(tmp_path, capsys, *args):
    path = tmp_path / "m.yaml"
    path.write_text(ENFORCED)
    code = main(["check", "-f", str(path), "--offline", *args])
    return code, capsys.readouterr()


def test_namespace_labels_in_the_input_set_the_mode_and_lists_are_expanded(tmp_path, capsys):
    code, out = _run(tmp_path, capsys, "-o", "json", "--policy", str(tmp_path / "p.yaml"))
    assert code == 2  # the policy file is missing: one line
    (tmp_path / "p.yaml").write_text("rules: {digestPinned: deny}\n")
    code, out = _run(tmp_path, capsys, "-o", "json", "--policy", str(tmp_path / "p.yaml"))
    data = json.loads(out.out)
    assert [(d["kind"], d["namespace"], d["name"]) for d in data] == [
        ("Deployment", "pay", "checkout")
    ]
    assert data[0]["mode"] == "enforce" and data[0]["outcome"] == "denied"
    assert code == 1
    assert "node pools not judged" in out.err and "offline" in out.err


def test_yaml_output_is_the_json_output(tmp_path, capsys):
    _, as_json = _run(tmp_path, capsys, "-o", "json")
    _, as_yaml = _run(tmp_path, capsys, "-o", "yaml")
    assert yaml.safe_load(as_yaml.out) == json.loads(as_json.out)


def test_sarif_has_one_result_per_problem_located_at_the_file(tmp_path, capsys):
    _, out = _run(tmp_path, capsys, "-o", "sarif")
    sarif = json.loads(out.out)
    assert sarif["version"] == "2.1.0"
    (run,) = sarif["runs"]
    assert run["tool"]["driver"]["name"] == "streamgate"
    rules = {r["ruleId"] for r in run["results"]}
    assert {"digestPinned", "onError"} <= rules
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == rules
    uri = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == str(tmp_path / "m.yaml")
    assert all(r["level"] in ("error", "warning", "note") for r in run["results"])


def test_junit_has_a_test_case_per_workload_and_failures_for_denials(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("rules: {digestPinned: deny}\n")
    code, out = _run(tmp_path, capsys, "-o", "junit", "--policy", str(tmp_path / "p.yaml"))
    suite = ET.fromstring(out.out.split("?>", 1)[1])
    assert suite.tag == "testsuite" and suite.get("tests") == "1"
    assert suite.get("failures") == "1"
    (case,) = suite.findall("testcase")
    assert case.find("failure") is not None
    assert "pinned by digest" in case.find("failure").get("message")
    assert code == 1


def test_fail_on_warn(tmp_path, capsys):
    assert _run(tmp_path, capsys)[0] == 0
    assert _run(tmp_path, capsys, "--fail-on", "warn")[0] == 1


def test_a_nodes_file_without_runtime_classes_does_not_claim_pending(tmp_path, capsys):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels:\n"
        "    kubernetes.io/arch: amd64\n    kubernetes.io/os: linux\n"
        "    kubernetes.azure.com/agentpool: p1\n"
        "    kubernetes.azure.com/artifactstreaming-enabled: 'true'\n"
    )
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: k}\nspec:\n  runtimeClassName: kata\n"
        f"  containers: [{{name: a, image: '{ACR}/x:1'}}]\n"
    )
    main(["check", "-f", str(pod), "--offline", "--nodes", str(nodes), "-o", "json"])
    data = json.loads(capsys.readouterr().out)
    assert not any("Pending" in p["message"] for p in data[0]["problems"])
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    main(["check", "-f", str(pod), "--offline", "--nodes", str(empty), "-o", "json"])
    out = capsys.readouterr()
    assert "lists no Node: pools not judged" in out.err
    assert not any("Pending" in p["message"] for p in json.loads(out.out)[0]["problems"])
