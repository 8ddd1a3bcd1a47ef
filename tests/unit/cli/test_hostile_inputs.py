"""No command prints a traceback for any input: one clear line on stderr and a documented exit
code (app/cli/main.py: 2 for bad input), whatever files, kubeconfigs, pipes or arguments it is
given. Each case runs the real command line in-process; the closed pipe runs a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.main import EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
UNREACHABLE = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
"""

FILES = {
    "bad.yaml": "kind: [unclosed\n",
    "dupe.yaml": "apiVersion: v1\nkind: Pod\nkind: Deployment\nmetadata: {name: x}\n",
    "scalar.yaml": "just a string\n",
    "list.yaml": "- a\n- b\n",
    "empty.yaml": "",
    "badpolicy.yaml": "mode: sometimes\n",
    "policylist.yaml": "- mode\n",
    "unreachable.kubeconfig": UNREACHABLE,
    "notkubeconfig.yaml": "hello: world\n",
    "nodesnotlist.yaml": "- 1\n- 2\n",
    "notcheck.json": '{"workloads": []}',
    "checkbadimage.json": '[{"images": [{"image": 1, "verdict": "not-streamable"}]}]',
    "checkimagesnotlist.json": '[{"images": "x:1"}]',
    "deep.json": "[" * 100_000 + "]" * 100_000,
}
BINARY = bytes(range(256)) * 4


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.bin").write_bytes(BINARY)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    return tmp_path


