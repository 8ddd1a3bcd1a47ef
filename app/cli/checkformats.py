"""`streamgate check -o yaml|sarif|junit`: the results in the formats CI systems read.

SARIF 2.1.0 is what GitHub code scanning uploads (one result per problem, located at the
manifest file; the rule ids are the policy's rule names); JUnit XML is what most CI systems
show as tests (one test case per workload, a failure per denial, warnings in system-out).
"""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET

import yaml

from app import __version__
from app.cli.check import Result, to_json
from app.core.evaluate import Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.DENY: "error", Severity.WARN: "warning", Severity.RECORD: "note"}


def to_yaml(results: list[Result]) -> str:
    return yaml.safe_dump(json.loads(to_json(results)), sort_keys=False, allow_unicode=True)


def _uri(source: str) -> str:
    return source.rsplit("#", 1)[0]


def to_sarif(results: list[Result]) -> str:
    rules: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for r in results:
        where = {
            "physicalLocation": {"artifactLocation": {"uri": _uri(r.doc.source)}},
            "logicalLocations": [{"name": f"{r.kind} {r.namespace}/{r.name}", "kind": "resource"}],
        }
        if r.error:
            rules.setdefault("manifestError", {"id": "manifestError"})
            out.append(
                {
                    "ruleId": "manifestError",
                    "level": "error",
                    "message": {"text": f"{r.kind} {r.namespace}/{r.name}: {r.error}"},
                    "locations": [where],
                }
            )
        for p in r.decision.problems if r.decision else ():
            rules.setdefault(p.rule, {"id": p.rule, "helpUri": "docs/policy.md"})
            out.append(
                {
                    "ruleId": p.rule,
                    "level": _LEVEL[p.severity],
                    "message": {"text": f"{r.kind} {r.namespace}/{r.name}: {p.message}"},
                    "locations": [where],
                }
            )
    doc = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "streamgate",
                        "version": __version__,
                        "informationUri": "https://learn.microsoft.com/azure/aks/artifact-streaming",
                        "rules": list(rules.values()),
                    }
                },
                "results": out,
            }
        ],
    }
    return json.dumps(doc, indent=2)


def to_junit(results: list[Result]) -> str:
    suite = ET.Element("testsuite", name="streamgate check", tests=str(len(results)))
    failures = errors = 0
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=r.kind, name=f"{r.namespace}/{r.name} ({r.doc.source})"
        )
        problems = r.decision.problems if r.decision else ()
        if r.error:
            errors += 1
            ET.SubElement(case, "error", message=r.error)
        denials = [p.message for p in problems if p.severity is Severity.DENY]
        if denials:
            failures += 1
            failure = ET.SubElement(case, "failure", message=denials[0])
            failure.text = "\n".join(denials)
        others = [
            f"{p.severity.value}: {p.message}" for p in problems if p.severity is not Severity.DENY
        ]
        if others:
            ET.SubElement(case, "system-out").text = "\n".join(others)
        if r.decision is not None and r.decision.skipped:
            ET.SubElement(case, "skipped", message=r.decision.skipped)
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
