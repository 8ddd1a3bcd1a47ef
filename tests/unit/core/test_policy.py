from pathlib import Path

import pytest

from app.core.policy import (
    Action,
    Mode,
    OnError,
    PolicyError,
    mode_from_label,
    parse_policy,
)
from app.webhook.reload import load_policy

DEFAULT_FILE = Path(__file__).parents[3] / "app" / "default-policy.yaml"


def test_shipped_default_file_equals_built_in_defaults():
    assert load_policy(DEFAULT_FILE) == parse_policy({})


def test_defaults_never_block_anyone():
    policy = parse_policy({})
    assert policy.mode is Mode.WARN
    assert policy.on_error is OnError.ALLOW
    assert policy.rules.digest_pinned is Action.WARN
    assert policy.rules.not_acr is Action.IGNORE
    assert "kube-system" in policy.exemptions.namespaces


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"mode": "strict"}, "mode:"),
        ({"rules": {"notStreamable": "block"}}, "rules.notStreamable"),
        ({"rules": {"typo": "warn"}}, "rules.typo"),
        ({"onError": "maybe"}, "onError"),
        ({"acrRegistries": ["a/b"]}, "acrRegistries"),
        ({"exemptions": {"namespaces": "kube-system"}}, "exemptions.namespaces"),
        (["not", "a", "map"], "mapping"),
    ],
    ids=["mode", "rule-action", "unknown-rule", "onError", "acr-host", "namespaces-type", "list"],
)
def test_invalid_policy_names_the_field(data, fragment):
    with pytest.raises(PolicyError) as err:
        parse_policy(data, source="p.yaml")
    assert fragment in str(err.value)
    assert str(err.value).startswith("p.yaml")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("host", "acr"),
    [
        ("myreg.azurecr.io", True),
        ("myreg.azurecr.cn", True),
        ("MYREG.AZURECR.US", True),
        ("docker.io", False),
        ("azurecr.io.evil.com", False),
        ("registry.contoso.com", True),
        ("127.0.0.1:25000", True),
        ("127.0.0.1:25001", False),
    ],
    ids=str,
)
def test_is_acr(host, acr):
    policy = parse_policy({"acrRegistries": ["*.contoso.com", "127.0.0.1:25000"]})
    assert policy.is_acr(host) is acr


def test_mode_from_label():
    assert mode_from_label("enforce") is Mode.ENFORCE
    assert mode_from_label("Enforce") is None
    assert mode_from_label(None) is None
    assert mode_from_label("enforce-ish") is None


@pytest.mark.parametrize(
    ("host", "aad"),
    [
        ("myacr.azurecr.io", True),
        ("reg.contoso.com", True),
        ("reg.contoso.com:443", True),
        ("evil.contoso.com", False),
        ("reg.contoso.com:5000", False),
        ("reg1.contoso.com", False),
    ],
)
def test_only_exactly_listed_hosts_may_get_the_aad_token(host, aad):
    """Issue 18 finding 3: patterns make a host ACR (judged, conversion status asked) but never
    earn it the cluster's Azure AD token."""
    policy = parse_policy(
        {"acrRegistries": ["reg.contoso.com:443", "*.contoso.com", "reg?.contoso.com"]}
    )
    assert policy.is_acr(host) or host == "reg.contoso.com:5000"
    assert policy.may_get_aad(host) is aad