# (arguments, extra environment, what the one line must say)
CASES: list[tuple[list[str], dict[str, str], str]] = [
    # check: manifests
    (["check", "-f", "{t}/missing.yaml"], {}, "no such file"),
    (["check", "-f", "{t}/bad.yaml"], {}, "not valid YAML"),
    (["check", "-f", "{t}/binary.bin"], {}, "not UTF-8"),
    (["check", "-f", "{t}/latin1.yaml"], {}, "not UTF-8"),
    (["check", "-f", "{t}/dupe.yaml"], {}, "duplicate key 'kind'"),
    (["check", "-f", "{t}/scalar.yaml"], {}, "not a Kubernetes object"),
    (["check", "-f", "{t}/list.yaml"], {}, "not a Kubernetes object"),
    # check: policy
    (["check", "-f", "{t}/empty.yaml", "--policy", "{t}/missing.yaml"], {}, "cannot read"),
    (["check", "-f", "{t}/empty.yaml", "--policy", "{t}/bad.yaml"], {}, "not valid YAML"),
    (["check", "-f", "{t}/empty.yaml", "--policy", "{t}/badpolicy.yaml"], {}, "invalid policy"),
    (["check", "-f", "{t}/empty.yaml", "--policy", "{t}/binary.bin"], {}, "not valid UTF-8"),
    (["check", "-f", "{t}/empty.yaml", "--policy", "{t}/policylist.yaml"], {}, "must be a mapping"),
    (["check", "-f", "{t}/empty.yaml", "--policy", "{t}/adir"], {}, "cannot read"),
    # check: nodes
    (["check", "-f", "{t}/empty.yaml", "--nodes", "{t}/missing.yaml"], {}, "missing.yaml"),
    (["check", "-f", "{t}/empty.yaml", "--nodes", "{t}/bad.yaml"], {}, "not valid YAML"),
    (["check", "-f", "{t}/empty.yaml", "--nodes", "{t}/binary.bin"], {}, "not UTF-8"),
    (["check", "-f", "{t}/empty.yaml", "--nodes", "{t}/adir"], {}, "adir"),
    # check: arguments
    (["check", "-f", "{t}/empty.yaml", "--mode", "sometimes"], {}, "invalid choice"),
    (["check", "-f", "{t}/empty.yaml", "-o", "pdf"], {}, "invalid choice"),
    (["check"], {}, "required"),
    # pools
    (["pools", "--kubeconfig", "{t}/missing.kubeconfig"], {}, "cannot load a kubeconfig"),
    (["pools", "--kubeconfig", "{t}/bad.yaml"], {}, "cannot load a kubeconfig"),
    (["pools", "--kubeconfig", "{t}/binary.bin"], {}, "cannot load a kubeconfig"),
    (["pools", "--kubeconfig", "{t}/notkubeconfig.yaml"], {}, "cannot load a kubeconfig"),
    (["pools"], {"KUBECONFIG": "{t}/missing.kubeconfig"}, "cannot load a kubeconfig"),
    (["pools"], {"KUBECONFIG": "{t}/empty.yaml"}, "cannot load a kubeconfig"),
    (
        ["pools", "--kubeconfig", "{t}/unreachable.kubeconfig", "--context", "nope"],
        {},
        "cannot load a kubeconfig",
    ),
    (
        ["pools", "--kubeconfig", "{t}/unreachable.kubeconfig", "--timeout", "1"],
        {},
        "no node list within 1.0s",
    ),
    (["pools", "--nodes", "{t}/missing.yaml"], {}, "missing.yaml"),
    (["pools", "--nodes", "{t}/bad.yaml"], {}, "not valid YAML"),
    (["pools", "--nodes", "{t}/binary.bin"], {}, "not UTF-8"),
    (["pools", "--nodes", "{t}/empty.yaml", "--policy", "{t}/badpolicy.yaml"], {}, "invalid"),
    # scan
    (["scan", "-q", "--kubeconfig", "{t}/missing.kubeconfig"], {}, "cannot load a kubeconfig"),
    (["scan", "-q", "--kubeconfig", "{t}/bad.yaml"], {}, "cannot load a kubeconfig"),
    (["scan", "-q"], {"KUBECONFIG": "{t}/binary.bin"}, "cannot load a kubeconfig"),
    (
        ["scan", "-q", "--kubeconfig", "{t}/unreachable.kubeconfig", "--context", "nope"],
        {},
        "cannot load a kubeconfig",
    ),
    (["scan", "-q", "--policy", "{t}/bad.yaml"], {}, "not valid YAML"),
    (["scan", "-o", "pdf"], {}, "invalid choice"),
    # explain
    (["explain", "UPPER/Case:1"], {}, "UPPER/Case:1"),
    (["explain", ""], {}, "empty"),
    (["explain", "x:1", "--policy", "{t}/missing.yaml"], {}, "cannot read"),
    (["explain", "x:1", "--kubeconfig", "{t}/missing.kubeconfig"], {}, "cannot load a kubeconfig"),
    # convert
    (["convert", "UPPER/Case:1"], {}, "UPPER/Case:1"),
    (["convert", ""], {}, "empty"),
    (["convert"], {}, "nothing to convert"),
    (["convert", "x:1", "-n", "shop"], {}, "--namespace only apply with --from-scan"),
    (["convert", "--from-check", "{t}/bad.yaml"], {}, "not JSON"),
    (["convert", "--from-check", "{t}/empty.yaml"], {}, "not JSON"),
    (["convert", "--from-check", "{t}/binary.bin"], {}, "not UTF-8"),
    (["convert", "--from-check", "{t}/latin1.yaml"], {}, "not UTF-8"),
    (["convert", "--from-check", "{t}/missing.json"], {}, "No such file"),
    (["convert", "--from-check", "{t}/adir"], {}, "Is a directory"),
    (["convert", "--from-check", "{t}/notcheck.json"], {}, "list of workloads"),
    (["convert", "--from-check", "{t}/checkbadimage.json"], {}, "lacks 'image'"),
    (["convert", "--from-check", "{t}/checkimagesnotlist.json"], {}, "must be lists"),
    (["convert", "--from-check", "{t}/deep.json"], {}, "not JSON"),
    (["convert", "--from-scan", "--kubeconfig", "{t}/missing.kubeconfig"], {}, "cannot load"),
    (
        ["convert", "--from-scan", "-q", "--kubeconfig", "{t}/unreachable.kubeconfig"],
        {},
        "cannot read the cluster",
    ),
    (["convert", "x:1", "--timeout", "0"], {}, "--timeout"),
    (["convert", "x:1", "--timeout", "soon"], {}, "invalid float"),
    (["convert", "x:1", "--policy", "{t}/missing.yaml"], {}, "cannot read"),
    # certs and serve
    (["certs", "{t}/afile/sub"], {}, "afile"),
    (["serve", "--policy", "{t}/badpolicy.yaml"], {}, "invalid policy"),
    (["serve", "--cert", "{t}/missing.crt", "--key", "{t}/missing.key"], {}, "missing"),
    (["nosuchcommand"], {}, "invalid choice"),
]


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_gets_one_line_and_exit_2(
    files: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[list[str], dict[str, str], str],
) -> None:
    argv, env, says = case
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(files))  # no ~/.kube/config of the machine's
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(t=files))
    try:
        code = main([a.format(t=files) for a in argv])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code if isinstance(exit_.code, int) else 2
    out = capsys.readouterr()
    assert code == EXIT_USAGE, out
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert "Traceback" not in out.err
    # one line; argparse's usage errors add their usage line before it
    assert len([ln for ln in lines if not ln.startswith(("usage:", " "))]) == 1, out.err
    assert says in lines[-1], out.err
    assert lines[-1].startswith("streamgate")


