"""One-call mode (chart `webhook.calls: one`) through the real kube-apiserver: only the
mutating webhook is registered, on /admit, and it annotates, warns and denies in one call
(issue 19, item 3). The chart's own webhook configuration is rendered by hack/webhook.sh."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REGISTRY, ROOT, RUN_LABEL, Kubectl, local_webhook

pytestmark = pytest.mark.e2e

PLAIN = f"{REGISTRY}/demo/plain:v1"
STREAMING = f"{REGISTRY}/demo/streamable:v1"


@pytest.fixture(scope="module")
def namespaces(
    cluster: Path, seeded_registry: str, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    suffix = uuid.uuid4().hex[:5]
    warn, enforce = f"sg-1w-{suffix}", f"sg-1e-{suffix}"
    for ns, mode in ((warn, "warn"), (enforce, "enforce")):
        kubectl("create", "namespace", ns)
        kubectl("label", "namespace", ns, f"{RUN_LABEL}={suffix}", f"streamgate.io/mode={mode}")
    try:
        with local_webhook(
            kubectl,
            tmp_path_factory.mktemp("one-call"),
            suffix,
            policy=(ROOT / "examples" / "policy.yaml").read_text(),
            helm_set="webhook.calls=one webhook.reinvocationPolicy=IfNeeded",
            probe_namespace=warn,
        ):
            yield warn, enforce, f"sg-test-{suffix}"
    finally:
        for ns in (warn, enforce):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


def pod(ns: str, image: str, *, streaming_pools: bool = False) -> str:
    spec: dict[str, object] = {"containers": [{"name": "app", "image": image}]}
    if streaming_pools:
        spec["nodeSelector"] = {"kubernetes.azure.com/agentpool": "streamub"}
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p-{uuid.uuid4().hex[:6]}", "namespace": ns},
            "spec": spec,
        }
    )


def test_only_the_mutating_configuration_is_registered(
    namespaces: tuple[str, str, str], kubectl: Kubectl
) -> None:
    release = namespaces[2]

    def ours(kind: str) -> list[dict]:
        items = kubectl.json("get", kind)["items"]
        return [c for c in items if c["metadata"]["name"].startswith(release)]

    (mutating,) = ours("mutatingwebhookconfigurations")
    assert [w["name"] for w in mutating["webhooks"]] == ["admit.streamgate.io"]
    assert mutating["webhooks"][0]["clientConfig"]["url"].endswith("/admit")
    assert mutating["webhooks"][0]["reinvocationPolicy"] == "IfNeeded"
    assert ours("validatingwebhookconfigurations") == []


def test_one_call_warns_and_annotates(namespaces: tuple[str, str, str], kubectl: Kubectl) -> None:
    warn = namespaces[0]
    out = kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=pod(warn, PLAIN))
    assert "Warning: app: " + PLAIN + " has no streaming artifact; fix: " in out.stderr
    created = json.loads(out.stdout)
    assert created["metadata"]["annotations"]["streamgate.io/streaming"] == "none"
    clean = kubectl(
        "create",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        stdin=pod(warn, STREAMING, streaming_pools=True),
    )
    assert "Warning" not in clean.stderr, clean.stderr
    assert json.loads(clean.stdout)["metadata"]["annotations"]["streamgate.io/streaming"] == "all"


def test_one_call_denies_in_enforce(namespaces: tuple[str, str, str], kubectl: Kubectl) -> None:
    enforce = namespaces[1]
    out = kubectl("create", "--dry-run=server", "-f", "-", stdin=pod(enforce, PLAIN), check=False)
    assert out.returncode != 0, out.stdout
    assert 'admission webhook "admit.streamgate.io" denied the request' in out.stderr
    assert "has no streaming artifact" in out.stderr
