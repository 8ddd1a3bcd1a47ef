"""RegistryConfig: defaults, validation errors, registry keys, credentials from env and files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.images import parse_image
from app.core.registries import is_acr_host
from app.core.verdicts import Verdict
from app.registry import ConfigError, RegistryConfig, RegistryVerdictSource
from tests.unit.registry.test_fakes import FakeRegistry, FixedAad


def test_defaults() -> None:
    config = RegistryConfig()
    assert config.deadline_seconds == 2.0
    assert config.cache.tag_ttl_seconds == 60
    assert config.cache.found_ttl_seconds == 86400
    assert config.cache.missing_ttl_seconds == 60
    assert config.max_body_bytes == 4 * 1024 * 1024
    assert str(config.wanted_platform) == "linux/amd64"
    assert config.auth_mode("myacr.azurecr.io") == "acr-aad"
    assert config.auth_mode("ghcr.io") == "anonymous"
    assert not config.settings_for("myacr.azurecr.io").insecure


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"deadline": 2}, "Extra inputs are not permitted"),
        ({"registries": {"r.io": {"password": "x"}}}, "Extra inputs are not permitted"),
        ({"registries": {"r.io": {"username": "u"}}}, "both a user name and a password"),
        ({"registries": {"r.io": {"auth": "basic"}}}, "auth: basic needs"),
        (
            {"registries": {"r.io": {"auth": "anonymous", "username": "u", "password_env": "P"}}},
            "takes no user name",
        ),
        (
            {"registries": {"r.io": {"username": "u", "username_env": "U", "password_env": "P"}}},
            "one of username",
        ),
        ({"registries": {"R.io": {}}}, "lower-case host"),
        ({"registries": {"*.r.io:443": {}}}, "lower-case host"),
        ({"registries": {"https://r.io": {}}}, "lower-case host"),
        ({"deadline_seconds": 40}, "less than or equal to 25"),
        ({"deadline_seconds": 5, "background_seconds": 3}, "background_seconds"),
        ({"platform": "amd64"}, "os/arch"),
        ({"cache": {"max_entries": 0}}, "greater than or equal to 1"),
        ({"registries": {"r.io": {"auth": "kerberos"}}}, "auth"),
    ],
    ids=[
        "unknown-key",
        "inline-password",
        "user-only",
        "basic-without",
        "anonymous-with-user",
        "two-users",
        "upper-case",
        "wildcard-port",
        "url-key",
        "deadline",
        "background",
        "platform",
        "max-entries",
        "auth-mode",
    ],
)
def test_validation_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RegistryConfig.model_validate(data)


def test_most_specific_key_wins() -> None:
    config = RegistryConfig.model_validate(
        {
            "registries": {
                "*.azurecr.io": {"tenant_id": "t-all"},
                "*.prod.azurecr.io": {"tenant_id": "t-prod"},
                "one.prod.azurecr.io": {"tenant_id": "t-one"},
                "127.0.0.1:5000": {"insecure": True, "acr": True},
            }
        }
    )
    assert config.settings_for("x.azurecr.io").tenant_id == "t-all"
    assert config.settings_for("a.prod.azurecr.io").tenant_id == "t-prod"
    assert config.settings_for("one.prod.azurecr.io").tenant_id == "t-one"
    assert config.settings_for("127.0.0.1:5000").is_acr("127.0.0.1:5000")
    assert config.settings_for("127.0.0.1:5001").tenant_id is None


@pytest.mark.parametrize(
    ("host", "acr"),
    [
        ("a.azurecr.io", True),
        ("a.azurecr.cn", True),
        ("a.azurecr.us", True),
        ("a.azurecr.io:443", True),
        ("azurecr.io.evil.com", False),
        ("ghcr.io", False),
    ],
    ids=str,
)
def test_is_acr_host(host: str, acr: bool) -> None:
    assert is_acr_host(host) is acr


def config_with(settings: dict[str, Any]) -> RegistryConfig:
    return RegistryConfig.model_validate({"registries": {"reg.test": settings}})


async def test_basic_credentials_from_env_and_file(tmp_path: Path) -> None:
    reg = FakeRegistry(auth="basic")
    reg.image("demo/app")
    secret = tmp_path / "password"
    secret.write_text("p\n")
    for settings, env in [
        ({"username_env": "U", "password_env": "P"}, {"U": "u", "P": "p"}),
        ({"username": "u", "password_file": str(secret)}, {}),
    ]:
        source = RegistryVerdictSource(
            config_with(settings), env=env, aad=FixedAad(), transport=reg.transport()
        )
        verdict = await source.verdict(parse_image("reg.test/demo/app:v1"))
        await source.aclose()
        assert verdict.verdict is Verdict.NOT_STREAMABLE


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"username": "u", "password_env": "MISSING"}, "MISSING is not set"),
        ({"username": "u", "password_file": "/nonexistent/p"}, "cannot read /nonexistent/p"),
        ({"ca_file": "/nonexistent/ca.pem"}, "cannot load ca_file"),
    ],
    ids=["env", "file", "ca"],
)
def test_unusable_settings_fail_at_start_up(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RegistryVerdictSource(config_with(settings), env={}, aad=FixedAad())


def test_secrets_are_not_in_the_config_repr() -> None:
    config = config_with({"username": "u", "password_env": "REG_PASSWORD"})
    assert "REG_PASSWORD" in repr(config)  # the name of the variable, never its value


def test_yaml_shape_round_trip() -> None:
    import yaml

    text = """
