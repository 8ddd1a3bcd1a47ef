"""WWW-Authenticate, Link, Retry-After and OCI-Filters-Applied parsing."""

from __future__ import annotations

import pytest

from app.registry.headers import (
    Challenge,
    filters_applied,
    parse_challenges,
    parse_link_next,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://r.azurecr.io/oauth2/token",service="r.azurecr.io",'
            'scope="repository:a/b:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://r.azurecr.io/oauth2/token",
                        "service": "r.azurecr.io",
                        "scope": "repository:a/b:pull,push",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        (
            'Basic realm="a", Bearer realm="https://x/t", service="x"',
            [
                Challenge("basic", {"realm": "a"}),
                Challenge("bearer", {"realm": "https://x/t", "service": "x"}),
            ],
        ),
        ('Bearer realm="a\\"b"', [Challenge("bearer", {"realm": 'a"b'})]),
        (
            "Bearer realm=https://x/token,service=x",
            [Challenge("bearer", {"realm": "https://x/token", "service": "x"})],
        ),
        ('BEARER Realm = "r"', [Challenge("bearer", {"realm": "r"})]),
        ("Bearer", [Challenge("bearer", {})]),
        ("", []),
        (None, []),
        ('Bearer realm="unterminated', [Challenge("bearer", {"realm": "unterminated"})]),
        ("=== ,,, ", []),
    ],
    ids=[
        "acr",
        "basic",
        "two",
        "escaped-quote",
        "unquoted",
        "case-and-spaces",
        "bare",
        "empty",
        "none",
        "unterminated",
        "garbage",
    ],
)
def test_parse_challenges(header: str | None, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_challenge_accessors() -> None:
    (challenge,) = parse_challenges('Bearer realm="r",service="s",scope="x"')
    assert (challenge.realm, challenge.service, challenge.scope) == ("r", "s", "x")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('</v2/a/referrers/sha256:1?last=x>; rel="next"', "/v2/a/referrers/sha256:1?last=x"),
        ("<https://r/v2/x?n=1>; rel=next", "https://r/v2/x?n=1"),
        ('<https://r/prev>; rel="prev", <https://r/next>; rel="next"', "https://r/next"),
        ('<https://r/a>; title="x"; rel="last next"', "https://r/a"),
        ('<https://r/prev>; rel="prev"', None),
        ("", None),
        (None, None),
        ("garbage", None),
    ],
    ids=["relative", "unquoted", "second", "multi-rel", "no-next", "empty", "none", "garbage"],
)
def test_parse_link_next(header: str | None, expected: str | None) -> None:
    assert parse_link_next(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),  # now = 40
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),  # in the past
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
    ids=["seconds", "zero", "date", "past-date", "word", "negative", "empty", "none"],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=40.0) == expected


def test_filters_applied() -> None:
    assert filters_applied("artifactType") == {"artifacttype"}
    assert filters_applied(" artifactType , annotation") == {"artifacttype", "annotation"}
    assert filters_applied(None) == frozenset()
