"""`streamgate --version`: the release and the source revision it was built from.

The revision comes from `STREAMGATE_REVISION` (the container image sets it from its build
argument) or, in a git checkout (an editable install), from `git` itself; else "unknown".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from app import __version__

_GIT_TIMEOUT = 2.0  # seconds: --version must answer at once even on a slow disk


def _git(checkout: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", "-C", str(checkout), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None


def revision(checkout: Path | None = None) -> str:
    """Short commit id (`+dirty` with uncommitted changes), or "unknown"."""
    given = os.environ.get("STREAMGATE_REVISION", "").strip()
    if given:
        return given[:12]
    checkout = checkout or Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return "unknown"
    head = _git(checkout, "rev-parse", "--short=12", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return "unknown"
    status = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    dirty = status is not None and status.returncode == 0 and bool(status.stdout.strip())
    return head.stdout.strip() + ("+dirty" if dirty else "")


def version_line() -> str:
    return f"streamgate {__version__} (revision {revision()})"
