"""Remediation from admissions, through the real apiserver: `kubectl apply` in a namespace with
`remediation: convert` -> the webhook (hack/webhook.sh, `serve --events`) warns that the
conversion started -> the ACR front (tests/support/acr_front.py, before a real olareg) runs it
and pushes a real streaming referrer -> a new Pod of that image is admitted without a warning
and annotated streamable, and the Deployment that asked carries an Event saying it finished.
50 Pods of one new image created at once start exactly one conversion (the front counts)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.remediation import STARTED
from tests.e2e.conftest import ROOT, RUN_LABEL, Kubectl, local_webhook

pytestmark = pytest.mark.e2e


def scrape(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def remedy(
    cluster: Path, kubectl: Kubectl, front: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from tests.support.registries import run_seeder

    suffix = uuid.uuid4().hex[:6]
    ns, probe = f"sg-remedy-{suffix}", f"sg-remedy-probe-{suffix}"
    repo = f"remedy-e2e-{suffix}"
    run_seeder(front.seeder_args(), "seed", "--namespace", repo)
    for name in (ns, probe):
        kubectl("create", "namespace", name)
        kubectl("label", "namespace", name, f"{RUN_LABEL}={suffix}")
    policy = yaml.safe_load((ROOT / "examples" / "policy.yaml").read_text())
    policy["acrRegistries"].append(front.host)
    policy["registry"]["registries"][front.host] = {
        "acr": True,
        "auth": "basic",
        "username_env": "SG_REMEDY_USER",
        "password_env": "SG_REMEDY_PASSWORD",
        "ca_file": front.ca_cert,
    }
    policy["remediation"] = {
        "namespaces": {ns: "convert"},
        "registries": [front.host],
        "pollSeconds": 0.5,
    }
    saved = {k: os.environ.get(k) for k in ("SG_REMEDY_USER", "SG_REMEDY_PASSWORD")}
    os.environ["SG_REMEDY_USER"] = "00000000-0000-0000-0000-000000000000"
    os.environ["SG_REMEDY_PASSWORD"] = front.refresh_token()
    os.environ["STREAMGATE_SERVE_ARGS"] = "--events --event-interval=5"
    try:
        with local_webhook(
            kubectl,
            tmp_path_factory.mktemp("remedy-webhook"),
            suffix,
            policy=yaml.safe_dump(policy),
            helm_set=f"policy.remediation.namespaces.{ns}=convert",
            probe_namespace=probe,
        ) as hook:
            yield {"ns": ns, "repo": f"{front.host}/{repo}", "hook": hook}
    finally:
        os.environ.pop("STREAMGATE_SERVE_ARGS", None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name in (ns, probe):
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def _deployment(name: str, ns: str, image: str) -> str:
    labels = {"app": name}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                },
            },
        }
    )


def _pod(name: str, ns: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def test_apply_starts_the_conversion_and_the_next_pod_streams(
    kubectl: Kubectl, front: Any, remedy: dict[str, Any]
) -> None:
    ns, image = remedy["ns"], f"{remedy['repo']}/plain:v1"
    metrics = remedy["hook"].metrics_url
    front.reset_stats()
    applied = kubectl("apply", "-f", "-", stdin=_deployment("web", ns, image))
    assert f"Warning: app: {image}: {STARTED}" in applied.stderr, applied.stderr
    wait_for(
        "the conversion to succeed",
        lambda: scrape(metrics, "streamgate_conversions_succeeded_total") >= 1,
    )
    assert front.stats()["events"]["conversion_started"] == 1
    assert scrape(metrics, 'streamgate_conversions_started_total{how="started"}') == 1
    created = kubectl("apply", "-f", "-", stdin=json.dumps(_pod("after", ns, image)))
    assert image not in created.stderr, created.stderr
    pod = kubectl.json("get", "pod", "after", "-n", ns)
    assert pod["metadata"]["annotations"]["streamgate.io/report"] == "app=streamable"
    event = wait_for(
        "the Event on the Deployment",
        lambda: [
            e
            for e in kubectl.json(
                "get", "events", "-n", ns, "--field-selector", "involvedObject.name=web"
            )["items"]
            if e["reason"] == "StreamingConversionSucceeded"
        ],
    )[0]
    assert event["type"] == "Normal" and event["involvedObject"]["kind"] == "Deployment"
    assert event["message"] == (
        f"streaming conversion of {image} finished; the next rollout streams"
    )


def test_fifty_pods_of_one_new_image_at_once_start_one_conversion(
    cluster: Path, front: Any, remedy: dict[str, Any]
) -> None:
    from kubernetes import client, config

    ns, image = remedy["ns"], f"{remedy['repo']}/other-referrer:v1"
    metrics = remedy["hook"].metrics_url
    api = client.CoreV1Api(config.new_client_from_config(str(cluster)))
    front.reset_stats()
    before = scrape(metrics, 'streamgate_conversions_started_total{how="started"}')
    succeeded = scrape(metrics, "streamgate_conversions_succeeded_total")
    with ThreadPoolExecutor(25) as pool:
        made = list(
            pool.map(
                lambda i: api.create_namespaced_pod(ns, _pod(f"burst-{i}", ns, image)),
                range(50),
            )
        )
    assert len(made) == 50
    wait_for(
        "the conversion to succeed",
        lambda: scrape(metrics, "streamgate_conversions_succeeded_total") > succeeded,
    )
    assert front.stats()["events"]["conversion_started"] == 1
    assert scrape(metrics, 'streamgate_conversions_started_total{how="started"}') == before + 1
    stored = api.read_namespaced_pod("burst-0", ns)
    assert stored.metadata.annotations["streamgate.io/report"] == "app=not-streamable"
