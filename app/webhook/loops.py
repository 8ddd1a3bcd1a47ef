"""The event loop `streamgate serve` runs on: uvloop (libuv, the default) or the standard
library's asyncio loop, for platforms without uvloop's C extension."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

EventLoop = Literal["uvloop", "asyncio"]
EVENT_LOOPS: tuple[EventLoop, ...] = get_args(EventLoop)

T = TypeVar("T")


class LoopUnavailable(RuntimeError):
    """The chosen event loop's library is not installed."""


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new event loop of the kind named."""
    if loop == "asyncio":
        return asyncio.new_event_loop
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError as err:
            raise LoopUnavailable(
                f"uvloop is not installed ({err}); install it (pip install uvloop) "
                "or serve with --loop asyncio"
            ) from err
        return uvloop.new_event_loop
    raise ValueError(f"unknown event loop {loop!r}: one of {', '.join(EVENT_LOOPS)}")


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """`asyncio.run(main)` on a new loop of the kind named."""
    try:
        factory = loop_factory(loop)
    except Exception:
        main.close()  # never awaited: say nothing about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
