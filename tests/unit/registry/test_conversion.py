"""Reading ACR's conversion status, whose shape is not published: be lenient, stay safe."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.images import parse_image
from app.core.messages import fix_command
from app.registry.conversion import ConversionState, ConversionStatus, parse_conversion


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"status": "Running", "progress": "42%"},
            ConversionStatus(ConversionState.RUNNING, "42%"),
        ),
        ({"status": "running", "progress": 7}, ConversionStatus(ConversionState.RUNNING, "7%")),
        ({"status": "Running", "progress": "<script>"}, ConversionStatus(ConversionState.RUNNING)),
        ({"status": "NotStarted"}, ConversionStatus(ConversionState.NOT_STARTED)),
        (
            {"status": "Succeeded", "progress": "100%"},
            ConversionStatus(ConversionState.SUCCEEDED, "100%"),
        ),
        ({"status": "Canceled"}, ConversionStatus(ConversionState.CANCELED)),
        ({"status": "Exploded"}, ConversionStatus(ConversionState.UNKNOWN)),
        ({}, ConversionStatus(ConversionState.UNKNOWN)),
        (
            {"status": "Failed", "failureCode": "IMAGE_NOT_RUNNABLE"},
            ConversionStatus(ConversionState.FAILED, failure_code="IMAGE_NOT_RUNNABLE"),
        ),
        (
            {"status": "Failed", "errors": [{"code": "UNSUPPORTED_MEDIATYPE", "message": "m"}]},
            ConversionStatus(ConversionState.FAILED, failure_code="UNSUPPORTED_MEDIATYPE"),
        ),
        (
            {"status": "Failed", "message": "conversion failed: NO_SUPPORTED_PLATFORM_FOUND"},
            ConversionStatus(ConversionState.FAILED, failure_code="NO_SUPPORTED_PLATFORM_FOUND"),
        ),
        (
            {"status": "Failed", "code": "SOMETHING_NEW"},
            ConversionStatus(ConversionState.FAILED, failure_code="SOMETHING_NEW"),
        ),
        (
            {"status": "Failed", "code": "<b>not a code</b>"},
            ConversionStatus(ConversionState.FAILED),
        ),
    ],
    ids=[
        "running",
        "numeric-progress",
        "unsafe-progress",
        "queued",
        "succeeded",
        "canceled",
        "odd-status",
        "empty",
        "failure-code",
        "errors-list",
        "code-in-message",
        "new-code",
        "unsafe-code",
    ],
)
def test_parse_conversion(doc: dict[str, Any], expected: ConversionStatus) -> None:
    assert parse_conversion(doc) == expected


@pytest.mark.parametrize(
    ("image", "command"),
    [
        (
            "myacr.azurecr.io/team/app:v2",
            "az acr artifact-streaming create -n myacr --image team/app:v2",
        ),
        (
            "myacr.azurecr.cn/app@sha256:" + "a" * 64,
            "az acr artifact-streaming create -n myacr --image app@sha256:" + "a" * 64,
        ),
        (
            "127.0.0.1:25443/demo/app:v1",
            "az acr artifact-streaming create -n <registry name of 127.0.0.1:25443> "
            "--image demo/app:v1",
        ),
        (
            "registry.contoso.com/demo/app:v1@sha256:" + "b" * 64,
            "az acr artifact-streaming create -n contosoacr --image demo/app:v1",
        ),
        (
            "myacr.azurecr.io/" + "/".join(["segment"] * 30) + ":" + "t" * 120,
            "az acr artifact-streaming create -n myacr --image "
            + "/".join(["segment"] * 30)
            + ":"
            + "t" * 120,
        ),
    ],
    ids=["tag", "digest", "custom-domain-unnamed", "custom-domain-named", "long"],
)
def test_fix_command(image: str, command: str) -> None:
    names = {"registry.contoso.com": "contosoacr"}
    assert fix_command(parse_image(image), names) == command
