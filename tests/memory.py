"""Test doubles that are real code paths, not mocks: an in-memory verdict source (allowed by
the admission-core issue until a registry is involved) and fixed placements."""

from __future__ import annotations

import asyncio

from app.core.images import ImageRef
from app.core.verdicts import ImageVerdict, Verdict


class MemoryVerdicts:
    """Answers from a dict keyed by the image as written (streamable when absent)."""

    def __init__(self, answers=None, delay=0.0, fail=False, instant=False):
        self.instant = instant
        self.answers = answers or {}
        self.delay = delay
        self.fail = fail
        self.calls: list[str] = []

    def cached(self, ref: ImageRef) -> ImageVerdict | None:
        """Known answers at once when `instant`; else every look-up goes the async way."""
        if self.instant and ref.raw in self.answers:
            self.calls.append(ref.raw)
            return self.answers[ref.raw]
        return None

    async def verdict(self, ref: ImageRef) -> ImageVerdict:
        self.calls.append(ref.raw)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return self.answers.get(ref.raw, ImageVerdict(Verdict.STREAMABLE))
