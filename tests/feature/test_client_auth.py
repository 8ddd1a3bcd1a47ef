"""`serve --client-ca`: admission only for clients with a certificate signed by that CA,
through the real HTTPS server and real TLS clients (with and without a certificate, and with
one from another CA). The probes need none: the kubelet sends none.

The local control plane (hack/cluster.sh) is shared and its apiserver takes no admission
configuration, so the apiserver itself presenting the certificate is not tested here: the
client side is the same Go TLS stack any HTTPS client is (docs/security.md shows the
kube-apiserver configuration)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.certs.pki import new_ca
from app.cli.main import EXIT_USAGE, main
from app.core.policy import parse_policy
from app.core.pools import NoInventory
from app.webhook.admission import Admission
from app.webhook.connections import NO_CLIENT_CERT
from app.webhook.serve import ServeSettings, build_server
from tests.feature.conftest import free_port, trusting
from tests.memory import MemoryVerdicts

REVIEW = Path(__file__).parents[1] / "reviews" / "pod-create.json"
NOW = dt.datetime.now(dt.UTC)


def client_pair(ca_pem: bytes, ca_key_pem: bytes, directory: Path, stem: str) -> tuple[Path, Path]:
    """A client certificate (clientAuth) signed by the CA, as the apiserver's kubeconfig
    would hold: returns (cert file, key file)."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@dataclass
class Guarded:
    url: str
    server_ca: Path
    good: tuple[Path, Path]  # signed by the --client-ca
    stranger: tuple[Path, Path]  # signed by another CA

    def client(self, pair: tuple[Path, Path] | None = None) -> httpx.Client:
        context = trusting(self.server_ca)
        if pair is not None:
            context.load_cert_chain(*pair)
        return httpx.Client(base_url=self.url, verify=context, timeout=10)


@pytest.fixture(scope="module", params=["httptools", "h11"])
def guarded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guarded]:
    base = tmp_path_factory.mktemp("client-auth")
    ca_pem, ca_key = new_ca(NOW, validity=dt.timedelta(days=2), common_name="apiserver-clients")
    (base / "client-ca.crt").write_bytes(ca_pem)
    other_pem, other_key = new_ca(NOW, validity=dt.timedelta(days=2), common_name="someone-else")
    good = client_pair(ca_pem, ca_key, base, "good")
    stranger = client_pair(other_pem, other_key, base, "stranger")
    policy = parse_policy({})
    admission = Admission(
        policy=lambda: policy, verdicts=MemoryVerdicts({}), placement=NoInventory()
    )
    settings = ServeSettings(
        host="127.0.0.1",
        port=free_port(),
        self_signed_dir=base / "serving",
        log_level="warning",
        client_ca=base / "client-ca.crt",
        http=request.param,  # both HTTP protocols carry the guard
    )
    running = build_server(settings, admission)
    thread = threading.Thread(target=running.server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("streamgate did not start")
        time.sleep(0.02)
    try:
        yield Guarded(running.url, base / "serving" / "ca.crt", good, stranger)
    finally:
        running.server.should_exit = True
        thread.join(timeout=10)


def review() -> dict:
    return json.loads(REVIEW.read_text())


def test_admission_needs_a_client_certificate(guarded: Guarded) -> None:
    with guarded.client() as anonymous:
        for path in ("/validate", "/mutate", "/anything"):
            resp = anonymous.post(path, json=review())
            assert resp.status_code == 403, path
            assert resp.json() == {"error": NO_CLIENT_CERT}
        # the kubelet's probes carry no certificate and still work
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200


def test_a_certificate_from_the_client_ca_is_admitted(guarded: Guarded) -> None:
    with guarded.client(guarded.good) as apiserver:
        for path in ("/validate", "/mutate"):
            resp = apiserver.post(path, json=review())
            assert resp.status_code == 200, resp.text
            assert resp.json()["response"]["uid"] == review()["request"]["uid"]


def test_a_certificate_from_another_ca_fails_the_handshake(guarded: Guarded) -> None:
    with (
        guarded.client(guarded.stranger) as stranger,
        pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)),
    ):
        # TLS 1.3: the server refuses the certificate after the client thinks the handshake is
        # done, so the client sees the connection dropped on its first read
        stranger.post("/validate", json=review())


def test_raw_tls_without_a_certificate_is_kept_to_the_probes(guarded: Guarded) -> None:
    """The same as a plain `openssl s_client` / `curl -k` from a pod: the handshake succeeds
    (the certificate is optional at the TLS layer), the request is refused."""
    import socket

    host, port = guarded.url.removeprefix("https://").split(":")
    context = trusting(guarded.server_ca)
    body = json.dumps(review()).encode()
    head = (
        f"POST /validate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(head + body)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"requires a client certificate" in answer


def test_serve_refuses_a_missing_client_ca_file(tmp_path: Path, capsys) -> None:
    code = main(["serve", "--self-signed", str(tmp_path), "--client-ca", str(tmp_path / "nope")])
    assert code == EXIT_USAGE
    assert "--client-ca" in capsys.readouterr().err


def test_ssl_module_verifies_what_it_is_given() -> None:
    """Control for the fixture: the server context really asks for client certificates."""
    from app.certs.tls import issue_self_signed, server_context

    files = issue_self_signed(Path(__import__("tempfile").mkdtemp()), ["127.0.0.1"])
    ctx = server_context(files.cert, files.key, client_ca=files.ca)
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    assert server_context(files.cert, files.key).verify_mode == ssl.CERT_NONE
