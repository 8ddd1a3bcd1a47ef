"""app.core.nodes.rules: the reasons a node pool can't stream, and their configuration."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import yaml

from app.core.nodes.model import Node
from app.core.nodes.rules import (
    Judgement,
    PoolRulesConfig,
    combine,
    judge_node,
    sandbox_runtime_class,
)
from app.core.pools import Streaming

AKS = "kubernetes.azure.com/"
STREAMING = AKS + "artifactstreaming-enabled"

GOOD = {
    "kubernetes.io/arch": "amd64",
    "kubernetes.io/os": "linux",
    AKS + "os-sku": "Ubuntu",
    AKS + "security-type": "TrustedLaunch",
    AKS + "node-image-version": "AKSUbuntu-2204gen2containerd-202410.27.0",
    STREAMING: "true",
}

YES = Judgement(Streaming.YES)


def no(*reasons: str) -> Judgement:
    return Judgement(Streaming.NO, reasons)


def judge(n: Node, config: PoolRulesConfig | None = None, *, seen: bool = True) -> Judgement:
    return judge_node(n, config or PoolRulesConfig(), streaming_label_seen=seen)


def with_labels(
    extra: dict[str, str],
    *,
    drop: tuple[str, ...] = (),
    kubelet: str = "v1.30.4",
    info: tuple[str, str] = ("", ""),
) -> Node:
    """A streaming-capable AKS node, changed by `extra` labels and without `drop`."""
    labels = {k: v for k, v in GOOD.items() if k not in drop}
    labels.update(extra)
    return Node(
        "n1", labels, kubelet_version=kubelet, architecture=info[0], operating_system=info[1]
    )


# ---- the default table ------------------------------------------------------------------------

CASES = [
    ("streams", with_labels({}), YES),
    ("arm64", with_labels({"kubernetes.io/arch": "arm64"}), no("arm64")),
    ("windows", with_labels({"kubernetes.io/os": "windows"}), no("windows")),
    (
        "arch-from-nodeinfo",
        with_labels({}, drop=("kubernetes.io/arch",), info=("arm64", "")),
        no("arm64"),
    ),
    (
        "os-from-nodeinfo",
        with_labels({}, drop=("kubernetes.io/os",), info=("", "windows")),
        no("windows"),
    ),
    ("no-arch-anywhere", with_labels({}, drop=("kubernetes.io/arch",)), YES),
    ("os-guard", with_labels({AKS + "os-sku": "AzureLinuxOSGuard"}), no("OS Guard")),
    (
        "azure-container-linux",
        with_labels({AKS + "os-sku": "AzureContainerLinux"}),
        no("Azure Container Linux"),
    ),
    ("flatcar", with_labels({AKS + "os-sku": "Flatcar"}), no("Flatcar")),
    ("azure-linux", with_labels({AKS + "os-sku": "AzureLinux"}), YES),
    (
        "confidential-vm",
        with_labels({AKS + "security-type": "ConfidentialVM"}),
        no("Confidential VM"),
    ),
    (
        "gen1",
        with_labels({AKS + "node-image-version": "AKSUbuntu-2204containerd-202410.27.0"}),
        no("Gen1 VM"),
    ),
    ("gen2-uppercase", with_labels({AKS + "node-image-version": "AKSUbuntu-2204Gen2-x"}), YES),
    ("no-image-label", with_labels({}, drop=(AKS + "node-image-version",)), YES),
    (
        "windows-image-not-gen1",
        with_labels(
            {
                "kubernetes.io/os": "windows",
                AKS + "node-image-version": "AKSWindows-2022-containerd-20348.2762.241009",
            }
        ),
        no("windows"),
    ),
    ("sandbox-label", with_labels({AKS + "kata-vm-isolation": "true"}), no("Pod Sandboxing")),
    (
        "sandbox-older-label",
        with_labels({AKS + "kata-mshv-vm-isolation": "true"}),
        no("Pod Sandboxing"),
    ),
    ("sandbox-false", with_labels({AKS + "kata-vm-isolation": "false"}), YES),
    ("old-kubelet", with_labels({}, kubelet="v1.25.6"), no("kubelet v1.25.6 < 1.26")),
    ("kubelet-at-minimum", with_labels({}, kubelet="v1.26.0"), YES),
    ("kubelet-suffix", with_labels({}, kubelet="v1.25.6-hotfix.1"), no("kubelet v1.25.6 < 1.26")),
    ("kubelet-unparseable", with_labels({}, kubelet="unknown"), YES),
    ("streaming-absent", with_labels({}, drop=(STREAMING,)), no("streaming not enabled")),
    ("streaming-false", with_labels({STREAMING: "false"}), no("streaming not enabled")),
    (
        "several",
        with_labels(
            {"kubernetes.io/arch": "arm64", AKS + "security-type": "ConfidentialVM"},
            drop=(STREAMING,),
            kubelet="v1.24.0",
        ),
        no("arm64", "Confidential VM", "kubelet v1.24.0 < 1.26", "streaming not enabled"),
    ),
]


@pytest.mark.parametrize(("n", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_default_rules(n: Node, expected: Judgement) -> None:
    assert judge(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (
            with_labels({}, drop=(STREAMING,)),
            Judgement(Streaming.UNKNOWN, ("no streaming label in cluster",)),
        ),
        (with_labels({"kubernetes.io/arch": "arm64"}, drop=(STREAMING,)), no("arm64")),
    ],
    ids=["unknown", "hard-reason-wins"],
)
def test_no_streaming_label_in_the_cluster_is_unknown(n: Node, expected: Judgement) -> None:
    assert judge(n, seen=False) == expected


# ---- switching off and re-keying ----------------------------------------------------------------


def cfg(**data: Any) -> PoolRulesConfig:
    return PoolRulesConfig.model_validate(data)


SWITCHES: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("architecture", {"kubernetes.io/arch": "arm64"}, {}),
    ("os", {"kubernetes.io/os": "windows"}, {}),
    ("osSku", {AKS + "os-sku": "AzureLinuxOSGuard"}, {}),
    ("securityType", {AKS + "security-type": "ConfidentialVM"}, {}),
    ("gen1", {AKS + "node-image-version": "AKSUbuntu-2204containerd-x"}, {}),
    ("sandboxing", {AKS + "kata-vm-isolation": "true"}, {}),
    ("kubelet", {}, {"kubelet": "v1.20.0"}),
    ("streamingLabel", {STREAMING: "false"}, {}),
]


@pytest.mark.parametrize(("rule", "labels", "kw"), SWITCHES, ids=[s[0] for s in SWITCHES])
def test_every_rule_can_be_switched_off(
    rule: str, labels: dict[str, str], kw: dict[str, Any]
) -> None:
    n = with_labels(labels, **kw)
    assert judge(n).streaming is Streaming.NO
    assert judge(n, cfg(**{rule: {"enabled": False}})) == YES


def test_streaming_rule_off_means_no_unknown() -> None:
    n = with_labels({}, drop=(STREAMING,))
    assert judge(n, cfg(streamingLabel={"enabled": False}), seen=False) == YES


def test_arm64_can_be_made_acceptable() -> None:
    n = with_labels({"kubernetes.io/arch": "arm64"})
    assert judge(n, cfg(architecture={"supported": ["amd64", "arm64"]})) == YES


@pytest.mark.parametrize(
    ("config", "labels", "expected"),
    [
        ({"architecture": {"key": "example.com/arch"}}, {"example.com/arch": "arm64"}, no("arm64")),
        (
            {
                "osSku": {
                    "keys": [AKS + "os-sku-effective"],
                    "values": {"AzureLinuxOSGuard3": "OS Guard"},
                }
            },
            {AKS + "os-sku-effective": "AzureLinuxOSGuard3"},
            no("OS Guard"),
        ),
        (
            {"securityType": {"values": {"ConfidentialVM": "CVM", "TrustedLaunch": "TL"}}},
            {},
            no("TL"),
        ),
        ({"gen1": {"gen2Markers": ["v5"]}}, {}, no("Gen1 VM")),
        (
            {"gen1": {"reason": "old VM generation"}},
            {AKS + "node-image-version": "x"},
            no("old VM generation"),
        ),
        (
            {"sandboxing": {"keys": ["example.com/sandbox"]}},
            {"example.com/sandbox": "yes"},
            no("Pod Sandboxing"),
        ),
        (
            {"sandboxing": {"keys": ["example.com/sandbox"]}},
            {AKS + "kata-vm-isolation": "true"},
            YES,
        ),
        (
            {"streamingLabel": {"key": "example.com/stream", "value": "on", "reason": "off"}},
            {"example.com/stream": "on"},
            YES,
        ),
        ({"streamingLabel": {"key": "example.com/stream", "reason": "off"}}, {}, no("off")),
    ],
    ids=[
        "arch-key",
        "os-sku-effective",
        "security-values",
        "gen2-markers",
        "gen1-reason",
        "sandbox-key",
        "sandbox-rekeyed-away",
        "streaming-key-value",
        "streaming-reason",
    ],
)
def test_rules_can_be_rekeyed(
    config: dict[str, Any], labels: dict[str, str], expected: Judgement
) -> None:
    assert judge(with_labels(labels), cfg(**config)) == expected


@pytest.mark.parametrize(
    ("minimum", "kubelet", "expected"),
    [
        ("1.25", "v1.25.6", YES),
        ("1.25", "v1.24.17", no("kubelet v1.24.17 < 1.25")),
        ("v1.28.3", "v1.28.2", no("kubelet v1.28.2 < 1.28.3")),
        ("1.28.3", "v1.28.3", YES),
    ],
    ids=["aks-doc-minimum", "below-aks-minimum", "patch-level", "equal-patch"],
)
def test_kubelet_minimum_is_configurable(minimum: str, kubelet: str, expected: Judgement) -> None:
    assert judge(with_labels({}, kubelet=kubelet), cfg(kubelet={"minVersion": minimum})) == expected


# ---- the config model --------------------------------------------------------------------------


def test_defaults_need_no_config() -> None:
    config = PoolRulesConfig()
    assert config.architecture.supported == ("amd64",)
    assert config.kubelet.min_version == "1.26"
    assert config.streaming_label.key == STREAMING
    assert config.pool_labels == (AKS + "agentpool", "agentpool")


def test_yaml_shape_camel_and_snake_case() -> None:
    text = """
    poolLabels: [kubernetes.azure.com/agentpool]
    architecture: {supported: [amd64, arm64]}
    os_sku: {keys: [kubernetes.azure.com/os-sku], values: {AzureLinuxOSGuard: OS Guard}}
    kubelet: {minVersion: "1.25"}
    streamingLabel: {enabled: true}
    sandboxing: {runtimeClasses: [kata-vm-isolation, my-kata]}
    placementCacheSize: 128
    """
    config = PoolRulesConfig.model_validate(yaml.safe_load(text))
    assert config.pool_labels == (AKS + "agentpool",)
    assert config.architecture.supported == ("amd64", "arm64")
    assert config.architecture.key == "kubernetes.io/arch"  # a partial rule keeps its defaults
    assert config.os_sku.values == {"AzureLinuxOSGuard": "OS Guard"}
    assert config.kubelet.min_version == "1.25"
    assert config.sandboxing.runtime_classes == ("kata-vm-isolation", "my-kata")
    assert config.placement_cache_size == 128


@pytest.mark.parametrize(
    "data",
    [
        {"architectur": {}},
        {"architecture": {"supportedd": ["amd64"]}},
        {"kubelet": {"minVersion": "latest"}},
        {"placementCacheSize": -1},
        {"gen1": {"enabled": "sometimes"}},
    ],
    ids=["typo-rule", "typo-field", "bad-version", "negative-cache", "bad-bool"],
)
def test_config_errors_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        PoolRulesConfig.model_validate(data)


def test_config_is_frozen() -> None:
    config = PoolRulesConfig()
    with pytest.raises(pydantic.ValidationError):
        config.kubelet.min_version = "1.20"  # type: ignore[misc]


# ---- combining and runtime classes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], YES),
        ([YES, YES], YES),
        ([YES, no("arm64")], no("arm64")),
        ([no("arm64"), no("Gen1 VM"), no("arm64")], no("arm64", "Gen1 VM")),
        ([Judgement(Streaming.UNKNOWN, ("u",)), YES], Judgement(Streaming.UNKNOWN, ("u",))),
        ([Judgement(Streaming.UNKNOWN, ("u",)), no("windows")], no("windows")),
    ],
    ids=["empty", "all-yes", "one-no", "dedup-ordered", "unknown", "no-beats-unknown"],
)
def test_combine(items: list[Judgement], expected: Judgement) -> None:
    assert combine(items) == expected


@pytest.mark.parametrize(
    ("config", "name", "handler", "expected"),
    [
        ({}, "kata-vm-isolation", "kata", True),
        ({}, "kata-mshv-vm-isolation", "", True),
        ({}, "my-sandbox", "kata-vm-isolation", True),
        ({}, "runc", "runc", False),
        ({"sandboxing": {"runtimeClasses": ["gvisor"]}}, "gvisor", "runsc", True),
        ({"sandboxing": {"enabled": False}}, "kata-vm-isolation", "kata", False),
    ],
    ids=["name", "older-name", "by-handler", "plain", "configured", "switched-off"],
)
def test_sandbox_runtime_class(
    config: dict[str, Any], name: str, handler: str, expected: bool
) -> None:
    assert sandbox_runtime_class(cfg(**config), name, handler) is expected
