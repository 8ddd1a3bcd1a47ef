"""Which images `streamgate convert` asks ACR to convert: a pure decision per image.

From what the look-up found (the verdict, and whether ACR reports a conversion of that
digest queued or running): an image without a streaming artifact and no conversion under way
gets one started; one with a conversion under way is followed, not started twice; a streamable
image, an image outside ACR, and one whose state could not be read are left alone, each said
so (docs/remediation.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.core.verdicts import Verdict


class ConversionAction(StrEnum):
    START = "start"  # no streaming artifact, no conversion under way
    FOLLOW = "follow"  # a conversion is already queued or running
    STREAMABLE = "streamable"  # nothing to do
    NOT_ACR = "not-acr"  # only ACR converts
    UNKNOWN = "unknown"  # the look-up failed: nothing is started blindly


@dataclass(frozen=True, slots=True)
class ConversionPlan:
    image: str  # as the user wrote it
    action: ConversionAction
    reason: str = ""  # why unknown (the look-up's reason)


def plan_conversion(
    image: str, verdict: Verdict, *, under_way: bool, reason: str = ""
) -> ConversionPlan:
    """The action for one image. `under_way`: ACR reports a conversion queued or running."""
    if verdict is Verdict.STREAMABLE:
        return ConversionPlan(image, ConversionAction.STREAMABLE)
    if verdict is Verdict.NOT_ACR:
        return ConversionPlan(image, ConversionAction.NOT_ACR)
    if verdict is Verdict.NOT_STREAMABLE:
        action = ConversionAction.FOLLOW if under_way else ConversionAction.START
        return ConversionPlan(image, action)
    return ConversionPlan(image, ConversionAction.UNKNOWN, reason or "the look-up failed")


def unique_images(images: list[str]) -> list[str]:
    """Each image once, in the order given (a repeated argument is converted once)."""
    return list(dict.fromkeys(images))
