"""A NATS get that waits for a put returns as soon as the put is stored, every time.

Why: a put's publish reaches core subscribers as JetStream stores it, so a get that
subscribes just after the publish passed (no wake-up) can still read the key before it is
stored; it used to sleep a whole ``RECHECK`` (2 s) then, a stall of the stream. Many gets are
started a moment before their puts, so some land in that gap.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from keywire.store.backends.nats import RECHECK, NatsStore

from .natsproc import NatsProcess


@pytest.mark.parametrize("ahead", [False, True])
async def test_no_get_sleeps_a_recheck_after_its_put(nats_server: NatsProcess, ahead: bool) -> None:
    writer = NatsStore(f"{nats_server.url}/wake", signed=False)
    reader = NatsStore(f"{nats_server.url}/wake", signed=False)
    await writer.probe()
    waits: list[float] = []

    async def one() -> None:
        address = os.urandom(32)
        value = os.urandom(16384)
        get = reader.get_ahead if ahead else reader.get
        got = asyncio.ensure_future(get(address, 10))
        await asyncio.sleep(0.005)  # the get subscribes and reads around the put
        start = time.perf_counter()
        await writer.put(address, value)
        assert await got == value
        waits.append(time.perf_counter() - start)

    try:
        async with asyncio.timeout(60):
            for _ in range(10):
                await asyncio.gather(*(one() for _ in range(16)))
    finally:
        await asyncio.gather(writer.close(), reader.close())
    slow = [w for w in waits if w > RECHECK / 4]
    assert not slow, f"{len(slow)} of {len(waits)} gets waited {max(slow):.2f} s after the put"
