"""Workload kinds and where their pod spec lives: the one table extraction and patches share.

`KINDS` maps a (group, kind) to the path of its pod spec. From it come the containers to
judge (`containers`, `initContainers`, `ephemeralContainers`), the metadata paths to
annotate (the object's and its pod template's), and the JSON pointers patches use.

Objects come from JSON (a review, a manifest, the API), so their mappings are dicts: shapes
are checked with `isinstance(x, dict)`, which costs a fraction of an ABC `Mapping` check on
a path every admission takes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")

_TEMPLATE = ("spec", "template", "spec")

# (API group, kind) -> path of the pod spec inside the object.
KINDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): ("spec",),
    ("", "ReplicationController"): _TEMPLATE,
    ("apps", "Deployment"): _TEMPLATE,
    ("apps", "StatefulSet"): _TEMPLATE,
    ("apps", "DaemonSet"): _TEMPLATE,
    ("apps", "ReplicaSet"): _TEMPLATE,
    ("batch", "Job"): _TEMPLATE,
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
}

# A judged kind's API group, by kind.
GROUPS = {kind: group for group, kind in KINDS}

# The order reports and `streamgate scan` list kinds in: controllers first, then what may
# stand alone.
KIND_ORDER = (
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "CronJob",
    "Job",
    "ReplicaSet",
    "ReplicationController",
    "Pod",
)

# Controllers whose pods streamgate has already judged through the owner.
JUDGED_OWNERS = frozenset(kind for _, kind in KINDS if kind != "Pod")


def escape_pointer(token: str) -> str:
    """Escape one JSON-pointer token (RFC 6901): `~` -> `~0`, `/` -> `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


def pointer(path: tuple[str | int, ...]) -> str:
    return "".join("/" + escape_pointer(str(part)) for part in path)


class Container(NamedTuple):
    """One container of a pod spec: `field` is containers/initContainers/ephemeralContainers,
    `position` its index there. A tuple: made for every container of every admission and
    hashed into the decision memo's key, both at C speed."""

    field: str
    position: int
    name: str
    image: Any  # as written: usually a str, but the object is not validated yet

    @property
    def label(self) -> str:
        """How messages name it: `app`, `init:setup`, `debug:debugger-x`."""
        prefix = {"initContainers": "init:", "ephemeralContainers": "debug:"}.get(self.field, "")
        return prefix + self.name


class WorkloadError(ValueError):
    """The object has no usable pod spec where its kind says it should; `str()` says where."""


@dataclass(slots=True)
class Workload:
    """A judged object, walked once: its kind, the object, where its pod spec is, the pod spec
    and its containers. Every later step (exemption, memo signature, image plan, evaluation,
    patches) reads these instead of walking the object again. Read-only by convention; not
    frozen, as it is built on every admission (see app.webhook.review.AdmissionRequest)."""

    group: str
    kind: str
    obj: Mapping[str, Any]
    spec_path: tuple[str, ...]
    pod_spec: Mapping[str, Any]
    containers: tuple[Container, ...]

    @property
    def metadata(self) -> Mapping[str, Any]:
        meta = self.obj.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @property
    def name(self) -> str:
        name = self.metadata.get("name") or self.metadata.get("generateName") or ""
        return name if isinstance(name, str) else ""

    @property
    def annotations(self) -> Mapping[str, Any]:
        ann = self.metadata.get("annotations")
        return ann if isinstance(ann, dict) else {}

    @property
    def template_metadata_path(self) -> tuple[str, ...] | None:
        """Path of the pod template's metadata, or None for a Pod (its metadata is its own)."""
        if len(self.spec_path) == 1:
            return None
        return (*self.spec_path[:-1], "metadata")

    def template_annotations(self) -> Mapping[str, Any]:
        path = self.template_metadata_path
        node: Any = self.obj
        for part in path or ("metadata",):
            node = node.get(part) if isinstance(node, dict) else None
        ann = node.get("annotations") if isinstance(node, dict) else None
        return ann if isinstance(ann, dict) else {}

    @property
    def controller_kind(self) -> str | None:
        """Kind of the owning controller (ownerReferences with controller: true), if any."""
        refs = self.metadata.get("ownerReferences")
        if not isinstance(refs, list):
            return None
        for ref in refs:
            if isinstance(ref, dict) and ref.get("controller") is True:
                kind = ref.get("kind")
                return kind if isinstance(kind, str) else None
        return None


def containers_of(pod_spec: Mapping[str, Any]) -> Iterator[Container]:
    for field in CONTAINER_FIELDS:
        items = pod_spec.get(field)
        if not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            if isinstance(item, dict):
                name = item.get("name")
                yield Container(
                    field,
                    index,
                    name if isinstance(name, str) and name else f"#{index}",
                    item.get("image"),
                )


def workload(group: str, kind: str, obj: Mapping[str, Any]) -> Workload | None:
    """The workload view of `obj`, or None when streamgate does not judge this kind.

    Raises `WorkloadError` when the kind is judged but the object has no pod spec."""
    spec_path = KINDS.get((group, kind))
    if spec_path is None:
        return None
    node: Any = obj
    for depth, part in enumerate(spec_path):
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            where = ".".join(spec_path[: depth + 1])
            raise WorkloadError(f"{kind} has no {where} object")
    return Workload(
        group=group,
        kind=kind,
        obj=obj,
        spec_path=spec_path,
        pod_spec=node,
        containers=tuple(containers_of(node)),
    )


# Fields of a pod spec that decide where it runs and what it pulls: an UPDATE that changes none
# of them needs no new judgement.
SCHEDULING_FIELDS = (
    "nodeName",
    "nodeSelector",
    "affinity",
    "tolerations",
    "runtimeClassName",
    "imagePullSecrets",
)


def judged_signature(workload: Workload) -> tuple[Any, ...]:
    """What an UPDATE must change for streamgate to judge it again: images and scheduling."""
    spec = workload.pod_spec
    images = tuple([(c.field, c.name, repr(c.image)) for c in workload.containers])
    return (images, *(repr(spec.get(f)) for f in SCHEDULING_FIELDS))
