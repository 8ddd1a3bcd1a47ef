"""Test doubles that are real code paths, not mocks: an in-memory verdict source (allowed by
the admission-core issue until a registry is involved) and fixed placements."""

from __future__ import annotations

import asyncio

from app.images import ImageRef
from app.verdicts import ImageVerdict, Verdict


class MemoryVerdicts:
    """Answers from a dict keyed by the image as written (streamable when absent)."""

    def __init__(self, answers=None, delay=0.0, fail=False):
        self.answers = answers or {}
        self.delay = delay
        self.fail = fail
        self.calls: list[str] = []

    async def verdict(self, ref: ImageRef) -> ImageVerdict:
        self.calls.append(ref.raw)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return self.answers.get(ref.raw, ImageVerdict(Verdict.STREAMABLE))
