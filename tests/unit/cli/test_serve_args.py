"""`streamgate serve --http/--loop` reach the server's settings and pick its event loop."""

from __future__ import annotations

import asyncio

import pytest

from app.cli import main as cli


@pytest.mark.parametrize(
    ("argv", "http", "loop"),
    [
        ([], "httptools", "uvloop"),
        (["--http", "h11", "--loop", "asyncio"], "h11", "asyncio"),
        (["--http", "h11"], "h11", "uvloop"),
    ],
)
def test_serve_passes_the_stack_and_runs_on_its_loop(monkeypatch, tmp_path, argv, http, loop):
    seen = {}

    async def fake_run_webhook(settings):
        seen["settings"] = settings
        seen["loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]

    monkeypatch.setattr(cli, "run_webhook", fake_run_webhook)
    assert cli.main(["serve", "--self-signed", str(tmp_path), *argv]) == 0
    assert (seen["settings"].http, seen["settings"].loop) == (http, loop)
    assert seen["loop"] == loop


def test_an_unknown_stack_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--http", "h2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --http: invalid choice: 'h2'" in err
    assert "httptools" in err and "h11" in err  # the choices (quoting varies by Python)
