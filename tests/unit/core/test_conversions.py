"""Which images `streamgate convert` starts, follows or leaves alone."""

from __future__ import annotations

import pytest

from app.core.conversions import (
    Blocker,
    ConversionAction,
    ImageUse,
    Skipped,
    plan_conversion,
    select_images,
    unique_images,
)
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


# ---- choosing images from a report -----------------------------------------------------------

NS = "shop/Deployment/web"


def use(image: str, verdict: str, *blockers: Blocker, workload: str = NS) -> ImageUse:
    return ImageUse(image, verdict, workload, "", tuple(blockers))


def test_only_images_missing_their_artifact_are_taken_once_in_order() -> None:
    sel = select_images(
        [
            use("r/b:1", "not-streamable"),
            use("r/a:1", "streamable"),
            use("docker.io/nginx:1", "not-acr"),
            use("r/b:1", "not-streamable", workload="shop/Job/other"),
            use("r/c:1", "not-streamable"),
        ]
    )
    assert sel.images == ("r/b:1", "r/c:1")
    assert sel.skipped == ()


def test_digest_pins_and_pools_that_cant_stream_are_skipped_with_the_reason() -> None:
    sel = select_images(
        [
            use("r/pinned@sha256:" + "a" * 64, "not-streamable", Blocker.DIGEST),
            use("r/pools:1", "not-streamable", Blocker.POOLS),
            use("r/ok-pinned@sha256:" + "b" * 64, "streamable", Blocker.DIGEST),
        ]
    )
    assert sel.images == ()
    assert sel.skipped == (
        Skipped(
            "r/pinned@sha256:" + "a" * 64,
            f"a conversion alone would not make it stream in {NS}: pulled by digest "
            "(AKS streams tag pulls only; pull it by tag first)",
        ),
        Skipped(
            "r/pools:1",
            f"a conversion alone would not make it stream in {NS}: on node pools that can't "
            "stream (fix the pools first)",
        ),
        Skipped(
            "r/ok-pinned@sha256:" + "b" * 64,
            f"has its streaming artifact; doesn't stream in {NS}: pulled by digest "
            "(AKS streams tag pulls only; pull it by tag first)",
        ),
    )


def test_one_workload_that_would_stream_it_is_enough() -> None:
    sel = select_images(
        [
            use("r/x:1", "not-streamable", Blocker.POOLS, workload="a/Deployment/x"),
            use("r/x:1", "not-streamable", workload="b/Deployment/x"),
        ]
    )
    assert sel.images == ("r/x:1",) and sel.skipped == ()


def test_unknown_and_odd_verdicts_are_skipped_not_guessed() -> None:
    sel = select_images(
        [
            ImageUse("r/u:1", "unknown", NS, "registry timed out"),
            ImageUse("r/w:1", "maybe", NS),
        ]
    )
    assert sel.images == ()
    assert [s.why for s in sel.skipped] == [
        "the report could not tell whether it streams (registry timed out)",
        "the report gives no verdict for it ('maybe')",
    ]
