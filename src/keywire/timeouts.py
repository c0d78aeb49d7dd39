"""One helper: an ``asyncio.timeout`` whose error says what timed out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def with_timeout[T](awaitable: Awaitable[T], seconds: float | None, what: str) -> T:
    """Await ``awaitable`` for at most ``seconds``; ``TimeoutError("WHAT timed out after N s")``."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise TimeoutError(f"{what} timed out after {seconds:g} s") from None


__all__ = ["with_timeout"]
