from __future__ import annotations

import pytest

from app.core.messages import NO_ARTIFACT
from app.core.policy import PolicyError, parse_policy
from app.core.remediation import Limiter, Refusal, Remediation, wants_conversion
from app.core.verdicts import ImageVerdict, Verdict

DIGEST = "sha256:" + "a" * 64


def test_off_by_default_and_the_short_form_turns_it_on_everywhere() -> None:
    assert not parse_policy({}).remediation.applies("team-a")
    assert not parse_policy({}).remediation.anywhere
    on = parse_policy({"remediation": "convert"}).remediation
    assert on.applies("team-a") and on.applies("anything") and on.anywhere


def test_namespaces_override_the_default_first_match_wins() -> None:
    r = Remediation.model_validate(
        {"action": "convert", "namespaces": {"legacy": "none", "team-*": "convert", "*": "none"}}
    )
    assert [r.applies(ns) for ns in ("legacy", "team-a", "other")] == [False, True, False]
    only = Remediation.model_validate({"namespaces": {"team-a": "convert"}})
    assert only.applies("team-a") and not only.applies("team-b") and only.anywhere


@pytest.mark.parametrize(
    "bad",
    [
        {"remediation": "fix"},
        {"remediation": {"action": "convert", "perHour": 0}},
        {"remediation": {"namespaces": {"a": "yes"}}},
        {"remediation": {"rate": 3}},
    ],
)
def test_a_bad_setting_names_the_field(bad: dict[str, object]) -> None:
    with pytest.raises(PolicyError, match="remediation"):
        parse_policy(bad)


def test_only_registries_reached_with_credentials_and_allowed_may_convert() -> None:
    policy = parse_policy(
        {
            "acrRegistries": ["*.corp.example", "acr.corp.example"],
            "remediation": {"action": "convert", "registries": ["*.azurecr.io", "acr.corp.*"]},
        }
    )
    assert policy.may_convert("myacr.azurecr.io")
    assert policy.may_convert("acr.corp.example")  # named exactly
    assert not policy.may_convert("evil.corp.example")  # ACR by a pattern only: anyone's
    assert not policy.may_convert("docker.io")
    assert not policy.may_convert("myacr.azurecr.cn")  # not in remediation.registries


def test_wants_a_conversion_only_where_one_would_help() -> None:

    def v(verdict: Verdict, reason: str = "", digest: str | None = DIGEST) -> ImageVerdict:
        return ImageVerdict(verdict, reason, digest=digest)

    assert wants_conversion(v(Verdict.NOT_STREAMABLE, NO_ARTIFACT))
    assert wants_conversion(v(Verdict.NOT_STREAMABLE, "conversion failed (UNKNOWN_ERROR)"))
    assert not wants_conversion(v(Verdict.NOT_STREAMABLE, NO_ARTIFACT, digest=None))
    assert not wants_conversion(
        v(Verdict.NOT_STREAMABLE, "no streaming artifact yet; conversion running (42%)")
    )
    assert not wants_conversion(
        v(
            Verdict.NOT_STREAMABLE,
            "streaming conversion failed (UNSUPPORTED_PLATFORM): only linux/amd64 images convert",
        ),
    )
    assert not wants_conversion(v(Verdict.STREAMABLE))
    assert not wants_conversion(v(Verdict.UNKNOWN, "registry timed out"))


def test_the_limiter_holds_per_registry_per_minute_and_per_hour_in_all() -> None:
    limiter = Limiter(per_minute=2, per_hour=3)
    assert limiter.take("a", 0.0) is None
    assert limiter.take("a", 1.0) is None
    assert limiter.take("a", 2.0) is Refusal.RATE
    assert limiter.take("b", 3.0) is None
    assert limiter.take("b", 4.0) is Refusal.BUDGET  # 3 in the last hour
    limiter.give_back("b")  # not needed after all (another replica had started it)
    assert limiter.take("b", 5.0) is None
    assert limiter.take("a", 61.0) is Refusal.BUDGET  # the minute passed, the hour did not
    assert limiter.take("a", 3600.5) is None  # the first start left the hour
    assert limiter.take("a", 3600.6) is Refusal.BUDGET


def test_the_limiter_forgets_idle_registries_past_its_bound() -> None:
    limiter = Limiter(per_minute=1, per_hour=10_000, max_registries=4)
    for i in range(4):
        assert limiter.take(f"r{i}", float(i)) is None
    assert limiter.take("r4", 100.0) is None
    assert len(limiter._minute) <= 4
    assert limiter.take("r4", 101.0) is Refusal.RATE
