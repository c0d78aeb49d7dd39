"""The JSON lines a node peer prints on stdout, collected as they arrive (shs and quiche peers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any


class NodeEventLog:
    """Reads ``proc``'s stdout in the background; each JSON line with an ``event`` is kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.ensure_future(self._collect())

    async def _collect(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == kind]

    async def wait_events(
        self, kind: str, count: int = 1, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """The first ``count`` events of ``kind``; ``TimeoutError`` if they do not come."""
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < count:
                await asyncio.sleep(0.02)
        return self.of(kind)
