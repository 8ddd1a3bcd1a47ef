"""Why a node pool can't stream: the rule table, its configuration, and the judgement.

Each rule reads one piece of evidence from a node (a label, or the kubelet version) and, when
the node can't stream, gives a short reason fit for a kubectl warning ("arm64", "OS Guard",
"kubelet v1.25.6 < 1.26"). Every rule can be switched off and re-keyed in the policy's `pools`
section (`PoolRulesConfig`), because AKS labels change; docs/node-pools.md has the table.

A node's judgement is NO when any rule says so, else UNKNOWN when a rule can't tell (the
streaming label exists on no node of the cluster: not AKS, or an AKS that predates it), else
YES. A pool's judgement, over the nodes a pod may use, is the worst of its nodes'.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from app.core.nodes.model import (
    ARCH_LABEL,
    NODE_IMAGE_LABEL,
    OS_LABEL,
    OS_SKU_LABEL,
    POOL_LABELS,
    SANDBOX_LABELS,
    SECURITY_TYPE_LABEL,
    STREAMING_LABEL,
    Node,
    parse_version,
)
from app.core.pools import Streaming


class _Config(BaseModel):
    # camelCase in YAML (like Kubernetes); snake_case is accepted too.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )


class SupportedValuesRule(_Config):
    """The node can't stream unless the label's value is one of `supported`; the reason is the
    value itself ("arm64", "windows"). Without the label, `status.nodeInfo` is read."""

    enabled: bool = True
    key: str
    supported: tuple[str, ...]


class ArchitectureRule(SupportedValuesRule):
    key: str = ARCH_LABEL
    supported: tuple[str, ...] = ("amd64",)  # add arm64 once AKS node images stream on it


class OperatingSystemRule(SupportedValuesRule):
    key: str = OS_LABEL
    supported: tuple[str, ...] = ("linux",)


class BlockedValuesRule(_Config):
    """The node can't stream when one of `keys` has a value listed in `values` (value -> reason).
    Setting `values` replaces the whole map."""

    enabled: bool = True
    keys: tuple[str, ...]
    values: Mapping[str, str]


class OsSkuRule(BlockedValuesRule):
    keys: tuple[str, ...] = (OS_SKU_LABEL,)
    values: Mapping[str, str] = Field(
        default_factory=lambda: {
            "AzureLinuxOSGuard": "OS Guard",
            "Flatcar": "Flatcar",
            "AzureContainerLinux": "Azure Container Linux",
        }
    )


class SecurityTypeRule(BlockedValuesRule):
    keys: tuple[str, ...] = (SECURITY_TYPE_LABEL,)
    values: Mapping[str, str] = Field(default_factory=lambda: {"ConfidentialVM": "Confidential VM"})


class Gen1Rule(_Config):
    """A node image version without any of `gen2_markers` (case-insensitive) is a Gen1 VM.
    Nodes without the label are not judged; nor are nodes whose OS is outside `os`
    (Windows image names don't follow the pattern), unless `os` is empty."""

    enabled: bool = True
    key: str = NODE_IMAGE_LABEL
    gen2_markers: tuple[str, ...] = ("gen2",)
    os: tuple[str, ...] = ("linux",)
    reason: str = "Gen1 VM"


class SandboxingRule(_Config):
    """Pod Sandboxing: a node label in `keys` (any value but "false"), and runtime classes whose
    name or handler is in `runtime_classes` (then every pool gets `runtime_class_reason`)."""

    enabled: bool = True
    keys: tuple[str, ...] = SANDBOX_LABELS
    reason: str = "Pod Sandboxing"
    runtime_classes: tuple[str, ...] = ("kata-vm-isolation", "kata-mshv-vm-isolation")
    runtime_class_reason: str = "Pod Sandboxing runtime class"


class KubeletRule(_Config):
    """The node's kubelet is older than `min_version` (ACR docs say 1.26, AKS docs 1.25)."""

    enabled: bool = True
    min_version: str = "1.26"

    @field_validator("min_version")
    @classmethod
    def _parseable(cls, value: str) -> str:
        if parse_version(value) is None:
            raise ValueError(f"not a version like 1.26 or v1.26.3: {value!r}")
        return value


class StreamingLabelRule(_Config):
    """The pool must carry `key=value`. When no node in the cluster has `key` at all, the rule
    can't tell and says `unknown_reason` (UNKNOWN) instead of `reason` (NO)."""

    enabled: bool = True
    key: str = STREAMING_LABEL
    value: str = "true"
    reason: str = "streaming not enabled"
    unknown_reason: str = "no streaming label in cluster"


class PoolRulesConfig(_Config):
    """The `pools` section of the policy. Every field has a default (the AKS facts)."""

    pool_labels: tuple[str, ...] = POOL_LABELS
    architecture: ArchitectureRule = ArchitectureRule()
    os: OperatingSystemRule = OperatingSystemRule()
    os_sku: OsSkuRule = OsSkuRule()
    security_type: SecurityTypeRule = SecurityTypeRule()
    gen1: Gen1Rule = Gen1Rule()
    sandboxing: SandboxingRule = SandboxingRule()
    kubelet: KubeletRule = KubeletRule()
    streaming_label: StreamingLabelRule = StreamingLabelRule()
    # Size of the per-snapshot memo of placements (distinct scheduling constraints).
    placement_cache_size: int = Field(default=4096, ge=0)


@dataclass(frozen=True, slots=True)
class Judgement:
    streaming: Streaming
    reasons: tuple[str, ...] = ()


STREAMS = Judgement(Streaming.YES)
_RANK = {Streaming.YES: 0, Streaming.UNKNOWN: 1, Streaming.NO: 2}


def _node_value(node: Node, key: str, fallback: str) -> str:
    return node.labels.get(key) or fallback


def _supported(rule: SupportedValuesRule, value: str) -> list[str]:
    return [value] if rule.enabled and value and value not in rule.supported else []


def _blocked(rule: BlockedValuesRule, labels: Mapping[str, str]) -> list[str]:
    if not rule.enabled:
        return []
    found = (rule.values.get(labels[key]) for key in rule.keys if key in labels)
    return [reason for reason in found if reason is not None][:1]


def _gen1(rule: Gen1Rule, node: Node, os_value: str) -> list[str]:
    image = node.labels.get(rule.key)
    if not rule.enabled or image is None or (rule.os and os_value not in rule.os):
        return []
    lowered = image.lower()
    return [] if any(m.lower() in lowered for m in rule.gen2_markers) else [rule.reason]


def _sandboxed(rule: SandboxingRule, labels: Mapping[str, str]) -> list[str]:
    on = any(labels.get(key, "false").lower() != "false" for key in rule.keys)
    return [rule.reason] if rule.enabled and on else []


def _old_kubelet(rule: KubeletRule, node: Node) -> list[str]:
    version = parse_version(node.kubelet_version)
    minimum = parse_version(rule.min_version)
    if not rule.enabled or version is None or minimum is None or version >= minimum:
        return []
    return [f"kubelet v{'.'.join(map(str, version))} < {rule.min_version.removeprefix('v')}"]


def judge_node(node: Node, config: PoolRulesConfig, *, streaming_label_seen: bool) -> Judgement:
    """Can this node stream? `streaming_label_seen`: does any node of the cluster carry the
    streaming label key (see `StreamingLabelRule`)."""
    labels = node.labels
    os_value = _node_value(node, config.os.key, node.operating_system)
    no = [
        *_supported(
            config.architecture, _node_value(node, config.architecture.key, node.architecture)
        ),
        *_supported(config.os, os_value),
        *_blocked(config.os_sku, labels),
        *_blocked(config.security_type, labels),
        *_gen1(config.gen1, node, os_value),
        *_sandboxed(config.sandboxing, labels),
        *_old_kubelet(config.kubelet, node),
    ]
    streaming = config.streaming_label
    if streaming.enabled and streaming_label_seen and labels.get(streaming.key) != streaming.value:
        no.append(streaming.reason)
    if no:
        return Judgement(Streaming.NO, tuple(no))
    if streaming.enabled and not streaming_label_seen:
        return Judgement(Streaming.UNKNOWN, (streaming.unknown_reason,))
    return STREAMS


def combine(judgements: Iterable[Judgement]) -> Judgement:
    """The worst of several judgements, with the distinct reasons of those at that level."""
    items = list(judgements)
    if not items:
        return STREAMS
    worst = max((j.streaming for j in items), key=_RANK.__getitem__)
    reasons = {r: None for j in items if j.streaming is worst for r in j.reasons}
    return Judgement(worst, tuple(reasons))


def sandbox_runtime_class(config: PoolRulesConfig, name: str, handler: str = "") -> bool:
    """Is a runtime class (by name or handler) one of Pod Sandboxing's?"""
    rule = config.sandboxing
    return rule.enabled and (name in rule.runtime_classes or handler in rule.runtime_classes)
