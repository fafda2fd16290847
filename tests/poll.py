"""Waiting for a condition instead of sleeping for a guess: a test that polls ends as soon as the condition
holds, and fails (with a message) only when it has not held for a generous while on a busy machine."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.02  # short next to any timeout, long enough not to busy-spin one of two cores


def wait_until(condition: Callable[[], T], timeout: float = 10, message: str = "") -> T:
    """Calls `condition` until it returns something true and returns that; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {message or _name(condition)}")
        time.sleep(INTERVAL)


async def wait_until_async(condition: Callable[[], T | Awaitable[T]], timeout: float = 10, message: str = "") -> T:
    """wait_until inside an event loop: the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {message or _name(condition)}")
        await asyncio.sleep(INTERVAL)


def _name(condition: Callable[..., object]) -> str:
    return getattr(condition, "__qualname__", repr(condition))


def delivered(connection: socket.socket) -> bool:
    """Whether the process at the other end of this local TCP connection has read every byte sent on it:
    nothing left in this side's send queue, nothing unread in the other side's receive queue (the kernel's
    table, /proc/net/tcp)."""
    here, there = connection.getsockname()[1], connection.getpeername()[1]
    queues = {}
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
        unsent, unread = (int(size, 16) for size in fields[4].split(":"))
        queues[local, remote] = (unsent, unread)
    return queues.get((here, there), (1, 0))[0] == 0 and queues.get((there, here), (0, 1))[1] == 0
