"""`streamgate convert --from-scan` as users run it (the installed command) against the local
control plane and a real registry (olareg) behind the ACR front, whose /acr/v1 conversion
endpoints push a real streaming referrer (tests/support/acr_front.py). Its own namespace and
freshly pushed images, so other tests' expectations don't move: `scan` is the judge before
(what `convert --dry-run --from-scan` lists is exactly what it calls not streamable for want
of an artifact) and after (a second scan calls those images streamable)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import ROOT, Kubectl

pytestmark = pytest.mark.e2e

BIN = ROOT / ".venv" / "bin" / "streamgate"
POOL = "kubernetes.azure.com/agentpool"


class Streamgate:
    """The installed command with a policy reaching the front as `docker login` would (the
    null user, an ACR refresh token from the front's /oauth2/exchange)."""

    def __init__(self, front: Any, kubeconfig: Path, tmp: Path) -> None:
        settings = {
            "acr": True,
            "auth": "basic",
            "username_env": "SG_TEST_USER",
            "password_env": "SG_TEST_PASSWORD",
            "ca_file": front.ca_cert,
        }
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(
            yaml.safe_dump(
                {"acrRegistries": [front.host], "registry": {"registries": {front.host: settings}}}
            )
        )
        self.kubeconfig = kubeconfig
        self.env = {
            **os.environ,
            "SG_TEST_USER": "00000000-0000-0000-0000-000000000000",
            "SG_TEST_PASSWORD": front.refresh_token(),
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN), args[0], "--policy", str(self.policy)]
        argv += ["--kubeconfig", str(self.kubeconfig), *args[1:]]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=300, check=False, env=self.env
        )

    def scan(self, namespace: str) -> dict[str, Any]:
        out = self("scan", "-q", "-n", namespace, "-o", "json")
        assert out.returncode == 0, out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc


def deployment(name: str, ns: str, image: str, pool: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {POOL: pool},
                    "containers": [{"name": "app", "image": image}],
                },
            },
        },
    }


def test_convert_from_scan_lists_what_scan_calls_not_streamable_then_makes_it_stream(
    cluster: Path, kubectl: Kubectl, front: Any, tmp_path: Path
) -> None:
    from tests.support.registries import run_seeder

    suffix = uuid.uuid4().hex[:6]
    ns = f"sg-convert-{suffix}"
    seeded = run_seeder(front.seeder_args(), "seed", "--namespace", f"convert-e2e-{suffix}")
    repo = f"{front.host}/convert-e2e-{suffix}"
    plain, streamable = f"{repo}/plain:v1", f"{repo}/streamable:v1"
    sbom_only = f"{repo}/other-referrer:v1"  # an SBOM referrer, no streaming artifact
    pinned = f"{repo}/other-referrer@{seeded.digest(f'convert-e2e-{suffix}/other-referrer:v1')}"
    kubectl("create", "namespace", ns)
    try:
        items = [
            deployment("web", ns, plain, "streamub"),
            deployment("api", ns, streamable, "streamub"),
            deployment("pinned", ns, pinned, "streamub"),
            deployment("armed", ns, sbom_only, "arm"),  # the arm pool can't stream
        ]
        kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
            timeout=120,
        )
        sg = Streamgate(front, cluster, tmp_path)
        before = sg.scan(ns)
        rows = {w["name"]: w for w in before["workloads"]}
        verdicts = {w["name"]: w["images"][0]["verdict"] for w in before["workloads"]}
        assert verdicts == {
            "web": "not-streamable",
            "api": "streamable",
            "pinned": "not-streamable",
            "armed": "not-streamable",
        }
        assert rows["armed"]["pools"]["streaming"] == [] and rows["pinned"]["digestPinned"]
        missing = [
            w["images"][0]["image"]
            for w in before["workloads"]
            if w["images"][0]["verdict"] == "not-streamable"
            and not w["digestPinned"]
            and w["pools"]["streaming"]
        ]
        assert missing == [plain]

        front.reset_stats()
        dry = sg("convert", "--dry-run", "--from-scan", "-q", "-n", ns)
        assert (dry.returncode, dry.stderr) == (0, ""), dry.stdout
        lines = dry.stdout.splitlines()
        assert [ln.removeprefix("would start: ") for ln in lines if "would start" in ln] == (
            missing
        )
        assert sorted(ln.split(": skipped: ")[0] for ln in lines if ": skipped: " in ln) == (
            sorted([pinned, sbom_only])
        )
        assert f"{sbom_only}: skipped: a conversion alone would not make it stream in " in (
            dry.stdout
        )
        assert lines[-1] == "3 images: 1 to start, 2 skipped"
        assert front.stats()["events"].get("conversion_started", 0) == 0

        done = sg("convert", "--from-scan", "-q", "-n", ns)
        assert (done.returncode, done.stderr) == (0, ""), done.stdout
        assert done.stdout.splitlines()[-1] == "3 images: 1 started, 1 succeeded, 2 skipped"

        after = sg.scan(ns)
        now = {w["name"]: w["images"][0]["verdict"] for w in after["workloads"]}
        assert now["web"] == "streamable"
        assert {i["image"]: i["verdict"] for i in after["images"]}[plain] == "streamable"

        again = sg("convert", "--from-scan", "-q", "-n", ns)
        assert again.returncode == 0
        assert again.stdout.splitlines()[-1] == "2 images: 2 skipped"
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
