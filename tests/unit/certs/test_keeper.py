"""Self-managed certificates: the pure planning (create, keep, renew, rotate the CA), the files
for the server, a TLS handshake that trusts only the published bundle, and the keeper loop.
The Kubernetes side runs against a real apiserver in tests/e2e/test_chart_install.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from app.certs.keeper import (
    CertificateKeeper,
    CertPolicy,
    Material,
    dns_names,
    new_ca,
    plan,
    service_hosts,
    split_pem,
    write_files,
)
from app.certs.tls import server_context

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
HOSTS = service_hosts("streamgate", "sg")


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def fingerprints(bundle: bytes) -> list[bytes]:
    return [c.fingerprint(hashes.SHA256()) for c in split_pem(bundle)]


@pytest.fixture(scope="module")
def fresh() -> Material:
    p = plan(None, hosts=HOSTS, now=T0)
    assert p.changed and p.reasons == ("no certificates yet",)
    return p.material


def test_service_hosts():
    assert HOSTS == [
        "streamgate",
        "streamgate.sg",
        "streamgate.sg.svc",
        "streamgate.sg.svc.cluster.local",
    ]


def test_new_material_is_a_ca_and_a_serving_pair_it_signed(fresh):
    ca, serving = cert(fresh.ca_cert), cert(fresh.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - T0 == dt.timedelta(days=365)
    assert serving.not_valid_after_utc - T0 == dt.timedelta(days=90)
    assert serving.not_valid_before_utc < T0  # backdated for clock skew
    serving.verify_directly_issued_by(ca)
    assert dns_names(serving) == set(HOSTS)
    assert fresh.ca_bundle == fresh.ca_cert


def test_secret_data_round_trip(fresh):
    assert Material.from_secret_data(fresh.secret_data()) == fresh
    data = fresh.secret_data()
    assert set(data) == {"tls.crt", "tls.key", "ca.crt", "ca.key", "ca-bundle.crt"}
    del data["ca.key"]
    assert Material.from_secret_data(data) is None
    assert Material.from_secret_data(None) is None
    assert Material.from_secret_data({**fresh.secret_data(), "tls.crt": "not base64!"}) is None


@pytest.mark.parametrize(
    "days", [0, 1, 59], ids=["same-moment", "next-day", "31-days-left-on-serving"]
)
def test_sound_material_is_kept(fresh, days):
    p = plan(fresh, hosts=HOSTS, now=T0 + days * DAY)
    assert not p.changed
    assert p.material == fresh


def test_serving_renewed_30_days_before_expiry_with_the_same_ca(fresh):
    p = plan(fresh, hosts=HOSTS, now=T0 + 61 * DAY)
    assert p.changed and "serving certificate expires" in p.reasons[0]
    m = p.material
    assert (m.ca_cert, m.ca_key, m.ca_bundle) == (fresh.ca_cert, fresh.ca_key, fresh.ca_bundle)
    assert m.cert != fresh.cert and m.key != fresh.key
    cert(m.cert).verify_directly_issued_by(cert(fresh.ca_cert))
    assert cert(m.cert).not_valid_after_utc == T0 + 61 * DAY + 90 * DAY
    # and the renewed pair is kept afterwards
    assert not plan(m, hosts=HOSTS, now=T0 + 62 * DAY).changed


def test_ca_renewed_30_days_before_expiry_and_the_old_one_stays_trusted(fresh):
    now = T0 + 336 * DAY  # 29 days left on the CA
    p = plan(fresh, hosts=HOSTS, now=now)
    assert p.changed and "CA expires" in p.reasons[0]
    m = p.material
    new, old = cert(m.ca_cert), cert(fresh.ca_cert)
    assert new.fingerprint(hashes.SHA256()) != old.fingerprint(hashes.SHA256())
    # new CA first, the old one after it while it is valid: pods still serving the old pair
    # stay trusted until they pick up the new one
    assert fingerprints(m.ca_bundle) == [
        new.fingerprint(hashes.SHA256()),
        old.fingerprint(hashes.SHA256()),
    ]
    cert(m.cert).verify_directly_issued_by(new)
    # once the old CA has expired it leaves the bundle
    later = plan(m, hosts=HOSTS, now=old.not_valid_after_utc + dt.timedelta(seconds=1))
    assert later.reasons == ("CA bundle out of date",)
    assert later.material.ca_bundle == m.ca_cert
    assert later.material.cert == m.cert


def test_serving_never_outlives_its_ca():
    ca_pem, ca_key = new_ca(T0, validity=40 * DAY, common_name="short-ca")
    policy = CertPolicy(ca_renew_before=10 * DAY)
    serving_missing = Material(ca_pem, ca_key, b"", b"", ca_pem)
    p = plan(serving_missing, hosts=HOSTS, now=T0, policy=policy)
    assert "serving certificate unreadable" in p.reasons[0]
    assert cert(p.material.cert).not_valid_after_utc == cert(ca_pem).not_valid_after_utc


def test_other_service_names_get_a_new_serving_pair(fresh):
    p = plan(fresh, hosts=service_hosts("other", "sg"), now=T0 + DAY)
    assert "names differ" in p.reasons[0]
    assert p.material.ca_cert == fresh.ca_cert
    assert dns_names(cert(p.material.cert)) == set(service_hosts("other", "sg"))


def test_serving_pair_from_another_ca_is_replaced(fresh):
    other = plan(None, hosts=HOSTS, now=T0).material
    mixed = Material(fresh.ca_cert, fresh.ca_key, other.cert, other.key, fresh.ca_bundle)
    p = plan(mixed, hosts=HOSTS, now=T0 + DAY)
    assert p.reasons == ("serving certificate not signed by the CA",)
    cert(p.material.cert).verify_directly_issued_by(cert(fresh.ca_cert))


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("ca_key", "other-ca-key", "CA unreadable, not a CA, or not matching its key"),
        ("ca_cert", "garbage", "CA unreadable, not a CA, or not matching its key"),
        ("key", "other-serving-key", "serving certificate unreadable or not matching its key"),
        ("ca_cert", "serving-as-ca", "CA unreadable, not a CA, or not matching its key"),
    ],
    ids=["ca-key-mismatch", "ca-garbage", "serving-key-mismatch", "leaf-as-ca"],
)
def test_broken_material_is_replaced(fresh, field, value, why):
    other = plan(None, hosts=HOSTS, now=T0).material
    replacement = {
        "other-ca-key": other.ca_key,
        "garbage": b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
        "other-serving-key": other.key,
        "serving-as-ca": fresh.cert,
    }[value]
    kwargs = {
        "ca_cert": fresh.ca_cert,
        "ca_key": fresh.ca_key,
        "cert": fresh.cert,
        "key": fresh.key,
        "ca_bundle": fresh.ca_bundle,
    }
    kwargs[field] = replacement
    if value == "serving-as-ca":
        kwargs["ca_key"] = fresh.key  # a matching pair, but not a CA
    p = plan(Material(**kwargs), hosts=HOSTS, now=T0 + DAY)
    assert p.reasons[0].startswith(why)
    cert(p.material.cert).verify_directly_issued_by(cert(p.material.ca_cert))


def test_renew_before_longer_than_validity_renews_every_time():
    policy = CertPolicy(serving_validity=DAY, serving_renew_before=2 * DAY)
    first = plan(None, hosts=HOSTS, now=T0, policy=policy).material
    second = plan(first, hosts=HOSTS, now=T0, policy=policy)
    assert second.changed and second.material.cert != first.cert
    assert second.material.ca_cert == first.ca_cert


def test_write_files_only_rewrites_what_changed(tmp_path, fresh):
    out = tmp_path / "certs"
    files = write_files(fresh, out)
    assert files.ca.read_bytes() == fresh.ca_bundle
    assert files.cert.read_bytes() == fresh.cert
    assert files.key.read_bytes() == fresh.key
    assert files.key.stat().st_mode & 0o777 == 0o600
    stamps = [p.stat().st_mtime_ns for p in (files.ca, files.cert, files.key)]
    write_files(fresh, out)
    assert [p.stat().st_mtime_ns for p in (files.ca, files.cert, files.key)] == stamps
    renewed = plan(fresh, hosts=HOSTS, now=T0 + 61 * DAY).material
    write_files(renewed, out)
    assert files.cert.read_bytes() == renewed.cert
    assert files.ca.stat().st_mtime_ns == stamps[0]  # same CA bundle: untouched


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str) -> str:
    """A TLS handshake over a socket pair; returns the server name the client verified."""
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=host) as c:
            c.sendall(b"x")
            return host
    finally:
        t.join(5)
        a.close()


def test_tls_handshake_trusting_only_the_published_bundle(tmp_path):
    now = dt.datetime.now(dt.UTC)  # real time: the handshake checks validity
    material = plan(None, hosts=HOSTS, now=now).material
    files = write_files(material, tmp_path)
    server = server_context(files.cert, files.key)
    client = ssl.create_default_context(cadata=files.ca.read_text())
    assert _handshake(server, client, "streamgate.sg.svc") == "streamgate.sg.svc"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "streamgate.elsewhere.svc")
    stranger = ssl.create_default_context(
        cadata=plan(None, hosts=HOSTS, now=now).material.ca_cert.decode()
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, stranger, "streamgate.sg.svc")


def test_keeper_counts_failures_and_keeps_going():
    calls: list[int] = []

    def ensure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("apiserver away")

    keeper = CertificateKeeper(ensure, interval=0.01, retry=0.01)

    async def run_a_while() -> None:
        task = asyncio.create_task(keeper.run())
        for _ in range(500):
            if keeper.checks >= 4:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run_a_while())
    assert keeper.checks >= 4 and keeper.failures == 1


def test_files_live_under_out_dir(tmp_path, fresh):
    files = write_files(fresh, tmp_path / "nested" / "dir")
    assert all(
        Path(p).parent == tmp_path / "nested" / "dir" for p in (files.ca, files.cert, files.key)
    )


def test_the_secret_is_owned_by_the_validating_configuration_else_the_mutating_one():
    # One-call mode (chart webhook.calls: one) has no validating configuration: the Secret
    # must still go away with the release's webhook configuration.
    from app.certs.keeper import _Config, _owner

    mutating = _Config("mutating", "sg", "uid-m", ("",), ("admit.streamgate.io",))
    validating = _Config("validating", "sg", "uid-v", ("",), ("validate.streamgate.io",))
    assert _owner([mutating, validating])[0]["uid"] == "uid-v"
    only = _owner([mutating])
    assert only == [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "name": "sg",
            "uid": "uid-m",
        }
    ]
    assert _owner([]) == []
