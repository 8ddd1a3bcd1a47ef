import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__
from app.cli.version import revision, version_line


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.test", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_revision_of_a_checkout_and_its_dirty_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMGATE_REVISION", raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "f.txt").write_text("one\n")
    _git(tmp_path, "add", "f.txt")
    _git(tmp_path, "commit", "-qm", "one")
    head = _git(tmp_path, "rev-parse", "--short=12", "HEAD")
    assert revision(tmp_path) == head
    (tmp_path / "f.txt").write_text("two\n")
    assert revision(tmp_path) == head + "+dirty"


def test_revision_outside_a_checkout_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMGATE_REVISION", raising=False)
    assert revision(tmp_path) == "unknown"


def test_the_image_s_build_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGATE_REVISION", "0123456789abcdef0123")
    assert version_line() == f"streamgate {__version__} (revision 0123456789ab)"


def test_streamgate_version_prints_one_line_and_exits_0() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app", "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    line = out.stdout.strip()
    assert line.startswith(f"streamgate {__version__} (revision ")
    assert "\n" not in line


def test_usable_as_a_kubectl_plugin() -> None:
    import os
    import shutil

    plugin = Path(sys.executable).with_name("kubectl-streamgate")
    assert plugin.is_file(), "pip install puts kubectl-streamgate beside streamgate"
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is one of the machine's tools (README)"
    env = {**os.environ, "PATH": f"{plugin.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(
        [kubectl, "streamgate", "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"streamgate {__version__} (revision ")
