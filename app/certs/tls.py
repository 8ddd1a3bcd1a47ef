"""Serving certificates: a self-signed CA and serving pair for local runs, and a reloader
that swaps in renewed files without a restart (uvicorn reads them only once).

The reloader loads the new pair into the live `ssl.SSLContext`; connections made after that
use it, connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from app.certs.pki import (
    CA_VALIDITY,
    SERVING_VALIDITY,
    new_ca,
    new_serving,
    not_after,
    write_atomic,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CertFiles:
    ca: Path
    cert: Path
    key: Path


def issue_self_signed(
    directory: Path, hosts: list[str], *, now: dt.datetime | None = None
) -> CertFiles:
    """Write `ca.crt`, `tls.crt`, `tls.key` into `directory`: a fresh CA and a serving
    certificate for `hosts` (DNS names or IP addresses) signed by it."""
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key_pem = new_ca(now, validity=CA_VALIDITY, common_name="streamgate-ca")
    cert_pem, key_pem = new_serving(ca_pem, ca_key_pem, hosts, now, validity=SERVING_VALIDITY)
    files = CertFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    write_atomic(files.ca, ca_pem)
    # Write the key before the certificate that names it, each atomically, so a reloader
    # never pairs a new certificate with an old key for long.
    write_atomic(files.key, key_pem, mode=0o600)
    write_atomic(files.cert, cert_pem)
    return files


def server_context(cert: Path, key: Path, *, client_ca: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding the pair. With `client_ca`, a client certificate is
    asked for and, when one is sent, must chain to that CA (the handshake fails otherwise);
    whether one is *required* is decided per connection (app/webhook/connections.py), because
    the kubelet's probes carry none."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def expiry_of(cert: Path) -> float | None:
    """The Unix time the certificate in file `cert` expires, or None when it can't be read."""
    try:
        return not_after(cert.read_bytes()).timestamp()
    except (OSError, ValueError):
        return None


class CertReloader:
    """Polls the pair's modification times and loads changed files into `context`.
    `expires_at` is the Unix time the certificate in use expires (for metrics)."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path, *, interval: float = 5.0):
        self.context = context
        self.cert = cert
        self.key = key
        self.interval = interval
        self.reloads = 0
        self._stamp = self._mtimes()
        self.expires_at = expiry_of(cert)

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
        self.expires_at = expiry_of(self.cert)
        logger.info("serving certificate reloaded from %s", self.cert)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:
                logger.exception("certificate reload check failed")