def test_check_reads_standard_input_and_fails_on_warn(monkeypatch, capsys) -> None:
    manifest = (EXAMPLES / "02-no-artifact-pod.yaml").read_text()
    monkeypatch.setattr("sys.stdin", _Stdin(manifest.encode()))
    policy = str(EXAMPLES / "policy.yaml")
    assert main(["check", "-f", "-", "--offline", "--policy", policy]) == 0
    monkeypatch.setattr("sys.stdin", _Stdin(manifest.encode()))
    assert main(["check", "-f", "-", "--offline", "--policy", policy, "--fail-on", "warn"]) == 1
    assert "stdin#0" in capsys.readouterr().out


def test_escape_sequences_in_a_manifest_never_reach_the_terminal(monkeypatch, capsys) -> None:
    """An image name with an escape sequence (clear screen, retitle the window): the text
    output writes it as an escape, in `check` and in `explain`."""
    image = "myacr.azurecr.io/app\x1b[2J\x1b]0;pwned\x07:v1"
    written = image.encode("unicode_escape").decode()  # YAML's double-quoted escapes
    manifest = (
        'apiVersion: v1\nkind: Pod\nmetadata: {name: "p\\e[31m"}\n'
        f'spec: {{containers: [{{name: app, image: "{written}"}}]}}\n'
    )
    monkeypatch.setattr("sys.stdin", _Stdin(manifest.encode()))
    main(["check", "-f", "-", "--offline"])
    out = capsys.readouterr().out
    assert "app\\x1b[2J\\x1b]0;pwned\\x07:v1" in out, out
    assert "\x1b" not in out and "\x07" not in out
    assert main(["explain", image]) == EXIT_USAGE  # not a reference: said, no network
    said = capsys.readouterr()
    text = said.out + said.err
    assert "is not an image reference" in text and "\x1b" not in text and "\x07" not in text


class _Stdin:
    def __init__(self, data: bytes) -> None:
        import io

        self.buffer = io.BytesIO(data)


def test_a_closed_output_pipe_is_one_line_not_a_traceback() -> None:
    many = "\n---\n".join(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\n"
        f"spec: {{containers: [{{name: c, image: 'myacr.azurecr.io/a{i}:1'}}]}}"
        for i in range(3000)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "check", "-f", "-", "--offline"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone, like `| head -0`
    proc.stdin.write(many.encode())
    proc.stdin.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert "Traceback" not in err, err
    assert code == EXIT_USAGE
    assert err.strip().splitlines()[-1] == "streamgate: output closed before it was all written"
