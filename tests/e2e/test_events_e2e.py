"""Kubernetes Events from streamgate, through the real apiserver: `kubectl apply` -> the
webhook (`serve --events`) -> an Event on the object that `kubectl get events` and
`kubectl describe` show; rate-limited per object and reason, repeats counted on one Event.

This module runs its own webhook process (the shared `webhook` fixture runs without
--events), wired in with the chart's webhook objects exactly as hack/webhook.sh wires its
own (`hack/webhook.sh render`), for namespaces carrying this module's own run label only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REGISTRY, ROOT, RUN_LABEL, WEBHOOK, Kubectl, free_port

pytestmark = pytest.mark.e2e

PLAIN = f"{REGISTRY}/demo/plain:v1"
INTERVAL = 10.0  # --event-interval for this webhook: short enough to wait out in a test
BIN = ROOT / ".venv" / "bin" / "streamgate"


@dataclass
class EventsWebhook:
    warn: str
    enforce: str
    metrics_url: str
    log: Path
    url: str = ""  # the webhook's own port, reachable without the apiserver
    ca: Path = Path()


def _wait_ready(url: str, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamgate exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"streamgate not ready:\n{log.read_text()[-3000:]}")


def _admitting(kubectl: Kubectl, namespace: str) -> None:
    probe = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": PLAIN}]},
        }
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = kubectl("apply", "--dry-run=server", "-f", "-", stdin=probe, check=False)
        if "Warning:" in out.stderr:
            return
        time.sleep(0.5)
    raise AssertionError("the events webhook did not start answering the apiserver")


@pytest.fixture(scope="module")
def events_webhook(
    cluster: Path, seeded_registry: str, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EventsWebhook]:
    suffix = uuid.uuid4().hex[:5]
    label = f"{RUN_LABEL}=ev{suffix}"
    hook = EventsWebhook(
        warn=f"sg-ev-warn-{suffix}",
        enforce=f"sg-ev-enforce-{suffix}",
        metrics_url="",
        log=Path(),
    )
    for ns, mode in ((hook.warn, "warn"), (hook.enforce, "enforce")):
        kubectl("create", "namespace", ns)
        kubectl("label", "namespace", ns, f"streamgate.io/mode={mode}", label)
    state = tmp_path_factory.mktemp("events-webhook")
    subprocess.run(
        [str(BIN), "certs", str(state / "certs"), "--host", "127.0.0.1"],
        check=True,
        capture_output=True,
    )
    shutil.copy(ROOT / "examples" / "policy.yaml", state / "policy.yaml")
    port, metrics_port = free_port(), free_port()
    hook.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    hook.log = state / "streamgate.log"
    hook.url, hook.ca = f"https://127.0.0.1:{port}", state / "certs" / "ca.crt"
    with open(hook.log, "wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN),
                "serve",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--cert={state / 'certs' / 'tls.crt'}",
                f"--key={state / 'certs' / 'tls.key'}",
                f"--policy={state / 'policy.yaml'}",
                f"--kubeconfig={cluster}",
                f"--metrics-port={metrics_port}",
                "--events",
                f"--event-interval={INTERVAL}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    env = {
        **os.environ,
        "STREAMGATE_WEBHOOK_DIR": str(state),
        "STREAMGATE_WEBHOOK_PORT": str(port),
        "STREAMGATE_RELEASE": f"sg-ev-{suffix}",
        "STREAMGATE_ONLY_LABEL": label,
    }
    rendered = ""
    try:
        _wait_ready(f"https://127.0.0.1:{port}", state / "certs" / "ca.crt", proc, hook.log)
        rendered = subprocess.run(
            [str(WEBHOOK), "render"], check=True, capture_output=True, text=True, env=env
        ).stdout
        kubectl("apply", "-f", "-", stdin=rendered)
        _admitting(kubectl, hook.warn)
        yield hook
    finally:
        if rendered:
            kubectl("delete", "--ignore-not-found", "-f", "-", stdin=rendered, check=False)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for ns in (hook.warn, hook.enforce):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


def events(kubectl: Kubectl, ns: str, name: str, reason: str | None = None) -> list[dict]:
    selector = f"involvedObject.name={name}" + (f",reason={reason}" if reason else "")
    doc = kubectl.json("get", "events", "-n", ns, "--field-selector", selector)
    return [e for e in doc["items"] if e.get("source", {}).get("component") == "streamgate"]


def wait_for_events(
    kubectl: Kubectl, ns: str, name: str, reason: str, *, count: int = 1, timeout: float = 20.0
) -> list[dict]:
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = events(kubectl, ns, name, reason)
        if found and sum(e.get("count", 1) for e in found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {reason} event (count {count}) on {ns}/{name}: {found}")


def scrape(url: str, result: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'streamgate_kubernetes_events_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def pod(name: str, ns: str, image: str = PLAIN) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "app", "image": image}]},
        }
    )


def cronjob(name: str, ns: str, toleration: str) -> str:
    """Suspended: no Jobs or Pods appear; a new toleration is a change streamgate judges."""
    template = {
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "app", "image": PLAIN}],
            "tolerations": [{"key": toleration, "operator": "Exists"}],
        }
    }
    return json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "schedule": "0 3 * * *",
                "suspend": True,
                "jobTemplate": {"spec": {"template": template}},
            },
        }
    )


def test_a_warning_becomes_an_event_on_the_pod(events_webhook, kubectl):
    ns, name = events_webhook.warn, f"plain-{uuid.uuid4().hex[:5]}"
    out = kubectl("apply", "-f", "-", stdin=pod(name, ns))
    assert "Warning:" in out.stderr
    (event,) = wait_for_events(kubectl, ns, name, "StreamingWarning")
    uid = kubectl.json("get", "pod", name, "-n", ns)["metadata"]["uid"]
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Pod"
    assert event["involvedObject"]["uid"] == uid
    assert "app: 127.0.0.1:25000/demo/plain:v1 has no streaming artifact" in event["message"]
    assert event["reportingComponent"] == "streamgate"
    described = kubectl("describe", "pod", name, "-n", ns).stdout
    assert "StreamingWarning" in described and "has no streaming artifact" in described


def test_events_are_rate_limited_and_repeats_counted(events_webhook, kubectl):
    ns, name = events_webhook.warn, f"nightly-{uuid.uuid4().hex[:5]}"
    limited = scrape(events_webhook.metrics_url, "rate-limited")
    started = time.monotonic()
    kubectl("apply", "-f", "-", stdin=cronjob(name, ns, "a"))
    applied_a = time.monotonic()  # the webhook judged "a" (and started its limit) by now
    (first,) = wait_for_events(kubectl, ns, name, "StreamingWarning")
    assert first["count"] == 1
    for key in ("b", "c"):  # judged again, well within the interval: no new Event
        out = kubectl("apply", "-f", "-", stdin=cronjob(name, ns, key))
        assert "Warning:" in out.stderr
    assert time.monotonic() - started < INTERVAL, "too slow to test the rate limit"
    time.sleep(1.0)
    (same,) = events(kubectl, ns, name, "StreamingWarning")
    assert same["count"] == 1
    assert scrape(events_webhook.metrics_url, "rate-limited") >= limited + 2

    time.sleep(max(0.0, applied_a + INTERVAL + 0.5 - time.monotonic()))
    kubectl("apply", "-f", "-", stdin=cronjob(name, ns, "d"))
    # one Event, patched: it stands for the first, the two held back and this one
    (series,) = wait_for_events(kubectl, ns, name, "StreamingWarning", count=4)
    assert series["metadata"]["name"] == first["metadata"]["name"]
    assert series["count"] == 4
    assert series["lastTimestamp"] >= first["lastTimestamp"]
    described = kubectl("describe", "cronjob", name, "-n", ns).stdout
    assert "StreamingWarning" in described and "(x4 over" in described
    assert scrape(events_webhook.metrics_url, "sent") >= 2


def test_a_denied_create_without_controller_makes_no_event(events_webhook, kubectl):
    # never stored and no controller: nothing to confirm an Event by (a forged review could
    # name any object); the denial went to whoever created it
    ns, name = events_webhook.enforce, f"plain-{uuid.uuid4().hex[:5]}"
    out = kubectl("apply", "-f", "-", stdin=pod(name, ns), check=False)
    assert out.returncode != 0 and "denied the request" in out.stderr
    probe = f"after-{uuid.uuid4().hex[:5]}"  # a real one after it, to know the queue moved on
    kubectl("apply", "-f", "-", stdin=pod(probe, events_webhook.warn))
    wait_for_events(kubectl, events_webhook.warn, probe, "StreamingWarning")
    assert events(kubectl, ns, name) == []


def _post_review(hook: EventsWebhook, request: dict) -> dict:
    """A review sent straight to the webhook's port, as any pod that reaches it could."""
    import ssl

    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    req = urllib.request.Request(
        f"{hook.url}/validate",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=str(hook.ca))
    with urllib.request.urlopen(req, context=context, timeout=10) as r:
        return json.loads(r.read())["response"]


