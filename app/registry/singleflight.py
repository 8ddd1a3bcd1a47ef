"""Share one run of some async work among all concurrent callers asking with the same key.

The work runs in a task of its own: a caller that stops waiting (its deadline passed, it was
cancelled) does not cancel the work, which finishes and stores its result wherever it stores
it (a cache), so the next caller finds it warm. References to running tasks are kept here, so
they are not garbage-collected half-way; `aclose()` cancels whatever is still running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


async def _call(work: Callable[[], Awaitable[V]]) -> V:
    return await work()


class SingleFlight(Generic[K, V]):
    """Concurrent `run(key, work)` calls with equal keys await one shared task."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}
        self._started: dict[K, float] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(_call(work))
            self._tasks[key] = task
            self._started[key] = time.monotonic()
            task.add_done_callback(partial(self._done, key))
        return await asyncio.shield(task)

    def age(self, key: K) -> float | None:
        """Seconds the work running for `key` has been running; None when none is."""
        started = self._started.get(key)
        return None if started is None else time.monotonic() - started

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
            self._started.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so a result nobody waited for is not reported as "never
            # retrieved"; the callers that did wait have seen it already.
            logger.debug("shared work for %r failed: %s", key, task.exception())

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._started.clear()
