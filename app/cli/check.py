"""`streamgate check`: judge manifests offline, as the webhook would, for CI pipelines.

Reads multi-document YAML files (or every *.yaml/*.yml/*.json in a directory), evaluates each
judged workload with the same core, prints a table or JSON, and reports whether anything
would be denied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.core.evaluate import Decision, Severity
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


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES)
        elif path.exists():
            yield path
        else:
            raise ManifestError(f"{path}: no such file or directory")


def _expand(obj: Any) -> Iterator[Mapping[str, Any]]:
    """A document, or the items of a `kind: List`."""
    if not isinstance(obj, Mapping):
        return
    if obj.get("kind") == "List" and isinstance(obj.get("items"), list):
        for item in obj["items"]:
            yield from _expand(item)
    else:
        yield obj


def read_manifests(paths: Iterable[Path]) -> list[Document]:
    docs: list[Document] = []
    for path in _files(paths):
        try:
            loaded = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ManifestError(f"{path}: cannot parse: {err}") from err
        for index, raw in enumerate(loaded):
            for obj in _expand(raw):
                docs.append(Document(f"{path}#{index}", obj))
    return docs


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