def _with_image(obj: dict, image: str) -> dict:
    return {**obj, "spec": {"containers": [{"name": "app", "image": image}]}}


def _forged(ns: str, name: str, uid: str, *, op: str, image: str, owner: dict | None = None):
    meta: dict = {"name": name, "namespace": ns, "uid": uid}
    if owner:
        meta["ownerReferences"] = [owner]
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": image}]},
    }
    return {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": op,
        "namespace": ns,
        "name": name,
        "object": obj,
        # an UPDATE that changes the image (an unchanged one is skipped)
        "oldObject": _with_image(obj, PLAIN) if op == "UPDATE" else None,
        "userInfo": {"username": "system:serviceaccount:tenant:attacker"},
        "dryRun": False,
    }


def test_a_forged_review_plants_no_event_on_another_namespaces_object(events_webhook, kubectl):
    # the attacker is any pod that reaches the port; its targets are these two namespaces
    hook = events_webhook
    victim = f"victim-{uuid.uuid4().hex[:5]}"
    marker = f"{REGISTRY}/call-helpdesk-{uuid.uuid4().hex[:6]}/now:v1"  # the attacker's text
    kubectl("apply", "-f", "-", stdin=pod(victim, hook.warn))  # a real Pod, known by name
    real_uid = kubectl.json("get", "pod", victim, "-n", hook.warn)["metadata"]["uid"]
    unconfirmed = scrape(hook.metrics_url, "unconfirmed")
    forged = [
        # an UPDATE of the real Pod with a guessed uid
        _forged(hook.warn, victim, str(uuid.uuid4()), op="UPDATE", image=marker),
        # an (allowed) CREATE of a Pod that will never be stored
        _forged(
            hook.warn, f"ghost-{uuid.uuid4().hex[:5]}", str(uuid.uuid4()), op="CREATE", image=marker
        ),
        # a denied CREATE claiming a controller that doesn't exist (the victim's name)
        _forged(
            hook.enforce,
            f"owned-{uuid.uuid4().hex[:5]}",
            str(uuid.uuid4()),
            op="CREATE",
            image=marker,
            owner={
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": victim,
                "uid": str(uuid.uuid4()),
                "controller": True,
            },
        ),
    ]
    for request in forged:
        answer = _post_review(hook, request)
        assert answer["uid"] == request["uid"]  # answered: the port takes anyone's review
    # the recorder gives each one up (the CREATE after waiting ~15s for its object)
    deadline = time.monotonic() + 60
    while scrape(hook.metrics_url, "unconfirmed") < unconfirmed + 3:
        assert time.monotonic() < deadline, hook.log.read_text()[-3000:]
        time.sleep(0.5)
    for namespace in (hook.warn, hook.enforce):
        planted = kubectl.json("get", "events", "-n", namespace)["items"]
        assert [e for e in planted if "call-helpdesk" in e.get("message", "")] == []
    # the real Pod's own Event is there, on its real uid
    (event,) = wait_for_events(kubectl, hook.warn, victim, "StreamingWarning")
    assert event["involvedObject"]["uid"] == real_uid
    assert "call-helpdesk" not in event["message"]


def test_dry_runs_make_no_event(events_webhook, kubectl):
    ns, name = events_webhook.warn, f"dry-{uuid.uuid4().hex[:5]}"
    out = kubectl("apply", "--dry-run=server", "-f", "-", stdin=pod(name, ns))
    assert "Warning:" in out.stderr
    probe = f"after-{uuid.uuid4().hex[:5]}"  # a real one after it, to know the queue moved on
    kubectl("apply", "-f", "-", stdin=pod(probe, ns))
    wait_for_events(kubectl, ns, probe, "StreamingWarning")
    assert events(kubectl, ns, name) == []
