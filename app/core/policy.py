"""The streaming policy: what streamgate does about each kind of problem, per namespace.

Loaded once from YAML at start-up (and on reload); validation errors name the field. The
evaluation core only reads a `Policy`; it never touches files or the environment.

Modes, from strictest: `enforce` (deny rules deny), `warn` (deny rules only warn: the default,
so installing streamgate never blocks anyone), `audit` (no warnings, annotations and logs
only), `off` (nothing). A namespace picks its own mode with the label `streamgate.io/mode`,
which may only make it stricter than the admin's (`mode`, `namespaceModes`) unless
`namespaceLabel.allowRelax` says otherwise: whoever can label a namespace is often the tenant.
"""

from __future__ import annotations

import fnmatch
import re
from enum import StrEnum
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.core.images import canonical_registry, is_acr_host
from app.core.nodes.rules import PoolRulesConfig
from app.core.registries import RegistryConfig
from app.core.remediation import Remediation

MODE_LABEL = "streamgate.io/mode"
EXEMPT_ANNOTATION = "streamgate.io/exempt"


class Mode(StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"
    AUDIT = "audit"
    OFF = "off"

    @property
    def strictness(self) -> int:
        return _STRICTNESS[self]


_STRICTNESS = {Mode.OFF: 0, Mode.AUDIT: 1, Mode.WARN: 2, Mode.ENFORCE: 3}


class Action(StrEnum):
    DENY = "deny"
    WARN = "warn"
    IGNORE = "ignore"


class OnError(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Rules(_Strict):
    """One action per kind of problem. `deny` denies only in `enforce` mode."""

    not_streamable: Action = Field(Action.DENY, alias="notStreamable")
    pools_cannot_stream: Action = Field(Action.DENY, alias="poolsCannotStream")
    pools_may_not_stream: Action = Field(Action.WARN, alias="poolsMayNotStream")
    no_streaming_pools: Action = Field(Action.WARN, alias="noStreamingPools")
    digest_pinned: Action = Field(Action.WARN, alias="digestPinned")
    image_pull_secrets: Action = Field(Action.WARN, alias="imagePullSecrets")
    not_acr: Action = Field(Action.IGNORE, alias="notAcr")
    invalid_image: Action = Field(Action.WARN, alias="invalidImage")


class AnnotationExemption(_Strict):
    """Who may skip judging with the `streamgate.io/exempt` annotation on their own object.

    By default it is honoured where it only silences warnings (modes warn and audit) and not
    in enforce mode, where it would let anyone who can create a Pod skip the policy; the admin
    names the namespaces (fnmatch patterns) where it also lifts enforce, or turns it off."""

    allowed: bool = True
    enforce_namespaces: tuple[str, ...] = Field((), alias="enforceNamespaces")

    def honoured(self, namespace: str, mode: Mode) -> bool:
        if not self.allowed:
            return False
        if mode is not Mode.ENFORCE:
            return True
        return any(fnmatch.fnmatchcase(namespace, p) for p in self.enforce_namespaces)


class Exemptions(_Strict):
    namespaces: tuple[str, ...] = ("kube-system",)
    images: tuple[str, ...] = ()  # fnmatch patterns on the image string as written
    annotation: AnnotationExemption = AnnotationExemption()

    def image_exempt(self, image: str) -> bool:
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.images)


class NamespaceLabel(_Strict):
    """`allowRelax: true` lets the `streamgate.io/mode` label also make a namespace less strict
    than the admin's mode (down to `off`); by default it can only make it stricter."""

    allow_relax: bool = Field(False, alias="allowRelax")


# Who creates the pods of the controllers streamgate judges through their owner: the
# controller-manager's own user, or (--use-service-account-credentials, as on AKS and kubeadm)
# one service account per controller in kube-system.
CONTROLLER_USERS = (
    "system:kube-controller-manager",
    "system:serviceaccount:kube-system:replicaset-controller",
    "system:serviceaccount:kube-system:replication-controller",
    "system:serviceaccount:kube-system:statefulset-controller",
    "system:serviceaccount:kube-system:daemon-set-controller",
    "system:serviceaccount:kube-system:job-controller",
)


class Steering(_Strict):
    """Opt-in: /mutate adds a required node-affinity term that keeps pods on streaming pools."""

    enabled: bool = False


class Policy(_Strict):
    mode: Mode = Mode.WARN
    on_error: OnError = Field(OnError.ALLOW, alias="onError")
    # Registries treated as ACR besides *.azurecr.io/.cn/.us: host names or fnmatch patterns
    # (custom domains, test registries). A port is part of the host. Only hosts listed by
    # their exact name get the cluster's Azure AD token (`may_get_aad`).
    acr_registries: tuple[str, ...] = Field((), alias="acrRegistries")
    # host[:port] of a custom-domain ACR -> its ACR resource name, so fix commands can name it
    # (`az acr artifact-streaming create -n <name>`); *.azurecr.io hosts need no entry.
    acr_registry_names: dict[str, str] = Field(default_factory=dict, alias="acrRegistryNames")
    rules: Rules = Rules()
    exemptions: Exemptions = Exemptions()
    # Pods owned by a controller streamgate also judges (ReplicaSet, Job, ...) were judged
    # through their owner: by default they are annotated and warned about, never denied, when
    # one of `controllerUsers` creates them (anyone can write an ownerReference).
    deny_controlled_pods: bool = Field(False, alias="denyControlledPods")
    controller_users: tuple[str, ...] = Field(CONTROLLER_USERS, alias="controllerUsers")
    steering: Steering = Steering()
    namespace_modes: dict[str, Mode] = Field(default_factory=dict, alias="namespaceModes")
    namespace_label: NamespaceLabel = Field(NamespaceLabel(), alias="namespaceLabel")
    # Which node pools can stream: rules keyed on AKS labels, each switchable (docs/node-pools.md).
    pools: PoolRulesConfig = PoolRulesConfig()
    # How registries are reached: deadline, caches, auth per registry (docs/registry.md).
    registry: RegistryConfig = RegistryConfig()
    # Opt-in: admissions start the conversions of ACR images that can't stream yet
    # (docs/remediation.md); `remediation: convert`, or a mapping with limits and namespaces.
    remediation: Remediation = Remediation()

    @field_validator("acr_registry_names")
    @classmethod
    def _names_lower(cls, value: dict[str, str]) -> dict[str, str]:
        for host, name in value.items():
            if not host or "/" in host or " " in host:
                raise ValueError(f"{host!r} is not a registry host (like myreg.example.com:5000)")
            if not name or not name.isalnum():
                raise ValueError(f"{name!r} is not an ACR registry name (letters and digits)")
        return {host.lower(): name.lower() for host, name in value.items()}

    @field_validator("acr_registries")
    @classmethod
    def _hosts_lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if not host or "/" in host or " " in host:
                raise ValueError(f"{host!r} is not a registry host (like myreg.example.com:5000)")
        return tuple(canonical_registry(h) for h in value)

    def is_acr(self, registry: str) -> bool:
        if is_acr_host(registry):
            return True
        host = canonical_registry(registry)
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.acr_registries)

    def admin_mode(self, namespace: str) -> Mode:
        """The mode the admin chose for `namespace`: `namespaceModes`, else `mode`."""
        return self.namespace_modes.get(namespace) or self.mode

    def label_applies(self, label: Mode, admin: Mode) -> bool:
        """Whether a namespace's `streamgate.io/mode` label replaces the admin's mode."""
        return self.namespace_label.allow_relax or label.strictness >= admin.strictness

    def names_registry(self, registry: str) -> bool:
        """True when the admin named `registry` exactly: an `acrRegistries` entry without a
        pattern, or a `registry.registries` key that is a host[:port] (not `*.domain`)."""
        host = canonical_registry(registry)
        if any(host == p for p in self.acr_registries if not _GLOB.search(p)):
            return True
        return host in self.registry.registries

    def may_convert(self, registry: str) -> bool:
        """Whether remediation may ask `registry` to convert: ACR, reached with credentials
        (ACR's own domains, or a registry the admin named exactly: never one matched only by
        a pattern, whose owner could be anyone), and allowed by `remediation.registries`."""
        named = is_acr_host(registry) or self.names_registry(registry)
        return named and self.is_acr(registry) and self.remediation.registry_allowed(registry)

    def may_get_aad(self, registry: str) -> bool:
        """True when `auth: auto` may send the cluster's Azure AD token to `registry`: one of
        ACR's own domains, or listed in acrRegistries by its exact name (not a pattern: a
        tenant who can create a DNS name under a pattern would receive the token)."""
        if is_acr_host(registry):
            return True
        host = canonical_registry(registry)
        return any(host == p for p in self.acr_registries if not _GLOB.search(p))


