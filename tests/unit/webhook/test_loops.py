"""The event loop `streamgate serve` runs on."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from app.cli.main import main
from app.webhook.loops import EVENT_LOOPS, LoopUnavailable, loop_factory, run


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_run_uses_the_loop_named(loop):
    assert run(_loop_module(), loop) == loop


def test_uvloop_is_the_default_and_asyncio_the_other():
    assert EVENT_LOOPS == ("uvloop", "asyncio")
    assert loop_factory("uvloop") is uvloop.new_event_loop


def test_an_unknown_loop_is_named_with_the_choices():
    coro = _loop_module()
    with pytest.raises(ValueError, match=r"unknown event loop 'trio'.*uvloop, asyncio"):
        run(coro, "trio")  # type: ignore[arg-type]
    assert coro.cr_frame is None  # closed, not left to warn "never awaited"


def test_serve_without_uvloop_exits_with_the_way_out(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(LoopUnavailable, match="--loop asyncio"):
        loop_factory("uvloop")
    code = main(["serve", "--self-signed", str(tmp_path), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("streamgate serve: uvloop is not installed")
    assert "--loop asyncio" in err
