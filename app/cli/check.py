"""`streamgate check`: judge manifests offline, as the webhook would, for CI pipelines.

Reads multi-document YAML files, every *.yaml/*.yml/*.json under a directory, or standard input
(`-f -`, e.g. `helm template … | streamgate check -f -`); expands `kind: List` and `*List`
objects; refuses duplicate mapping keys as kubectl does. Namespace objects in the input give
their `streamgate.io/mode` label, as the webhook's namespace watch would. Each judged workload
is evaluated with the webhook's own admission code; the output is a table, JSON, YAML, SARIF
or JUnit XML, and the exit code says whether anything would be denied (or warned, with
`--fail-on warn`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.core.evaluate import Decision, Severity
from app.core.policy import MODE_LABEL, Mode, mode_from_label
from app.core.workloads import KINDS, WorkloadError
from app.webhook.admission import Admission
from app.webhook.review import AdmissionRequest

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """A manifest file can't be read or parsed; the message names the file."""


@dataclass(frozen=True, slots=True)
class Document:
    source: str
    obj: Mapping[str, Any]


STDIN = Path("-")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice (kubectl does too: the
    object it would apply is not the one the file seems to say)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # an unhashable key: the constructor says what is wrong with it
        if duplicate:
            mark = key_node.start_mark
            raise yaml.YAMLError(
                f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1}"
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path == STDIN:
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES)
        elif path.exists():
            yield path
        else:
            raise ManifestError(f"{path}: no such file or directory")


def _expand(obj: Any) -> Iterator[Mapping[str, Any]]:
    """A document, or the items of a `kind: List` (or `DeploymentList`, `PodList`, …)."""
    if not isinstance(obj, Mapping):
        return
    kind = obj.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list):
        for item in obj["items"]:
            yield from _expand(item)
    else:
        yield obj


def _text(path: Path) -> str:
    if path == STDIN:
        return sys.stdin.buffer.read().decode("utf-8")
    return path.read_text(encoding="utf-8")


def read_manifests(paths: Iterable[Path]) -> list[Document]:
    docs: list[Document] = []
    for path in _files(paths):
        name = "stdin" if path == STDIN else str(path)
        try:
            loaded = list(yaml.load_all(_text(path), Loader=_UniqueKeyLoader))
        except OSError as err:
            raise ManifestError(f"{name}: cannot read: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise ManifestError(f"{name}: not UTF-8 text ({err.reason})") from err
        except yaml.YAMLError as err:
            raise ManifestError(f"{name}: not valid YAML: {' '.join(str(err).split())}") from err
        for index, raw in enumerate(loaded):
            if raw is not None and not isinstance(raw, Mapping):
                raise ManifestError(
                    f"{name}#{index}: not a Kubernetes object (a {type(raw).__name__})"
                )
            for obj in _expand(raw):
                docs.append(Document(f"{name}#{index}", obj))
    return docs


def namespace_modes(docs: Iterable[Document]) -> dict[str, Mode]:
    """The `streamgate.io/mode` labels of the Namespace objects among `docs`."""
    modes: dict[str, Mode] = {}
    for doc in docs:
        if doc.obj.get("kind") != "Namespace" or doc.obj.get("apiVersion") != "v1":
            continue
        meta = doc.obj.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            continue
        labels = meta.get("labels")
        value = labels.get(MODE_LABEL) if isinstance(labels, Mapping) else None
        mode = mode_from_label(value if isinstance(value, str) else None)
        if mode is not None:
            modes[meta["name"]] = mode
    return modes


def _group(api_version: Any) -> str:
    if not isinstance(api_version, str) or "/" not in api_version:
        return ""
    return api_version.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Result:
    doc: Document
    kind: str
    namespace: str
    name: str
    decision: Decision | None
    error: str | None = None

    @property
    def denied(self) -> bool:
        return self.decision is not None and not self.decision.allowed


async def check(docs: Iterable[Document], admission: Admission, *, namespace: str) -> list[Result]:
    results = []
    for doc in docs:
        group, kind = _group(doc.obj.get("apiVersion")), str(doc.obj.get("kind", ""))
        if (group, kind) not in KINDS:
            continue
        meta = doc.obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        ns = str(meta.get("namespace") or namespace)
        name = str(meta.get("name") or meta.get("generateName") or "")
        req = AdmissionRequest(
            api_version="admission.k8s.io/v1",
            uid=doc.source,
            group=group,
            kind=kind,
            sub_resource="",
            operation="CREATE",
            namespace=ns,
            name=name,
            obj=doc.obj,
            old_obj=None,
            dry_run=True,
            user="streamgate-check",
        )
        try:
            decision, _ = await admission.decide(req)
        except WorkloadError as err:
            results.append(Result(doc, kind, ns, name, None, str(err)))
            continue
        results.append(Result(doc, kind, ns, name, decision))
    return results


def _outcome(result: Result) -> str:
    if result.error:
        return "error"
    assert result.decision is not None
    if result.decision.skipped:
        return "skipped"
    if not result.decision.allowed:
        return "denied"
    return "warned" if result.decision.warnings else "ok"


def to_json(results: list[Result]) -> str:
    out = []
    for r in results:
        d = r.decision
        out.append(
            {
                "source": r.doc.source,
                "kind": r.kind,
                "namespace": r.namespace,
                "name": r.name,
                "outcome": _outcome(r),
                "error": r.error,
                "mode": d.mode.value if d else None,
                "skipped": d.skipped if d else None,
                "streaming": d.annotations.get("streamgate.io/streaming") if d else None,
                "problems": [
                    {"rule": p.rule, "severity": p.severity.value, "message": p.message}
                    for p in (d.problems if d else ())
                ],
                "images": [
                    {
                        "container": rep.container.label,
                        "image": rep.container.image,
                        "verdict": rep.verdict.verdict.value,
                        "reason": rep.verdict.reason,
                        "digestPinned": bool(rep.ref and rep.ref.digest_pinned),
                    }
                    for rep in (d.reports if d else ())
                ],
            }
        )
    return json.dumps(out, indent=2)


def to_table(results: list[Result]) -> str:
    if not results:
        return (
            "no workloads found (streamgate judges Pods, Deployments, StatefulSets, "
            "DaemonSets, ReplicaSets, ReplicationControllers, Jobs and CronJobs)"
        )
    rows = [("OUTCOME", "KIND", "NAMESPACE/NAME", "STREAMING", "SOURCE")]
    lines: list[str] = []
    for r in results:
        d = r.decision
        streaming = d.annotations.get("streamgate.io/streaming", "-") if d else "-"
        rows.append((_outcome(r), r.kind, f"{r.namespace}/{r.name}", streaming, r.doc.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for r in results:
        problems = r.decision.problems if r.decision else ()
        shown = [p for p in problems if p.severity is not Severity.RECORD] or list(problems)
        if r.error or shown:
            lines.append("")
            lines.append(f"{r.kind} {r.namespace}/{r.name}:")
            if r.error:
                lines.append(f"  error: {r.error}")
            lines.extend(f"  {p.severity.value}: {p.message}" for p in shown)
    denied = sum(r.denied for r in results)
    lines.append("")
    lines.append(f"{len(results)} workloads, {denied} would be denied")
    return "\n".join(lines)