_GLOB = re.compile(r"[*?\[]")


class PolicyError(ValueError):
    """The policy file is unreadable or invalid; the message names the file and the field."""


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_policy(data: Any, *, source: str = "policy") -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping, not {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        lines = [f"{_field_path(e['loc'])}: {e['msg']}" for e in err.errors()]
        raise PolicyError(f"{source}: invalid policy: " + "; ".join(lines)) from err


def policy_from_yaml(text: str, *, source: str) -> Policy:
    """Parse and validate a policy document; `source` names it in errors (a file's path).
    Reading the file is the caller's (app.webhook.reload.load_policy)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"{source}: not valid YAML: {err}") from err
    return parse_policy(data, source=source)


# Values of the exempt annotation that say "not exempt" (case and surrounding space ignored);
# anything else exempts, and a text other than a yes-word is the reason shown.
_NOT_EXEMPT = frozenset(("", "false", "no", "0", "off", "n", "f", "none"))
_YES = frozenset(("true", "yes", "1", "on", "y", "t"))


def exempt_value(value: object) -> str | None:
    """What an `streamgate.io/exempt` value asks for: None (not an exemption: absent, not a
    string, or a no-word like "false"), "" (a yes-word) or the reason text."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.lower() in _NOT_EXEMPT:
        return None
    return "" if text.lower() in _YES else text


_MODE_VALUES = re.compile("|".join(m.value for m in Mode))


def mode_from_label(value: str | None) -> Mode | None:
    """The mode a namespace label asks for, or None when absent or not a mode."""
    if value and _MODE_VALUES.fullmatch(value):
        return Mode(value)
    return None
