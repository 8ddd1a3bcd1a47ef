"""The guarded protocol classes: one per parser, each imported only when chosen."""

from __future__ import annotations

import sys

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.cli.main import main
from app.webhook.connections import (
    HTTP_PROTOCOLS,
    ProtocolUnavailable,
    _FirstRequestGuard,
    guarded_protocol,
)


@pytest.mark.parametrize(
    ("http", "base", "other"),
    [("httptools", HttpToolsProtocol, H11Protocol), ("h11", H11Protocol, HttpToolsProtocol)],
)
def test_each_parser_gets_the_guard_before_its_own_methods(http, base, other):
    cls = guarded_protocol(http, 3.5)
    assert issubclass(cls, base) and not issubclass(cls, other)
    mro = cls.__mro__
    # The guard's connection_made/connection_lost run first and call the parser's.
    assert mro.index(_FirstRequestGuard) < mro.index(base)
    assert cls.first_request_timeout == 3.5  # type: ignore[attr-defined]


def test_an_unknown_parser_is_named_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown HTTP protocol 'h2'.*httptools, h11"):
        guarded_protocol("h2")
    assert HTTP_PROTOCOLS == ("httptools", "h11")


def test_without_httptools_the_error_says_how_to_run_on_h11(monkeypatch):
    monkeypatch.setitem(sys.modules, "httptools", None)  # import httptools -> ImportError
    monkeypatch.delitem(sys.modules, "uvicorn.protocols.http.httptools_impl", raising=False)
    with pytest.raises(ProtocolUnavailable, match=r"--http h11"):
        guarded_protocol("httptools")
    assert issubclass(guarded_protocol("h11"), H11Protocol)  # h11 needs no C extension


def test_serve_without_httptools_exits_with_the_way_out(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "httptools", None)
    monkeypatch.delitem(sys.modules, "uvicorn.protocols.http.httptools_impl", raising=False)
    code = main(["serve", "--self-signed", str(tmp_path), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("streamgate serve: the httptools HTTP parser is not installed")
    assert "--http h11" in err
