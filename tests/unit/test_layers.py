"""The import contracts `make lint` checks (pyproject.toml, [tool.importlinter]) hold for the
code as it is, and each one fails on a deliberate violation in a copy of the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "400", "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_for_the_code_as_it_is(tmp_path: Path) -> None:
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("core/evaluate.py", "import app.webhook.memo", "point one way"),
        ("core/images.py", "import httpx", "does no I/O"),
        ("registry/cache.py", "import app.webhook.admission", "point one way"),
        ("cluster/reflector.py", "import app.registry.errors", "point one way"),
        ("webhook/server.py", "import app.cli.check", "point one way"),
    ],
    ids=["core->webhook", "core->httpx", "registry->webhook", "cluster->registry", "->cli"],
)
def test_a_violation_breaks_its_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    root = _copy(tmp_path)
    target = root / "app" / module
    text = target.read_text()
    # After the module docstring and `from __future__`: a plain top-level import.
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    target.write_text(text.replace(anchor, anchor + line + "\n", 1))
    result = _lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout
    verdicts = [ln for ln in result.stdout.splitlines() if ln.endswith(("KEPT", "BROKEN"))]
    assert len(verdicts) == 2, result.stdout
    assert [ln for ln in verdicts if ln.endswith("BROKEN") and broken in ln], result.stdout
    assert line.rsplit(maxsplit=1)[-1] in result.stdout  # the report names the offending import
