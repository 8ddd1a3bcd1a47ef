"""Which images `streamgate convert` starts, follows or leaves alone."""

from __future__ import annotations

import pytest

from app.core.conversions import ConversionAction, plan_conversion, unique_images
from app.core.verdicts import Verdict


@pytest.mark.parametrize(
    ("verdict", "under_way", "action"),
    [
        (Verdict.NOT_STREAMABLE, False, ConversionAction.START),
        (Verdict.NOT_STREAMABLE, True, ConversionAction.FOLLOW),
        (Verdict.STREAMABLE, False, ConversionAction.STREAMABLE),
        (Verdict.STREAMABLE, True, ConversionAction.STREAMABLE),
        (Verdict.NOT_ACR, False, ConversionAction.NOT_ACR),
        (Verdict.UNKNOWN, False, ConversionAction.UNKNOWN),
        (Verdict.UNKNOWN, True, ConversionAction.UNKNOWN),
    ],
)
def test_action_per_verdict(verdict: Verdict, under_way: bool, action: ConversionAction) -> None:
    plan = plan_conversion("reg.azurecr.io/a:v1", verdict, under_way=under_way)
    assert plan.action is action
    assert plan.image == "reg.azurecr.io/a:v1"


def test_unknown_keeps_the_look_up_reason_and_never_starts() -> None:
    plan = plan_conversion("x/a:v1", Verdict.UNKNOWN, under_way=False, reason="registry timed out")
    assert plan.action is ConversionAction.UNKNOWN
    assert plan.reason == "registry timed out"
    assert plan_conversion("x/a:v1", Verdict.UNKNOWN, under_way=False).reason


def test_repeated_images_are_planned_once_in_order() -> None:
    assert unique_images(["b:v1", "a:v1", "b:v1"]) == ["b:v1", "a:v1"]
