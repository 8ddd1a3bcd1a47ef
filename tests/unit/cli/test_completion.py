import subprocess

import pytest

from app.cli.completion import SHELLS, script
from app.cli.main import parser


def _complete(words: list[str]) -> list[str]:
    """What real bash offers after sourcing the script, for the command line `words`."""
    program = (
        script(parser(), "bash")
        + f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        + "_streamgate; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout.split()


def test_bash_completes_commands_flags_and_choices():
    assert {"check", "scan", "pools", "explain", "serve", "completion"} <= set(
        _complete(["streamgate", ""])
    )
    assert "--fail-on" in _complete(["streamgate", "check", "--fa"])
    assert _complete(["streamgate", "check", "-o", "sa"]) == ["sarif"]
    assert _complete(["streamgate", "completion", "--h"]) == ["--help"]


@pytest.mark.parametrize("shell", SHELLS)
def test_every_shell_gets_a_script_naming_every_command(shell):
    text = script(parser(), shell)
    for command in ("check", "scan", "pools", "explain", "serve", "certs", "completion"):
        assert command in text
