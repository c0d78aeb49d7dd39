"""A Redis (or Redis Cluster) get that waits for a put returns as soon as the put is stored.

Why: a waiting get reads, subscribes, then reads again; if a put's publish could slip past
that subscription (sent before the server had it, or undone by an unsubscribe of an idle
channel), the get would sleep a whole ``RECHECK`` (2 s), a stall of the stream. Many gets
start a moment before their puts, so some land in any such gap; and addresses are read again
after a timeout, so channels are also subscribed again after they were swept.

The bound: on an idle loopback store a woken get returns in ~1 ms; ``RECHECK / 4`` (0.5 s)
leaves that 500× headroom for a loaded 2-core CI machine while a missed wake-up (a full
``RECHECK``) still fails it.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from keywire.store.backends.backend import FirstRead
from keywire.store.backends.rediscluster import RedisClusterStore
from keywire.store.backends.redisstore import RECHECK, RedisKeyValue, RedisStore

from .conftest import RedisProcess
from .redisclusterproc import RedisClusterProcesses

BOUND = RECHECK / 4


async def _pairs(
    writer: RedisKeyValue, reader: RedisKeyValue, reuse: bool, ahead: bool = False
) -> list[float]:
    """Put/get pairs, 16 at a time, each get started ~5 ms before its put; with ``reuse``,
    half of the addresses were waited on (and timed out) a moment before, so their channels
    are subscribed again around the subscriber's sweep of idle channels. ``ahead``: the gets
    are ``get_ahead`` (subscribe first, as a stream's reads do)."""
    waits: list[float] = []
    await writer.probe()

    async def one(delay: float) -> None:
        address = os.urandom(32)
        value = os.urandom(16384)
        if reuse and delay:
            assert await reader.get(address, 0.02) is None
            await asyncio.sleep(delay)
        get = reader.get_ahead if ahead else reader.get
        got = asyncio.ensure_future(get(address, 10))
        await asyncio.sleep(0.005)  # the get subscribes and reads around the put
        start = time.perf_counter()
        await writer.put(address, value)
        assert await got == value
        waits.append(time.perf_counter() - start)

    async with asyncio.timeout(90):
        for i in range(12):
            await asyncio.gather(*(one((i * 16 + j) % 7 * 0.15) for j in range(16)))
    return waits


def _check(waits: list[float]) -> None:
    slow = [w for w in waits if w > BOUND]
    print(f"{len(waits)} gets, slowest {max(waits) * 1000:.1f} ms after its put")
    assert not slow, f"{len(slow)} of {len(waits)} gets waited {max(slow):.2f} s after the put"


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("reuse", [False, True])
async def test_redis_get_never_sleeps_a_recheck(
    redis_server: RedisProcess, reuse: bool, ahead: bool
) -> None:
    writer, reader = RedisStore(redis_server.url), RedisStore(redis_server.url)
    try:
        waits = await _pairs(writer, reader, reuse, ahead)
    finally:
        await asyncio.gather(writer.close(), reader.close())
    _check(waits)


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("reuse", [False, True])
async def test_redis_cluster_get_never_sleeps_a_recheck(
    cluster: RedisClusterProcesses, reuse: bool, ahead: bool
) -> None:
    writer, reader = RedisClusterStore(cluster.url), RedisClusterStore(cluster.url)
    try:
        waits = await _pairs(writer, reader, reuse, ahead)
    finally:
        await asyncio.gather(writer.close(), reader.close())
    _check(waits)


async def _gets_served(store: RedisStore) -> int:
    stats = await store._client.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


@pytest.mark.parametrize("signed", [False, True])
async def test_a_woken_get_takes_the_value_from_the_publish(
    redis_server: RedisProcess, signed: bool
) -> None:
    """Two reads per waiting get (before and after subscribing), not a third after the
    wake-up: the put's publish carries the value (signed: the write-once script's)."""
    writer = RedisStore(redis_server.url, signed=signed, server_check="script")
    reader = RedisStore(redis_server.url, signed=signed, server_check="script")
    try:
        async with asyncio.timeout(20):
            address, value = os.urandom(32), os.urandom(4096)
            before = await _gets_served(writer)
            got = asyncio.ensure_future(reader.get(address, 10))
            while await _gets_served(writer) < before + 2:  # read, subscribed, read again
                await asyncio.sleep(0.01)
            await writer.put(address, value)
            assert await got == value
            assert await _gets_served(writer) == before + 2
    finally:
        await asyncio.gather(writer.close(), reader.close())


async def _served(store: RedisStore, command: str) -> int:
    stats = await store._client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_get_ahead_reads_once_and_subscribes_in_batches(redis_server: RedisProcess) -> None:
    """A stream's reads run ahead of the puts: ``get_ahead`` subscribes first and reads once
    (not read, subscribe, read again), and gets started together share one SUBSCRIBE (and
    the reads of those confirmed together one MGET)."""
    writer, reader = RedisStore(redis_server.url), RedisStore(redis_server.url)

    async def reads() -> int:
        return await _served(writer, "get") + await _served(writer, "mget")

    try:
        async with asyncio.timeout(30):
            await writer.probe()
            items = [(os.urandom(32), os.urandom(4096)) for _ in range(16)]
            reads0, subs0 = await reads(), await _served(writer, "subscribe")
            waiting = [asyncio.ensure_future(reader.get_ahead(a, 10)) for a, _ in items]
            while await reads() == reads0:  # subscribed, then read
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            for address, value in items:
                await writer.put(address, value)
            assert await asyncio.gather(*waiting) == [v for _, v in items]
            # one read per get at most (MGETs of those confirmed together), not two
            served = await reads() - reads0
            print(f"{len(items)} waiting gets: {served} GET/MGET")
            assert served <= len(items)
            assert await _served(writer, "subscribe") - subs0 == 1
    finally:
        await asyncio.gather(writer.close(), reader.close())


def test_first_read_follows_what_gets_find() -> None:
    """A client whose ahead-gets keep waiting subscribes first; one whose gets nearly all find
    their value at once (catching up on stored frames) reads first; a few waits turn it back."""
    guess = FirstRead()
    assert not guess.wanted
    for _ in range(3):
        guess.found(True)
    assert not guess.wanted  # a few lucky gets are not a pattern
    for _ in range(10):
        guess.found(True)
    assert guess.wanted
    guess.found(False)
    guess.found(False)
    assert not guess.wanted
