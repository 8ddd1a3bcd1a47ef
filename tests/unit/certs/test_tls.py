"""The serving pair's reloader and the expiry it reports for metrics."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from app.certs.pki import SERVING_VALIDITY
from app.certs.tls import CertReloader, expiry_of, issue_self_signed, server_context


def test_expiry_follows_the_certificate_in_use(tmp_path: Path) -> None:
    first = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    files = issue_self_signed(tmp_path, ["127.0.0.1"], now=first)
    context = server_context(files.cert, files.key)
    reloader = CertReloader(context, files.cert, files.key)
    assert reloader.expires_at == (first + SERVING_VALIDITY).timestamp()

    later = first + dt.timedelta(days=40)
    issue_self_signed(tmp_path, ["127.0.0.1"], now=later)
    stamp = files.cert.stat().st_mtime_ns + 1_000_000_000  # coarse file systems
    os.utime(files.cert, ns=(stamp, stamp))
    os.utime(files.key, ns=(stamp, stamp))
    assert reloader.check()
    assert reloader.expires_at == (later + SERVING_VALIDITY).timestamp()


def test_expiry_of_something_that_is_not_a_certificate_is_none(tmp_path: Path) -> None:
    junk = tmp_path / "tls.crt"
    junk.write_text("not a certificate")
    assert expiry_of(junk) is None
    assert expiry_of(tmp_path / "missing.crt") is None
