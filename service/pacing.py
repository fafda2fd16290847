"""Pacing for routes that only people and tools need now and then (the OpenAPI document): a client asking
for one in a loop gets slower answers, not a larger share of the worker's event loop."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


class Paced:
    """Lets one caller through at a time, each at least `gap_s` after the one before it left: whatever the
    callers do inside runs at most 1 / gap_s times a second, and a caller alone is let through at once."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self._lock = anyio.Lock()
        self._next = -math.inf

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._lock:
            await anyio.sleep(max(0.0, self._next - time.monotonic()))
            try:
                yield
            finally:
                self._next = time.monotonic() + self.gap_s
