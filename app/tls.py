"""Serving certificates: a self-signed CA and serving pair for local runs, and a reloader
that swaps in renewed files without a restart (uvicorn reads them only once).

The reloader loads the new pair into the live `ssl.SSLContext`; connections made after that
use it, connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

CA_VALIDITY = dt.timedelta(days=365)
SERVING_VALIDITY = dt.timedelta(days=90)


@dataclass(frozen=True, slots=True)
class CertFiles:
    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def issue_self_signed(
    directory: Path, hosts: list[str], *, now: dt.datetime | None = None
) -> CertFiles:
    """Write `ca.crt`, `tls.crt`, `tls.key` into `directory`: a fresh CA and a serving
    certificate for `hosts` (DNS names or IP addresses) signed by it."""
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("streamgate-ca"))
        .issuer_name(_name("streamgate-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + SERVING_VALIDITY)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = CertFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    # Write the key before the certificate that names it, each atomically, so a reloader
    # never pairs a new certificate with an old key for long.
    _write_atomic(files.key, _pem_key(key), mode=0o600)
    _write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def _write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding the pair."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class CertReloader:
    """Polls the pair's modification times and loads changed files into `context`."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path, *, interval: float = 5.0):
        self.context = context
        self.cert = cert
        self.key = key
        self.interval = interval
        self.reloads = 0
        self._stamp = self._mtimes()

    def _mtimes(self) -> tuple[int, int]:
        try:
            return (self.cert.stat().st_mtime_ns, self.key.stat().st_mtime_ns)
        except OSError:
            return (0, 0)

    def check(self) -> bool:
        """Reload when the files changed; True when a new pair is in use."""
        stamp = self._mtimes()
        if stamp in (self._stamp, (0, 0)):
            return False
        try:
            self.context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as err:
            # Mid-rotation (key and cert out of step): try again on the next tick.
            logger.warning("certificate reload failed, keeping the current pair: %s", err)
            return False
        self._stamp = stamp
        self.reloads += 1
        logger.info("serving certificate reloaded from %s", self.cert)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:
                logger.exception("certificate reload check failed")
