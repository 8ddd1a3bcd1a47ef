"""The repository stands on its own: no file points at documents or paths outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A build machine's paths and the background notes the project started from.
OUTSIDE = re.compile(r"FACTS\.md|\.\./shared\b|/work/|/home/[a-z]|/root/|/Users/[A-Za-z]")
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()


def _tracked() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, text=True
    ).stdout
    return [f for f in out.split("\0") if f and f != THIS]


def test_no_file_refers_outside_the_repository() -> None:
    found = []
    files = _tracked()
    assert "docs/aks-facts.md" in files
    for name in files:
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (a plot)
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert found == [], "\n".join(found)


def test_the_facts_page_is_cited_by_section() -> None:
    facts = (ROOT / "docs" / "aks-facts.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", facts, re.M))
    cited = set()
    for name in _tracked():
        path = ROOT / name
        if path.suffix in (".py", ".md", ".sh", ".yaml") and path.is_file():
            cited |= set(re.findall(r"aks-facts\.md §(\d+)", path.read_text(encoding="utf-8")))
    assert cited, "nothing cites docs/aks-facts.md"
    assert cited <= sections, f"cited sections missing from the page: {cited - sections}"
