import json
from pathlib import Path

import pytest

from app.cli.main import EXIT_DENIED, EXIT_OK, EXIT_USAGE, main

EXAMPLES = Path(__file__).parents[3] / "examples"
ACR = "myreg.azurecr.io"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


DEPLOY = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  template:
    spec:
      containers: [{{name: app, image: "{ACR}/web@sha256:{"d" * 64}"}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {{name: p}}
    spec: {{containers: [{{name: c, image: {ACR}/a:1}}]}}
"""


def test_table_lists_workloads_and_problems(tmp_path, capsys):
    path = write(tmp_path, "m.yaml", DEPLOY)
    assert main(["check", "-f", str(path), "--offline"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "Deployment  shop/web" in out
    assert "Pod         default/p" in out
    assert "Service" not in out
    assert "warn: app: myreg.azurecr.io/web@sha256:dddddddddddd… is pinned by digest" in out
    assert out.rstrip().endswith("2 workloads, 0 would be denied")


def test_json_output_and_enforce_exit_code(tmp_path, capsys):
    path = write(tmp_path, "m.yaml", DEPLOY)
    policy = write(tmp_path, "p.yaml", "onError: deny\n")
    code = main(
        [
            "check",
            "-f",
            str(path),
            "--offline",
            "--policy",
            str(policy),
            "--mode",
            "enforce",
            "-o",
            "json",
        ]
    )
    assert code == EXIT_DENIED
    data = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["outcome"]) for r in data] == [
        ("Deployment", "denied"),
        ("Pod", "denied"),
    ]
    assert data[0]["images"][0]["digestPinned"] is True
    assert data[0]["images"][0]["verdict"] == "unknown"
    assert {p["rule"] for p in data[0]["problems"]} == {"onError", "digestPinned"}


def test_directory_of_examples_is_read(capsys):
    assert (
        main(["check", "-f", str(EXAMPLES), "--offline", "--policy", str(EXAMPLES / "policy.yaml")])
        == EXIT_OK
    )
    out = capsys.readouterr().out
    for name in (
        "default/web",
        "default/plain",
        "default/nightly",
        "default/db",
        "payments/checkout",
    ):
        assert name in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-f", "/no/such/file.yaml"], "no such file"),
        (["-f", "{bad}", "--policy", "{badpolicy}"], "invalid policy"),
        (["-f", "{badyaml}"], "not valid YAML"),
    ],
    ids=["missing-file", "bad-policy", "bad-yaml"],
)
def test_usage_errors_exit_2(tmp_path, capsys, args, fragment):
    files = {
        "bad": write(tmp_path, "ok.yaml", "kind: Pod\n"),
        "badpolicy": write(tmp_path, "p.yaml", "mode: loud\n"),
        "badyaml": write(tmp_path, "b.yaml", "a: [\n"),
    }
    args = [a.format(**files) for a in args]
    assert main(["check", "--offline", *args]) == EXIT_USAGE
    assert fragment in capsys.readouterr().err


def test_pod_without_spec_is_reported_not_fatal(tmp_path, capsys):
    path = write(tmp_path, "m.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    assert main(["check", "-f", str(path), "--offline"]) == EXIT_OK
    assert "error: Deployment has no spec object" in capsys.readouterr().out
