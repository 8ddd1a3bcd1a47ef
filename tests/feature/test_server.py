"""Captured AdmissionReviews through the real HTTPS server, bad input, TLS."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import socket
import ssl
import time
from pathlib import Path

import httpx
import jsonpatch
import kubernetes_validate
import pytest

from app.certs.tls import issue_self_signed
from app.core.messages import MAX_TOTAL, MAX_WARNING
from tests.feature.conftest import trusting

REVIEWS = sorted((Path(__file__).parents[1] / "reviews").glob("*.json"))
K8S_SCHEMA_VERSION = "1.34"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_is_a_review_per_kind_and_operation():
    names = {p.stem for p in REVIEWS}
    for kind in (
        "pod",
        "deployment",
        "statefulset",
        "daemonset",
        "replicaset",
        "replicationcontroller",
        "job",
        "cronjob",
    ):
        assert {f"{kind}-create", f"{kind}-update", f"{kind}-delete"} <= names
    assert {"pod-ephemeralcontainers", "pod-status"} <= names


@pytest.mark.parametrize("path", REVIEWS, ids=[p.stem for p in REVIEWS])
def test_captured_review_round_trip(webhook, path):
    review = load(path)
    request = review["request"]
    with webhook.client() as client:
        validate = client.post("/validate", json=review)
        mutate = client.post("/mutate", json=review)
        admit = client.post("/admit", json=review)  # one-call mode: both answers in one
    for resp in (validate, mutate, admit):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["apiVersion"] == "admission.k8s.io/v1"
        assert body["kind"] == "AdmissionReview"
        assert body["response"]["uid"] == request["uid"]
        assert body["response"]["allowed"] is True  # default mode: warn
    v, m = validate.json()["response"], mutate.json()["response"]
    a = admit.json()["response"]
    assert a.get("warnings") == v.get("warnings") and a.get("patch") == m.get("patch")
    assert "patch" not in v and "warnings" not in m
    for warning in v.get("warnings", []):
        assert len(warning) <= MAX_WARNING
    assert sum(len(w) for w in v.get("warnings", [])) <= MAX_TOTAL
    judged = request["operation"] in ("CREATE", "UPDATE") and request.get("subResource") is None
    judged = judged and not path.stem.endswith("labels-only")
    assert ("patch" in m) is judged
    if request.get("subResource") == "ephemeralcontainers":
        assert any("debug:debugger" in w for w in v["warnings"])
    if "patch" in m:
        assert m["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(m["patch"]))
        patched = jsonpatch.apply_patch(copy.deepcopy(request["object"]), ops)
        assert patched["metadata"]["annotations"]["streamgate.io/streaming"] in (
            "partial",
            "unknown",
        )
        # Images are never rewritten.
        assert json.dumps(patched).count("azurecr.io") == json.dumps(request["object"]).count(
            "azurecr.io"
        )
        kubernetes_validate.validate(patched, K8S_SCHEMA_VERSION, strict=True)


def test_warnings_name_container_image_and_fix(webhook):
    review = load(Path(__file__).parents[1] / "reviews" / "deployment-create.json")
    with webhook.client() as client:
        warnings = client.post("/validate", json=review).json()["response"]["warnings"]
    assert (
        "c1: streamgatedemo.azurecr.io/sidecar:v2 has no streaming artifact; fix: az acr "
        "artifact-streaming create -n streamgatedemo --image sidecar:v2" in warnings
    )
    assert (
        "init:init0: streamgatedemo.azurecr.io/migrate@sha256:cccccccccccc… is pinned by digest; "
        "AKS streams tag pulls only: pull it by tag" in warnings
    )
    assert any(w.startswith("init:init0:") and "pinned by digest" in w for w in warnings)


def test_enforce_namespace_denies_with_every_problem(webhook):
    review = load(Path(__file__).parents[1] / "reviews" / "deployment-create.json")
    review["request"]["namespace"] = "strict"
    with webhook.client() as client:
        resp = client.post("/validate", json=review).json()["response"]
    assert resp["allowed"] is False
    assert resp["status"]["code"] == 403
    assert (
        "(1) c1: streamgatedemo.azurecr.io/sidecar:v2 has no streaming artifact"
        in resp["status"]["message"]
    )


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b"{", 400, "not valid UTF-8 JSON"),
        (b"\xc3\x28", 400, "not valid UTF-8 JSON"),
        (b"", 400, "empty body"),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}',
            400,
            "request is missing",
        ),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":'
            b'{"kind":"Pod"},"operation":"CREATE","object":{}}}',
            400,
            "request.uid",
        ),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x",'
            b'"kind":{"group":"apps","kind":"Deployment"},"operation":"CREATE","object":{"spec":{}}}}',
            400,
            "Deployment has no spec.template",
        ),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x",'
            b'"kind":{"kind":"Widget","group":"example.com"},"operation":"CREATE","object":{}}}',
            200,
            None,
        ),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":'
            + b'{"a":' * 3000
            + b"1"
            + b"}" * 3001,
            400,
            "depth limit",
        ),
    ],
    ids=[
        "truncated",
        "non-utf8",
        "empty",
        "no-request",
        "no-uid",
        "no-pod-spec",
        "unknown-kind",
        "nested-too-deep",
    ],
)
def test_bad_input_gets_a_clear_answer(webhook, content, status, fragment):
    with webhook.client() as client:
        resp = client.post(
            "/validate", content=content, headers={"content-type": "application/json"}
        )
    assert resp.status_code == status
    if fragment:
        assert fragment in resp.json()["error"]
    else:
        assert resp.json()["response"] == {"uid": "x", "allowed": True}


def test_ten_megabyte_body_is_refused_without_reading_it_all(webhook):
    with webhook.client() as client:
        resp = client.post("/validate", content=b"{" + b" " * (10 * 1024 * 1024) + b"}")
    assert resp.status_code == 413
    assert "larger than" in resp.json()["error"]


def test_health_and_readiness(webhook):
    with webhook.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").text == "ok"


def test_tls_trusts_only_the_published_ca_bundle(webhook, tmp_path):
    with webhook.client() as client:
        assert client.get("/healthz").status_code == 200
    other = issue_self_signed(tmp_path / "other", ["127.0.0.1"])
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=trusting(other.ca)) as client:
        client.get(webhook.url + "/healthz")


def test_tls_below_1_2_is_refused(webhook):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(webhook.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    host, port = "127.0.0.1", webhook.running.server.config.port
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection((host, port), timeout=5) as sock, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(sock, server_hostname=host)


def _served_serial(webhook) -> int:
    ctx = ssl.create_default_context(cafile=str(webhook.ca))
    host, port = "127.0.0.1", webhook.running.server.config.port
    with (
        socket.create_connection((host, port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_renewed_certificate_is_served_without_restart(webhook):
    before = _served_serial(webhook)
    # Re-issue into the same directory (a new CA too): the reloader picks up the new pair.
    issue_self_signed(webhook.certs, ["127.0.0.1", "localhost"])
    assert webhook.running.reloader.check() is True
    after = _served_serial(webhook)
    assert after != before
    with webhook.client() as client:  # trusts the new ca.crt
        assert client.get("/healthz").status_code == 200


def test_the_server_runs_the_stack_it_was_given(webhook):
    """The protocol class and the event loop are the ones chosen (not uvicorn's "auto")."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from tests.feature.conftest import STACKS

    http, loop = STACKS[webhook.stack]
    protocol = webhook.running.server.config.http_protocol_class
    assert issubclass(protocol, HttpToolsProtocol if http == "httptools" else H11Protocol)
    assert not issubclass(protocol, H11Protocol if http == "httptools" else HttpToolsProtocol)
    running_loop = webhook.running.server.servers[0].get_loop()
    assert type(running_loop).__module__.split(".")[0] == loop
    with webhook.client() as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "sent",
    [b"POST /validate HTTP/1.1\r\nHost: x\r\n", b""],
    ids=["half-a-request-head", "nothing-after-tls"],
)
def test_connection_without_a_complete_request_is_closed(webhook, sent):
    """A client that sends half a request head and stops (slowloris), or nothing at all after
    the TLS handshake, is cut off after the first-request timeout; one that sends its request
    in time is served."""
    from tests.feature.conftest import FIRST_REQUEST_TIMEOUT

    host, port = "127.0.0.1", webhook.running.server.config.port
    ctx = trusting(webhook.ca)
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        if sent:
            tls.sendall(sent)
        tls.settimeout(FIRST_REQUEST_TIMEOUT + 5)
        started = time.monotonic()
        assert tls.recv(1024) == b""  # closed by the server, no answer
        assert time.monotonic() - started < FIRST_REQUEST_TIMEOUT + 3
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        time.sleep(FIRST_REQUEST_TIMEOUT / 4)  # well within it, even on a stalled machine
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls.recv(1024).startswith(b"HTTP/1.1 200")


def test_a_parser_bug_is_a_400_not_a_500(webhook, monkeypatch):
    def broken(body):
        raise RuntimeError("bug")

    monkeypatch.setattr("app.webhook.server.parse_review", broken)
    with webhook.client() as client:
        resp = client.post("/validate", content=b"{}")
    assert resp.status_code == 400
    assert resp.json()["error"] == "the review could not be parsed"
