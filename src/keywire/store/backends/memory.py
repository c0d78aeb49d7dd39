"""An in-process store, and a wrapper that makes any store lossy, for tests and benchmarks.

``MemoryStore`` is a dict whose gets wait for a put (no polling). ``LossyStore`` wraps any
backend and, from a seeded generator so every run is reproducible, silently drops puts, applies
them after a random latency (so later puts overtake earlier ones: reordering), and applies some
twice (duplication).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from .backend import StoreBackend, ValueTooLarge, check_address


class MemoryStore(StoreBackend):
    """A dict with blocking gets, a value-size limit and an optional per-entry TTL."""

    def __init__(
        self, max_value: int = 1 << 20, ttl: float | None = None, *, signed: bool = False
    ) -> None:
        self.max_value = max_value
        self.signed = signed  # streams sign their puts (nothing here checks them)
        self.ttl = ttl
        self.description = "memory"
        self._data: dict[bytes, tuple[bytes, float]] = {}
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self.puts = 0
        self.gets = 0

    def __len__(self) -> int:
        return len(self._data)

    def raw_put(self, address: bytes, value: bytes) -> None:
        """Store without checks (tests plant bad values with it)."""
        expires = time.monotonic() + self.ttl if self.ttl is not None else float("inf")
        self._data[address] = (value, expires)
        for waiter in self._waiters.pop(address, []):
            if not waiter.done():
                waiter.set_result(None)

    def _lookup(self, address: bytes) -> bytes | None:
        entry = self._data.get(address)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._data[address]
            return None
        return entry[0]

    async def put(self, address: bytes, value: bytes) -> None:
        check_address(address)
        if len(value) > self.max_value:
            raise ValueTooLarge(len(value), self.max_value)
        self.puts += 1
        self.raw_put(address, value)

    async def get(self, address: bytes, wait: float) -> bytes | None:
        check_address(address)
        self.gets += 1
        value = self._lookup(address)
        if value is not None or wait <= 0:
            return value
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(address, []).append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await waiter
        finally:
            waiters = self._waiters.get(address)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[address]
        return self._lookup(address)


class LossyStore(StoreBackend):
    """Loses, delays (reorders) and duplicates the puts of an inner store, reproducibly."""

    def __init__(
        self,
        inner: StoreBackend,
        *,
        put_loss: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        get_loss: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.inner = inner
        self.max_value = inner.max_value
        self.signed = inner.signed
        self.read_group = inner.read_group
        self.description = f"lossy {inner.description}"
        self.put_loss = put_loss
        self.get_loss = get_loss
        self.duplicate = duplicate
        self.delay = delay
        self._rng = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0
        self.duplicated = 0

    def _later(self, address: bytes, value: bytes, delay: float) -> None:
        async def apply() -> None:
            if delay > 0:
                await asyncio.sleep(delay)
            with contextlib.suppress(Exception):
                await self.inner.put(address, value)

        task = asyncio.get_running_loop().create_task(apply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def put(self, address: bytes, value: bytes) -> None:
        check_address(address)
        if len(value) > self.max_value:
            raise ValueTooLarge(len(value), self.max_value)
        if self._rng.random() < self.put_loss:
            self.dropped += 1
            return
        lo, hi = self.delay
        first = self._rng.uniform(lo, hi)
        if first > 0:
            self._later(address, value, first)
        else:
            await self.inner.put(address, value)
        if self._rng.random() < self.duplicate:
            self.duplicated += 1
            self._later(address, value, first + self._rng.uniform(lo, hi))

    async def get(self, address: bytes, wait: float) -> bytes | None:
        return self._lose(await self.inner.get(address, wait))

    async def get_ahead(self, address: bytes, wait: float) -> bytes | None:
        return self._lose(await self.inner.get_ahead(address, wait))

    def _lose(self, value: bytes | None) -> bytes | None:
        if value is not None and self._rng.random() < self.get_loss:
            return None
        return value

    async def settle(self) -> None:
        """Wait until every delayed put has been applied."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.inner.close()
