"""Which images of a workload need a registry verdict: worked out once per admission.

`plan` parses each container's image (as written), tells ACR images from others, applies the
policy's image exemptions, and lists the ACR images a verdict is needed for, each once, in the
order the containers name them. The webhook looks those up and hands the same `Plan` to
`evaluate`; `check`, `scan` and `explain` do the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.images import ImageRef, InvalidImageRef, parse_image
from app.core.policy import Policy
from app.core.workloads import Container, Workload


@dataclass(slots=True)
class PlannedImage:
    """One container's image: parsed (`ref`), or why it could not be (`error`)."""

    container: Container
    ref: ImageRef | None
    error: str | None
    acr: bool
    exempt: bool


@dataclass(slots=True)
class Plan:
    """A workload with its images planned under one policy. Built per admission: not frozen
    (see app.webhook.review.AdmissionRequest); nothing assigns to it after `plan`."""

    workload: Workload
    images: tuple[PlannedImage, ...]
    to_check: tuple[ImageRef, ...]  # the ACR images `evaluate` needs a verdict for


def plan(workload: Workload, policy: Policy) -> Plan:
    images = []
    to_check: dict[ImageRef, None] = {}  # ordered, each once
    for c in workload.containers:
        image = c.image
        ref: ImageRef | None = None
        error: str | None = None
        if type(image) is str:
            try:
                ref = parse_image(image)
            except InvalidImageRef as err:
                error = str(err)
        else:
            error = "image is missing" if image is None else "not a string"
        exempt = type(image) is str and policy.exemptions.image_exempt(image)
        acr = ref is not None and policy.is_acr(ref.registry)
        images.append(PlannedImage(c, ref, error, acr, exempt))
        if ref is not None and acr and not exempt:
            to_check[ref] = None
    return Plan(workload, tuple(images), tuple(to_check))
