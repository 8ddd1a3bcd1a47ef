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


# ---- choosing images from a report (`convert --from-check`, `--from-scan`) ----------------


class Blocker(StrEnum):
    """Why a workload's image would not stream even with its streaming artifact."""

    DIGEST = "digest"  # pulled by digest: AKS streams tag pulls only
    POOLS = "pools"  # every pool the workload can land on can't stream


@dataclass(frozen=True, slots=True)
class ImageUse:
    """One container's image in one workload, as `check -o json` or `scan` reported it."""

    image: str  # as written in the pod spec
    verdict: str  # the report's image verdict (a `Verdict` value, or anything else)
    workload: str  # namespace/Kind/name, for the lines users read
    reason: str = ""
    blockers: tuple[Blocker, ...] = ()


@dataclass(frozen=True, slots=True)
class Skipped:
    image: str
    why: str


@dataclass(frozen=True, slots=True)
class Selection:
    images: tuple[str, ...]  # to convert: not streamable for want of a streaming artifact
    skipped: tuple[Skipped, ...]  # not converted, each with the reason users read


_BLOCKER_TEXT = {
    Blocker.DIGEST: "pulled by digest (AKS streams tag pulls only; pull it by tag first)",
    Blocker.POOLS: "on node pools that can't stream (fix the pools first)",
}


def _blocked_why(use: ImageUse, *, has_artifact: bool) -> str:
    what = ", ".join(_BLOCKER_TEXT[b] for b in use.blockers)
    if has_artifact:
        return f"has its streaming artifact; doesn't stream in {use.workload}: {what}"
    return f"a conversion alone would not make it stream in {use.workload}: {what}"


def select_images(uses: list[ImageUse]) -> Selection:
    """The images a report calls not streamable because their streaming artifact is missing,
    each once, in the order first seen. An image is taken when at least one workload would
    stream it once converted (pulled by tag, on pools that can stream, or pools unknown).
    Skipped, with the reason: missing an artifact but every use is blocked (by digest or
    pools); streamable but blocked; unknown (the report could not tell). Streamable images
    streaming fine and images outside ACR are left out silently: nothing to do."""
    by_image: dict[str, list[ImageUse]] = {}
    for use in uses:
        by_image.setdefault(use.image, []).append(use)
    chosen: list[str] = []
    skipped: list[Skipped] = []
    for image, its in by_image.items():
        verdict = its[0].verdict
        if verdict == Verdict.NOT_STREAMABLE.value:
            if any(not u.blockers for u in its):
                chosen.append(image)
            else:
                skipped.append(Skipped(image, _blocked_why(its[0], has_artifact=False)))
        elif verdict == Verdict.STREAMABLE.value:
            blocked = [u for u in its if u.blockers]
            if blocked and len(blocked) == len(its):
                skipped.append(Skipped(image, _blocked_why(blocked[0], has_artifact=True)))
        elif verdict == Verdict.UNKNOWN.value:
            why = its[0].reason or "the report could not tell"
            skipped.append(Skipped(image, f"the report could not tell whether it streams ({why})"))
        elif verdict != Verdict.NOT_ACR.value:
            skipped.append(Skipped(image, f"the report gives no verdict for it ({verdict!r})"))
    return Selection(tuple(chosen), tuple(skipped))