deadline_seconds: 1.5
cache: {tag_ttl_seconds: 30, missing_ttl_seconds: 15}
circuit: {failure_threshold: 3}
registries:
  "*.azurecr.io": {tenant_id: 00000000-0000-0000-0000-000000000001}
  "127.0.0.1:25001": {insecure: true}
  "registry.example.com": {username_env: REG_USER, password_file: /var/run/secrets/reg/password}
"""
    config = RegistryConfig.model_validate(yaml.safe_load(text))
    assert config.deadline_seconds == 1.5
    assert config.cache.tag_ttl_seconds == 30 and config.cache.found_ttl_seconds == 86400
    assert config.settings_for("127.0.0.1:25001").insecure
    assert config.auth_mode("registry.example.com") == "basic"


# ---- issue 18 finding 3: no credentials for hosts matched only by a pattern -----------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"auth": "basic", "username": "u", "password_env": "P"}, "can't carry a user name"),
        ({"username_env": "U", "password_env": "P"}, "can't carry a user name"),
        ({"auth": "acr-aad"}, "would send the cluster's Azure AD token to every host"),
    ],
    ids=["basic", "auto-with-user", "acr-aad"],
)
def test_patterns_refuse_credentials(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        RegistryConfig.model_validate({"registries": {"*.registry.contoso.com": settings}})
    assert "'*.registry.contoso.com'" in str(err.value)
    assert "give each registry its own key" in str(err.value)


def test_patterns_under_acr_domains_may_use_acr_aad() -> None:
    config = RegistryConfig.model_validate(
        {"registries": {"*.azurecr.io": {"auth": "acr-aad"}, "*.azurecr.us": {"auth": "acr-aad"}}}
    )
    assert config.auth_mode("x.azurecr.io") == "acr-aad"


@pytest.mark.parametrize(
    ("registries", "registry", "mode"),
    [
        ({"*.contoso.com": {"acr": True}}, "evil.contoso.com", "anonymous"),
        ({"*.contoso.com": {"acr": True}}, "evil.contoso.com:8443", "anonymous"),
        ({"reg.contoso.com": {"acr": True}}, "reg.contoso.com", "acr-aad"),
        ({"reg.contoso.com": {"acr": True}}, "reg.contoso.com:443", "acr-aad"),
        ({"reg.contoso.com:443": {"acr": True}}, "reg.contoso.com", "acr-aad"),
        ({"reg.contoso.com": {"acr": True}}, "reg.contoso.com:5000", "anonymous"),
        ({"*.azurecr.io": {"tenantId": "t"}}, "x.azurecr.io", "acr-aad"),
        ({}, "x.azurecr.io:443", "acr-aad"),
    ],
    ids=str,
)
def test_auto_sends_the_aad_token_only_to_acr_domains_or_exact_keys(
    registries: dict[str, Any], registry: str, mode: str
) -> None:
    config = RegistryConfig.model_validate({"registries": registries})
    assert config.auth_mode(registry) == mode


def test_basic_credentials_match_the_port() -> None:
    config = RegistryConfig.model_validate(
        {"registries": {"reg.test": {"username": "u", "password_env": "P"}}}
    )
    assert config.auth_mode("reg.test") == "basic"
    assert config.auth_mode("reg.test:443") == "basic"  # the same origin
    assert config.auth_mode("reg.test:5000") == "anonymous"  # another server
    assert config.settings_key("reg.test:5000") is None


def test_default_port_keys_are_one_registry() -> None:
    config = RegistryConfig.model_validate({"registries": {"reg.test:443": {"insecure": False}}})
    assert list(config.registries) == ["reg.test"]
    with pytest.raises(ValidationError, match="name the same registry"):
        RegistryConfig.model_validate({"registries": {"reg.test:443": {}, "reg.test": {}}})


@pytest.mark.parametrize("host", ["*.contoso.com", "a b", "https://x/"])
def test_realm_hosts_are_exact_hosts(host: str) -> None:
    with pytest.raises(ValidationError, match="no pattern"):
        RegistryConfig.model_validate({"registries": {"reg.test": {"realmHosts": [host]}}})
