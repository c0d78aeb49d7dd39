"""The Redis backend against a real redis-server started by the tests."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from keywire.store import LossyStore, RedisStore, Role, StoreParams, StoreStream
from keywire.store.backends.backend import ValueTooLarge

from .conftest import RedisProcess, random_bytes
from .test_stream_memory import MB8, SECRET, exchange, send_all

ADDR = bytes(range(32))
FAST = dict(rto_min=0.05, rto_initial=0.2)


async def test_put_get_ttl_and_long_poll(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url, ttl=30)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await store.get(ADDR, 0) is None
        waiting = asyncio.ensure_future(store.get(ADDR, 10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await store.put(ADDR, b"hello")
        assert await asyncio.wait_for(waiting, 5) == b"hello"
        ttl = await raw.pttl(b"kw:v:" + ADDR.hex().encode())
        assert 0 < ttl <= 30_000
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await store.get(bytes(32), 0.3) is None
        assert 0.25 < loop.time() - start < 3
    finally:
        await store.close()
        await raw.aclose()


async def test_waiting_gets_do_not_poll(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        before = (await raw.info("stats"))["total_commands_processed"]
        waiting = [asyncio.ensure_future(store.get(bytes([i]) * 32, 1.5)) for i in range(20)]
        results = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert results == [None] * 20
        after = (await raw.info("stats"))["total_commands_processed"]
        # a few GETs and one SUBSCRIBE per waiting get, plus connection setup; a 10 ms poll
        # would be 150 commands per get
        assert after - before < 20 * 8
    finally:
        await store.close()
        await raw.aclose()


async def test_size_limit_is_enforced_by_the_script(redis_server: RedisProcess) -> None:
    store = RedisStore(redis_server.url, max_value=100)
    try:
        with pytest.raises(ValueTooLarge):
            await store.put(ADDR, b"x" * 101)
        # the server-side check, for clients that skip the local one
        with pytest.raises(ResponseError, match="TOOLARGE 500"):
            await store._script(
                keys=[store._key(ADDR)], args=[b"y" * 500, 10_000, 100, store._channel(ADDR)]
            )
        assert await store.get(ADDR, 0) is None
    finally:
        await store.close()


async def test_8mb_each_way_over_redis_with_loss(redis_server: RedisProcess) -> None:
    a = LossyStore(
        RedisStore(redis_server.url), put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=31
    )
    b = LossyStore(
        RedisStore(redis_server.url), put_loss=0.3, duplicate=0.1, delay=(0.0, 0.004), seed=32
    )
    try:
        await exchange(a, b, StoreParams(window=16, value_size=65536, **FAST), MB8, 40)
        assert a.dropped > 20 and b.dropped > 20
    finally:
        await a.close()
        await b.close()


async def test_redis_restart_mid_stream_with_persistence(persistent_redis: RedisProcess) -> None:
    """Half the data is through, Redis stops while the rest is written, and comes back with its
    append-only file: the stream completes byte for byte."""
    store_a, store_b = RedisStore(persistent_redis.url), RedisStore(persistent_redis.url)
    params = StoreParams(window=8, **FAST)
    a = StoreStream.open(store_a, SECRET, Role.LISTENER, params=params)
    b = StoreStream.open(store_b, SECRET, Role.DIALER, params=params)
    data = random_bytes(2_000_000, 18)
    loop = asyncio.get_running_loop()
    try:
        receiving = asyncio.ensure_future(b.read_all())
        await a.write(data[:1_000_000])
        async with asyncio.timeout(20):
            while b.core.bytes_read < 900_000:
                await asyncio.sleep(0.01)
        await loop.run_in_executor(None, persistent_redis.stop)
        sending = asyncio.ensure_future(send_all(a, data[1_000_000:], chunk=50_000))
        await asyncio.sleep(0.7)
        assert not receiving.done()
        await loop.run_in_executor(None, persistent_redis.start)
        async with asyncio.timeout(30):
            await sending
            assert await receiving == data
        assert a.troubles and b.troubles  # the outage was seen and survived
    finally:
        await a.abort()
        await b.abort()
        await store_a.close()
        await store_b.close()
