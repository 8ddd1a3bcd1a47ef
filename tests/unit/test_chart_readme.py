"""chart/README.md is generated from values.yaml (hack/chart_readme.py) and kept current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack"))

from chart_readme import documented, render  # noqa: E402


def test_the_committed_chart_readme_is_current() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "chart_readme.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_nested_keys_defaults_and_pipes() -> None:
    text = (
        "# -- top\na: 1\nb:\n  # -- inner one\n  # continued\n  c: x|y\n  d: 2\n"
        "# a plain comment\ne: 3\n"
    )
    assert documented(text) == [("a", "top"), ("b.c", "inner one continued")]


def test_every_documented_key_exists_and_the_readme_lists_it() -> None:
    values = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    readme = render()
    keys = documented((ROOT / "chart" / "values.yaml").read_text())
    assert len(keys) > 50
    for key, _ in keys:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, key
            node = node[part]
        assert f"| `{key}` |" in readme
